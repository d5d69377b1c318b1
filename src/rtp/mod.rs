//! RTP media: packets, receiver statistics, the sans-IO fan-out and the media thread.

pub mod fanout;
pub mod packet;
pub mod shell;
pub mod stats;
