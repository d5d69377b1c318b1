//! SIP: the wire format, SDP, the sans-IO user-agent server, and its tokio shell.
pub mod client_txn;
pub mod digest;
pub mod endpoint;
pub mod guard;
pub mod msg;
pub mod register;
pub mod sdes;
pub mod sdp;
pub mod shell;
pub mod timer;
pub mod transport;
