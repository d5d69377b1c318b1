//! A minimal HTTP/1.1 client for the web tests (one request per connection), so the tests see
//! exactly what a browser or curl would get: status, headers, body, over a real socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {}",
                self.status,
                self.text()
            )
        })
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Who the request is from.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub bearer: Option<String>,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl Auth {
    pub fn none() -> Auth {
        Auth::default()
    }

    pub fn bearer(token: &str) -> Auth {
        Auth {
            bearer: Some(token.to_owned()),
            ..Auth::default()
        }
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: &Auth,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to the web listener");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = head(addr, method, path, auth, content_type, body, "close");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413, 401) before reading the whole body and close: not an error.
    let _ = s.write_all(body);
    read_response(&mut s)
}

/// A request's head, up to and including the empty line; `connection` is `close` or
/// `keep-alive`.
pub fn head(
    host: SocketAddr,
    method: &str,
    path: &str,
    auth: &Auth,
    content_type: Option<&str>,
    body: &[u8],
    connection: &str,
) -> String {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n");
    if let Some(t) = &auth.bearer {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(c) = &auth.cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(c) = &auth.csrf {
        head.push_str(&format!("X-CSRF-Token: {c}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head
}

pub fn get(addr: SocketAddr, path: &str, auth: &Auth) -> Response {
    request(addr, "GET", path, auth, None, b"")
}

pub fn send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: &Auth,
    body: &serde_json::Value,
) -> Response {
    request(
        addr,
        method,
        path,
        auth,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

pub fn read_response(s: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}
