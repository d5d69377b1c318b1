//! The file's shape, as serde sees it: one `Raw*` struct per table, every value `Spanned` so
//! the checks after it can point at where it was written. Everything optional gets its default
//! in the section's own module, so a config can be as short as one channel.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::LineoutEnabled;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) sip: Option<Spanned<RawSip>>,
    pub(super) rtp: Option<Spanned<RawRtp>>,
    pub(super) channels: Option<RawChannels>,
    pub(super) dialplan: Option<Spanned<RawDialplan>>,
    pub(super) calls: Option<Spanned<RawCalls>>,
    pub(super) access: Option<Spanned<RawAccess>>,
    #[serde(default)]
    pub(super) registration: Vec<Spanned<RawRegistration>>,
    pub(super) lineout: Option<Spanned<RawLineout>>,
    pub(super) state: Option<Spanned<RawState>>,
    pub(super) web: Option<Spanned<RawWeb>>,
    pub(super) library: Option<Spanned<RawLibrary>>,
}

/// `[channels.NAME]` tables by name.
pub(super) type RawChannels = Spanned<BTreeMap<Spanned<String>, Spanned<RawChannel>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLibrary {
    pub(super) follow: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
    pub(super) interval_s: Option<Spanned<i64>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) allow_http: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) metrics_public: Option<Spanned<bool>>,
    pub(super) max_upload_mb: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLineout {
    pub(super) enabled: Option<Spanned<BoolOrAuto>>,
    pub(super) device: Option<Spanned<String>>,
    pub(super) channel: Option<Spanned<String>>,
    pub(super) level_db: Option<Spanned<f64>>,
}

/// `true`, `false` or `"auto"`.
pub(super) struct BoolOrAuto(pub(super) LineoutEnabled);

impl<'de> Deserialize<'de> for BoolOrAuto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BoolOrAuto;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BoolOrAuto, E> {
                Ok(BoolOrAuto(if v {
                    LineoutEnabled::On
                } else {
                    LineoutEnabled::Off
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BoolOrAuto, E> {
                if v == "auto" {
                    Ok(BoolOrAuto(LineoutEnabled::Auto))
                } else {
                    Err(E::custom(format!(
                        "{v:?}: expected true, false or \"auto\" (on when a sound card exists)"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub(super) allow: Option<Spanned<OneOrMany>>,
    pub(super) action: Option<Spanned<String>>,
    pub(super) rate_per_source: Option<Spanned<i64>>,
    pub(super) burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCalls {
    pub(super) max_duration_s: Option<Spanned<i64>>,
    pub(super) rtp_timeout_s: Option<Spanned<i64>>,
    pub(super) unreachable_timeout_s: Option<Spanned<i64>>,
    pub(super) max_calls: Option<Spanned<i64>>,
    pub(super) min_session_expires_s: Option<Spanned<i64>>,
    pub(super) media_budget: Option<Spanned<f64>>,
    pub(super) min_idle_cpu: Option<Spanned<i64>>,
    pub(super) drain_grace_s: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSip {
    pub(super) listen: Option<Spanned<OneOrMany>>,
    pub(super) user_agent: Option<Spanned<String>>,
    pub(super) answer_delay_ms: Option<Spanned<i64>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_message_bytes: Option<Spanned<i64>>,
    pub(super) idle_timeout_s: Option<Spanned<i64>>,
    pub(super) auth: Option<Spanned<RawSipAuth>>,
    pub(super) drop_user_agents: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certificate: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) client_ca: Option<Spanned<String>>,
    pub(super) client_names: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtp {
    pub(super) address: Option<Spanned<String>>,
    pub(super) ports: Option<Spanned<String>>,
    pub(super) symmetric: Option<Spanned<bool>>,
    pub(super) realtime: Option<Spanned<bool>>,
    pub(super) media_threads: Option<Spanned<i64>>,
    pub(super) port_model: Option<Spanned<String>>,
    pub(super) codecs: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) prefer_own_order: Option<Spanned<bool>>,
    pub(super) opus_bitrate: Option<Spanned<i64>>,
    pub(super) srtp: Option<Spanned<String>>,
    pub(super) srtp_over_plain_transports: Option<Spanned<bool>>,
    pub(super) dscp: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub(super) music: Spanned<OneOrMany>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) loudness_lufs: Option<Spanned<f64>>,
    pub(super) shuffle: Option<Spanned<bool>>,
    pub(super) greeting: Option<Spanned<String>>,
    pub(super) switch: Option<Spanned<String>>,
    pub(super) switch_fade_ms: Option<Spanned<i64>>,
    pub(super) announcements: Option<Spanned<RawAnnouncements>>,
    pub(super) programmes: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawProgramme>>>>,
    /// `[channels.NAME.schedule]`, read by the `schedule` module.
    pub(super) schedule: Option<Spanned<super::schedule::RawSchedule>>,
    /// `[channels.NAME.multicast]`, read by the `multicast` module.
    pub(super) multicast: Option<Spanned<super::multicast::RawMulticast>>,
}

/// `[channels.NAME.programmes.PNAME]`: another playlist a schedule can choose.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProgramme {
    pub(super) music: Spanned<OneOrMany>,
    pub(super) shuffle: Option<Spanned<bool>>,
    pub(super) announcements: Option<Spanned<RawAnnouncements>>,
}

/// `[channels.NAME.announcements]` (or a programme's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnouncements {
    pub(super) files: Spanned<OneOrMany>,
    pub(super) every_seconds: Option<Spanned<i64>>,
    pub(super) every_tracks: Option<Spanned<i64>>,
    pub(super) loudness_lufs: Option<Spanned<f64>>,
    pub(super) fade_out_ms: Option<Spanned<i64>>,
    pub(super) fade_in_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDialplan {
    pub(super) file: Option<Spanned<String>>,
    pub(super) default: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
}

/// A separate dialplan file: the same keys as `[dialplan]`, at the top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDialplanFile {
    pub(super) default: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) user: Option<Spanned<String>>,
    pub(super) to_user: Option<Spanned<String>>,
    pub(super) from_user: Option<Spanned<String>>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) channel: Spanned<String>,
}

/// `key = "x"` or `key = ["a", "b"]` (music, listen). Hand-written because
/// `#[serde(untagged)]` would replace both types' errors with "data did not match any variant".
pub(super) enum OneOrMany {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    /// Either form as a list, a lone string spanning the whole value.
    pub(super) fn into_items(list: Spanned<OneOrMany>) -> Vec<Spanned<String>> {
        let span = list.span();
        match list.into_inner() {
            OneOrMany::One(s) => vec![Spanned::new(span, s)],
            OneOrMany::List(items) => items,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistration {
    pub(super) registrar: Spanned<String>,
    pub(super) user: Spanned<String>,
    pub(super) auth_user: Option<Spanned<String>>,
    pub(super) password: Spanned<String>,
    pub(super) domain: Option<Spanned<String>>,
    pub(super) realm: Option<Spanned<String>>,
    pub(super) expires: Option<Spanned<i64>>,
    pub(super) contact_user: Option<Spanned<String>>,
    pub(super) transport: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSipAuth {
    pub(super) realm: Spanned<String>,
    pub(super) users: Spanned<RawUsers>,
    pub(super) invite: Option<Spanned<bool>>,
    pub(super) max_failures: Option<Spanned<i64>>,
    pub(super) window_s: Option<Spanned<i64>>,
    pub(super) ban_s: Option<Spanned<i64>>,
    pub(super) max_ban_s: Option<Spanned<i64>>,
    pub(super) on_ban: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) password: Spanned<String>,
}

/// `users = { name = "password" }` or `users = [{ name = "…", password = "…" }]`. Hand-written
/// for the same reason as `OneOrMany`.
pub(super) enum RawUsers {
    Table(Vec<(Spanned<String>, Spanned<String>)>),
    List(Vec<Spanned<RawUser>>),
}

impl<'de> Deserialize<'de> for RawUsers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUsers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of name = \"password\", or a list of { name, password }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawUsers, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(RawUsers::Table(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawUsers, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(RawUsers::List(out))
            }
        }
        d.deserialize_any(V)
    }
}
