//! RTP media: packets, receiver statistics, the sans-IO fan-out, the media thread, the
//! router from SIP call events to ports and the media thread, and multicast streams.

pub mod admission;
pub mod balance;
pub mod fanout;
pub mod io;
pub mod multicast;
pub mod packet;
pub mod qos;
pub mod router;
pub mod shell;
pub mod srtp;
pub mod stats;
