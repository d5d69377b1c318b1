//! `mohd drain`: asks a running box to drain, over its web API (`POST /api/drain` with an API
//! token), and optionally waits until it has exited.
//!
//! The API rather than a local signal: a fleet drains boxes from elsewhere (an upgrade script
//! walking 70 boxes), the token says who may, and the same request works from the admin's
//! laptop, the box itself or `curl`. On the box under systemd, `systemctl stop mohd` is the
//! local way (SIGTERM drains the same way). Plain HTTP only: for a box whose API is HTTPS, use
//! curl (`curl -X POST -H "Authorization: Bearer $TOKEN" -d '{}' https://BOX/api/drain`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::web::backend::{AvailabilityDto, DrainRequest};

/// Connect, write and read timeouts of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--wait` looks whether the box is still up.
const WAIT_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// The box's web API, e.g. `http://10.0.0.5:8080` (default: `[web] listen` of the
    /// config, on loopback when it listens on every address).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The config file whose `[web] listen` to use.
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
    /// An API token (`mohd token new NAME`); default `$MOHD_TOKEN` (better: not on the
    /// command line, which other users of the machine can read).
    #[arg(long)]
    pub token: Option<String>,
    /// Seconds the calls in progress may go on (default: the box's `[calls] drain_grace_s`);
    /// 0 hangs them up at once.
    #[arg(long, value_name = "SECONDS")]
    pub grace_s: Option<u64>,
    /// Stop a drain: take new calls again.
    #[arg(long, conflicts_with = "grace_s")]
    pub cancel: bool,
    /// Wait until the box has exited (its API no longer answers).
    #[arg(long, conflicts_with = "cancel")]
    pub wait: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{0}: not an http://HOST:PORT URL")]
    Url(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the box answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("not an answer from mohd: {0}")]
    Malformed(String),
}

/// Where `http://HOST:PORT[/]` points.
pub fn parse_url(url: &str) -> Result<String, DrainError> {
    let bad = || DrainError::Url(url.to_owned());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') {
        return Err(bad());
    }
    Ok(host_port.to_owned())
}

/// `[web] listen` as a client reaches it from this machine.
pub fn local_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}")
}

/// Sends the request; with `wait`, returns once the box no longer answers.
pub fn run(host_port: &str, args: &DrainArgs) -> Result<AvailabilityDto, DrainError> {
    let request = DrainRequest {
        cancel: args.cancel,
        grace_s: args.grace_s,
    };
    let body = serde_json::to_string(&request).map_err(|e| DrainError::Malformed(e.to_string()))?;
    let token = (args.token.clone())
        .or_else(|| std::env::var("MOHD_TOKEN").ok())
        .unwrap_or_default();
    let (status, text) = http(host_port, "POST", "/api/drain", &token, Some(&body))?;
    if status != 200 {
        return Err(DrainError::Refused { status, body: text });
    }
    let answer: AvailabilityDto =
        serde_json::from_str(&text).map_err(|e| DrainError::Malformed(e.to_string()))?;
    if args.wait {
        wait_until_gone(host_port);
    }
    Ok(answer)
}

/// Polls `/healthz` until the box stops answering, printing the calls left now and then.
fn wait_until_gone(host_port: &str) {
    let started = Instant::now();
    let mut last_print: Option<Instant> = None;
    while let Ok((_, text)) = http(host_port, "GET", "/healthz", "", None) {
        let calls = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["availability"]["calls"].as_u64());
        if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            if let Some(calls) = calls {
                eprintln!(
                    "mohd drain: {calls} calls still up after {} s",
                    started.elapsed().as_secs()
                );
            }
            last_print = Some(Instant::now());
        }
        std::thread::sleep(WAIT_POLL);
    }
}

/// One HTTP/1.1 request on its own connection: (status, body).
fn http(
    host_port: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, String), DrainError> {
    let io = |source| DrainError::Io {
        addr: host_port.to_owned(),
        source,
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| DrainError::Url(host_port.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|source| {
        DrainError::Connect {
            addr: host_port.to_owned(),
            source,
        }
    })?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(io)?;
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !token.is_empty() {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io)?;
    parse_response(&answer)
}

/// Status and body of a `Connection: close` response (no chunked encoding: axum sends a
/// Content-Length for JSON).
fn parse_response(answer: &[u8]) -> Result<(u16, String), DrainError> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| DrainError::Malformed("no end of headers".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| DrainError::Malformed(head.lines().next().unwrap_or("").to_owned()))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_responses() {
        assert_eq!(parse_url("http://10.0.0.5:8080/").unwrap(), "10.0.0.5:8080");
        assert!(parse_url("https://box:443").is_err());
        assert!(parse_url("http://box/api").is_err());
        assert_eq!(
            local_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 401 Unauthorized\r\nA: b\r\n\r\n{\"error\":1}").unwrap(),
            (401, "{\"error\":1}".to_owned())
        );
        assert!(parse_response(b"garbage").is_err());
    }
}
