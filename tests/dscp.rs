//! DSCP on a call's media, as the network sees it: RTP from mohd arrives marked Expedited
//! Forwarding (TOS 0xB8) unless `[rtp] dscp` says otherwise (0: best effort). Multicast
//! streams are checked the same way in tests/multicast.rs.

mod common;

use std::time::Duration;

use common::tos::{receive, report_tos};
use common::*;
use mohd::config::Config;

/// The TOS byte of RTP a call to a server with `[rtp] dscp = dscp` receives.
fn call_tos(dscp: Option<u8>) -> u8 {
    let mut config = Config::embedded_default();
    config.apply_overrides(Some("127.0.0.1:0".parse().unwrap()), None);
    config.web.listen = None;
    if let Some(d) = dscp {
        config.rtp.dscp = d;
    }
    let server = Server::with_config(config);
    let call = RawCall::start(server.sip, "");
    let rtp = call.rtp.as_ref().expect("the call's RTP socket");
    rtp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    report_tos(rtp);
    let mut buf = [0u8; 2048];
    // Packets queued before IP_RECVTOS was set carry no TOS report.
    for _ in 0..100 {
        let (_, tos) = receive(rtp, &mut buf).expect("RTP from mohd");
        if let Some(tos) = tos {
            return tos;
        }
    }
    panic!("no TOS reported on 100 RTP packets");
}

#[test]
fn rtp_is_marked_expedited_forwarding_by_default() {
    assert_eq!(call_tos(None), 0xB8, "DSCP 46 (EF) << 2");
}

#[test]
fn the_configured_dscp_is_used_and_zero_is_best_effort() {
    assert_eq!(call_tos(Some(34)), 34 << 2, "AF41");
    assert_eq!(call_tos(Some(0)), 0);
}
