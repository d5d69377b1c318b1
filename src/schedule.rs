//! Schedules **(pure)**: which programme a channel plays at a given wall-clock instant, by
//! weekly ranges and dated exceptions in an IANA time zone (jiff), and when that next changes.
//!
//! Skeleton landed by the lead so every part can name the type; the schedule helper owns
//! this module (fields may change; keep `Schedule` serde-serialisable, it is persisted).

use serde::{Deserialize, Serialize};

/// A channel's schedule: dated exceptions win over weekly ranges, weekly ranges over the
/// default programme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// IANA time zone name, e.g. "Europe/London".
    pub timezone: String,
    /// The programme played when no range applies.
    pub default: String,
}
