//! The tokio shell around the sans-IO [`Endpoint`]: owns the SIP UDP sockets and the real clock.
//!
//! One task owns the endpoint. Each socket has a reader task that forwards datagrams to it; the
//! owner feeds them in, drains `poll_output` (sending datagrams, handing events to the
//! application callback) and sleeps until `poll_timeout`.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant as TokioInstant;

use super::endpoint::{CallId, EndReason, Endpoint, Event, Output};

/// A bound SIP socket and the address it was asked to listen on.
pub struct SipSocket {
    pub bound: SocketAddr,
    pub socket: Arc<UdpSocket>,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<SipSocket> {
    let socket = UdpSocket::bind(addr).await?;
    let bound = socket.local_addr()?;
    Ok(SipSocket {
        bound,
        socket: Arc::new(socket),
    })
}

/// The local IP this host uses to reach `peer`: the address an INVITE from `peer` most likely
/// arrived on, when the socket is bound to the wildcard address. A routing lookup, no traffic.
pub fn local_ip_towards(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = StdUdpSocket::bind(any).ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Runs until `shutdown` turns true, then calls `on_shutdown` (to hang up calls) and drains
/// what that produced for a short grace period.
pub async fn run<F, S>(
    mut endpoint: Endpoint,
    sockets: Vec<SipSocket>,
    mut on_event: F,
    mut on_shutdown: S,
    mut shutdown: watch::Receiver<bool>,
    mut hangups: mpsc::UnboundedReceiver<(CallId, EndReason)>,
) where
    F: FnMut(std::time::Instant, Event, &mut Endpoint),
    S: FnMut(std::time::Instant, &mut Endpoint),
{
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, usize, Vec<u8>)>(1024);
    for (index, s) in sockets.iter().enumerate() {
        let socket = s.socket.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if tx.send((from, index, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    // ICMP errors surface here on some systems; they are not fatal.
                    Err(e) => tracing::debug!(error = %e, "SIP socket receive error"),
                }
            }
        });
    }
    drop(tx);

    let mut shutting_down = false;
    let mut grace_until: Option<std::time::Instant> = None;
    loop {
        drain(&mut endpoint, &sockets, &mut on_event).await;
        let next = endpoint.poll_timeout();
        let sleep_until = match (next, grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match sleep_until {
                Some(at) => tokio::time::sleep_until(TokioInstant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => {
                let Some((from, index, data)) = msg else { break };
                let Some(s) = sockets.get(index) else { continue };
                let local = resolve_local(s.bound, from);
                endpoint.handle_receive(std::time::Instant::now(), from, local, &data);
            }
            Some((call, reason)) = hangups.recv() => {
                endpoint.hangup_because(std::time::Instant::now(), call, reason);
            }
            _ = sleep => {
                let now = std::time::Instant::now();
                if grace_until.is_some_and(|g| g <= now) {
                    break;
                }
                endpoint.handle_timeout(now);
            }
            changed = shutdown.changed(), if !shutting_down => {
                if changed.is_err() || *shutdown.borrow() {
                    shutting_down = true;
                    let now = std::time::Instant::now();
                    on_shutdown(now, &mut endpoint);
                    // Long enough for the BYEs to go out and a retransmission or two.
                    grace_until = Some(now + std::time::Duration::from_millis(600));
                }
            }
        }
    }
    drain(&mut endpoint, &sockets, &mut on_event).await;
}

/// The concrete local address an INVITE arrived on, for Contact and SDP.
fn resolve_local(bound: SocketAddr, from: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        let ip = local_ip_towards(from).unwrap_or(bound.ip());
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    }
}

async fn drain<F>(endpoint: &mut Endpoint, sockets: &[SipSocket], on_event: &mut F)
where
    F: FnMut(std::time::Instant, Event, &mut Endpoint),
{
    while let Some(out) = endpoint.poll_output() {
        match out {
            Output::Transmit(t) => {
                let socket = sockets
                    .iter()
                    .find(|s| s.bound == t.local)
                    .or_else(|| {
                        sockets.iter().find(|s| {
                            s.bound.port() == t.local.port()
                                && s.bound.ip().is_unspecified()
                                && s.bound.is_ipv4() == t.to.is_ipv4()
                        })
                    })
                    .or_else(|| sockets.first());
                if let Some(s) = socket
                    && let Err(e) = s.socket.send_to(&t.data, t.to).await
                {
                    tracing::debug!(to = %t.to, error = %e, "SIP send failed");
                }
            }
            Output::Event(ev) => on_event(std::time::Instant::now(), ev, endpoint),
        }
    }
}
