//! STUB (helper D replaces this file).
use std::net::IpAddr;
#[derive(Debug, Clone, Default)]
pub struct Dialplan { pub default: Option<String> }
pub struct RouteRequest<'a> { pub ruri_user: Option<&'a str>, pub to_user: Option<&'a str>, pub from_user: Option<&'a str>, pub source: IpAddr }
impl Dialplan { pub fn route(&self, _req: &RouteRequest) -> Option<&str> { self.default.as_deref() } }
