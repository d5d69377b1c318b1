//! Stream framing for SIP over TCP and TLS (RFC 3261 §18.3), sans-IO: bytes from a connection
//! in, whole SIP messages (and RFC 5626 keep-alive pings) out.
//!
//! Owns the rules that a datagram gets for free and a byte stream does not: where one message
//! ends and the next begins (the blank line, then exactly Content-Length body bytes), CRLF
//! keep-alives between messages, and the size caps that keep one connection from holding
//! unbounded memory. Any [`FrameError`] means the stream cannot be resynchronised: the caller
//! closes the connection (after sending [`bad_request_for`]'s 400 when there is one).
//!
//! Hand-written: the Rust SIP crates that frame streams do it inside their tokio transports
//! (see `sip::msg` for why we parse ourselves), and this is a hundred lines of byte scanning.

use super::msg::{self, Message};

/// The answer to a keep-alive ping (RFC 5626 §3.5.1: a CRLF CRLF ping gets a single CRLF).
pub const PONG: &[u8] = b"\r\n";

/// One unit out of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole SIP message: header section, blank line, exactly Content-Length body bytes.
    Message(Vec<u8>),
    /// A CRLF CRLF keep-alive (RFC 5626 §3.5.1); answer with [`PONG`].
    Ping,
}

/// Why a stream cannot go on. The connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No blank line within the size limit: a header section this long is an attack or junk.
    #[error("no end of the header section within {max} bytes")]
    HeadersTooLarge { max: usize },
    /// The header section plus the announced body exceed the limit.
    #[error("a message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge { size: usize, max: usize },
    /// Stream transports must carry Content-Length (RFC 3261 §18.3, §20.14): without it the
    /// end of the body cannot be known. `head` is the header section, for the 400.
    #[error("no Content-Length (required on stream transports)")]
    MissingContentLength { head: Vec<u8> },
    /// A Content-Length that is not a number, or two that disagree.
    #[error("malformed Content-Length")]
    BadContentLength { head: Vec<u8> },
}

impl FrameError {
    /// The header section of the offending message, when it was readable enough to answer.
    pub fn head(&self) -> Option<&[u8]> {
        match self {
            FrameError::MissingContentLength { head } | FrameError::BadContentLength { head } => {
                Some(head)
            }
            _ => None,
        }
    }
}

/// Splits one connection's byte stream into SIP messages.
///
/// Feed bytes with [`Framer::push`], then call [`Framer::next_frame`] until it returns
/// `Ok(None)` (more bytes needed). After an error the framer stays failed.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_message: usize,
    /// How far the search for the blank line has got, so a header section arriving a byte at
    /// a time is scanned once, not once per byte.
    scanned: usize,
    failed: Option<FrameError>,
}

impl Framer {
    /// `max_message`: the largest message (headers and body) accepted on this connection.
    pub fn new(max_message: usize) -> Self {
        Framer {
            buf: Vec::new(),
            max_message,
            scanned: 0,
            failed: None,
        }
    }

    /// Bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes held that are not yet a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.next_inner() {
            Err(e) => {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        // Line ends between messages: a CRLF CRLF is a ping; a lone CRLF (a pong, or the stray
        // line end RFC 3261 §7.5 says to ignore) is dropped. A CR or CRLF at the very end may
        // be the first half of a ping: wait.
        loop {
            match self.buf.as_slice() {
                [b'\r', b'\n', b'\r', b'\n', ..] => {
                    self.consume(4);
                    return Ok(Some(Frame::Ping));
                }
                [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(None),
                [b'\r', b'\n', ..] => self.consume(2),
                [b'\n', ..] => self.consume(1),
                _ => break,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let Some(head_len) = self.find_head_end() else {
            if self.buf.len() > self.max_message {
                return Err(FrameError::HeadersTooLarge {
                    max: self.max_message,
                });
            }
            return Ok(None);
        };
        let head = &self.buf[..head_len];
        let body_len = match content_length(head) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Err(FrameError::MissingContentLength {
                    head: head.to_vec(),
                });
            }
            Err(()) => {
                return Err(FrameError::BadContentLength {
                    head: head.to_vec(),
                });
            }
        };
        let size = head_len.saturating_add(body_len);
        if size > self.max_message {
            return Err(FrameError::MessageTooLarge {
                size,
                max: self.max_message,
            });
        }
        if self.buf.len() < size {
            return Ok(None);
        }
        let message = self.buf[..size].to_vec();
        self.consume(size);
        Ok(Some(Frame::Message(message)))
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        self.scanned = 0;
    }

    /// The length of the header section including its blank line (CRLF CRLF, or LF LF, which
    /// the parser also accepts), once it has arrived.
    fn find_head_end(&mut self) -> Option<usize> {
        let buf = &self.buf;
        let mut i = self.scanned;
        while i < buf.len() {
            if buf[i] == b'\n' {
                match (buf.get(i + 1), buf.get(i + 2)) {
                    (Some(b'\n'), _) => return Some(i + 2),
                    (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                    // The blank line may be cut off by the read: look here again next time.
                    (None, _) | (Some(b'\r'), None) => break,
                    _ => {}
                }
            }
            i += 1;
        }
        self.scanned = i;
        None
    }
}

/// Content-Length (or its compact form `l`) from a header section: `Ok(None)` when absent,
/// `Err` when malformed or given twice with different values.
fn content_length(head: &[u8]) -> Result<Option<usize>, ()> {
    let mut found: Option<usize> = None;
    // The first line is the start line; folded continuation lines start with white space.
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n: usize = std::str::from_utf8(value)
            .map_err(|_| ())?
            .parse()
            .map_err(|_| ())?;
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        found = Some(n);
    }
    Ok(found)
}

/// The 400 for a request whose framing was broken (no or bad Content-Length), when its header
/// section holds what a response needs; `None` for responses, ACKs and junk. Sent just before
/// the connection closes, so the peer learns why.
pub fn bad_request_for(error: &FrameError) -> Option<Vec<u8>> {
    let head = error.head()?;
    let req = match msg::parse(head) {
        Ok(Message::Request(req)) => req,
        Err(e) => *e.request?,
        Ok(Message::Response(_)) => return None,
    };
    if req.method == msg::Method::Ack {
        return None;
    }
    let mut headers = msg::Headers::new();
    for via in req.headers.list("Via") {
        headers.push("Via", via.to_string());
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        headers.push(name, req.headers.get(name)?.to_string());
    }
    if let Some(to) = req.headers.get("To")
        && msg::NameAddr::parse(to).is_some_and(|t| t.tag().is_none())
    {
        // Every final response carries a To tag (§8.2.6.2); no dialog will ever use this one.
        headers.set_in_place("To", format!("{to};tag={:08x}", fnv1a(head)));
    }
    let reason = match error {
        FrameError::MissingContentLength { .. } => "Bad Request (no Content-Length)",
        _ => "Bad Request (malformed Content-Length)",
    };
    Some(
        msg::Response {
            code: 400,
            reason: reason.to_string(),
            headers,
            body: Vec::new(),
        }
        .to_bytes(),
    )
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:moh@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:moh@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n";

    fn with_body(body: &str) -> Vec<u8> {
        format!("{OPTIONS}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    fn frames(f: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = f.next_frame().unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn a_message_read_a_byte_at_a_time_comes_out_whole_once() {
        // The body holds a blank line of its own: only Content-Length says where it ends.
        let msg = with_body("v=0\r\n\r\nbinary\0tail");
        let mut f = Framer::new(65_535);
        let mut got = Vec::new();
        for b in &msg {
            f.push(std::slice::from_ref(b));
            got.extend(frames(&mut f));
        }
        assert_eq!(got, vec![Frame::Message(msg.clone())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn pipelined_messages_in_one_read_come_out_in_order() {
        let a = with_body("");
        let b = with_body("hello");
        let c = with_body("third");
        let mut stream = [a.clone(), b.clone(), c.clone()].concat();
        // The third is cut in the middle of its body.
        let tail = stream.split_off(stream.len() - 2);
        let mut f = Framer::new(65_535);
        f.push(&stream);
        assert_eq!(frames(&mut f), vec![Frame::Message(a), Frame::Message(b)]);
        f.push(&tail);
        assert_eq!(frames(&mut f), vec![Frame::Message(c)]);
    }

    #[test]
    fn double_crlf_is_a_ping_and_single_crlf_is_ignored() {
        let mut f = Framer::new(65_535);
        f.push(b"\r\n\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Ping]);
        // A ping split across reads is still one ping, not two stray line ends.
        f.push(b"\r\n");
        assert_eq!(frames(&mut f), vec![]);
        f.push(b"\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Ping]);
        // A lone CRLF (a pong) before a message is dropped; the message is intact.
        let msg = with_body("x");
        f.push(b"\r\n");
        f.push(&msg);
        f.push(b"\r\n\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Message(msg), Frame::Ping]);
    }

    #[test]
    fn compact_content_length_and_lf_only_line_ends_frame() {
        let msg =
            b"OPTIONS sip:moh@h SIP/2.0\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\nl :  3\n\nabcOPTIONS"
                .to_vec();
        let mut f = Framer::new(65_535);
        f.push(&msg);
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Message(msg[..msg.len() - 7].to_vec()))
        );
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.buffered(), 7);
    }

    #[test]
    fn missing_content_length_fails_with_a_400_for_the_request() {
        let mut f = Framer::new(65_535);
        f.push(format!("{OPTIONS}\r\nbody").as_bytes());
        let e = f.next_frame().unwrap_err();
        assert!(matches!(e, FrameError::MissingContentLength { .. }), "{e}");
        // The framer stays failed: the connection must close.
        f.push(&with_body(""));
        assert_eq!(f.next_frame().unwrap_err(), e);
        let resp = bad_request_for(&e).unwrap();
        let Ok(Message::Response(r)) = msg::parse(&resp) else {
            panic!("not a response");
        };
        assert_eq!(r.code, 400);
        assert_eq!(r.call_id(), Some("c1"));
        assert_eq!(r.cseq(), Some((1, msg::Method::Options)));
        assert!(r.top_via().unwrap().branch() == Some("z9hG4bK1"));
        assert!(r.to().unwrap().tag().is_some());
    }

    #[test]
    fn bad_or_conflicting_content_length_fails() {
        for extra in [
            "Content-Length: 12x\r\n",
            "Content-Length:\r\n",
            "Content-Length: 1\r\nl: 2\r\n",
            "Content-Length: 99999999999999999999999\r\n",
        ] {
            let mut f = Framer::new(65_535);
            f.push(format!("{OPTIONS}{extra}\r\n").as_bytes());
            let e = f.next_frame().unwrap_err();
            assert!(matches!(e, FrameError::BadContentLength { .. }), "{extra}");
            assert!(bad_request_for(&e).is_some());
        }
        // Twice with the same value is redundant, not wrong.
        let mut f = Framer::new(65_535);
        f.push(format!("{OPTIONS}Content-Length: 0\r\nContent-Length: 0\r\n\r\n").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn an_announced_body_over_the_limit_fails_before_it_arrives() {
        let mut f = Framer::new(1000);
        f.push(format!("{OPTIONS}Content-Length: 900\r\n\r\n").as_bytes());
        let e = f.next_frame().unwrap_err();
        assert!(
            matches!(e, FrameError::MessageTooLarge { max: 1000, size } if size > 1000),
            "{e}"
        );
        assert_eq!(bad_request_for(&e), None);
        // Exactly at the limit is fine.
        let head = format!("{OPTIONS}Content-Length: 0\r\n\r\n");
        let mut f = Framer::new(head.len());
        f.push(head.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn an_endless_header_section_fails_at_the_limit() {
        let mut f = Framer::new(1000);
        f.push(OPTIONS.as_bytes());
        assert_eq!(f.next_frame().unwrap(), None);
        for _ in 0..100 {
            f.push(b"X-Junk: 0123456789\r\n");
            if f.next_frame().is_err() {
                break;
            }
        }
        assert_eq!(
            f.next_frame().unwrap_err(),
            FrameError::HeadersTooLarge { max: 1000 }
        );
        // Memory is released, and nothing more is buffered.
        f.push(&[b'x'; 100]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn responses_and_acks_get_no_400() {
        let e = FrameError::MissingContentLength {
            head: b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n".to_vec(),
        };
        assert_eq!(bad_request_for(&e), None);
        let ack = OPTIONS.replace("OPTIONS", "ACK") + "\r\n";
        let e = FrameError::MissingContentLength {
            head: ack.into_bytes(),
        };
        assert_eq!(bad_request_for(&e), None);
        let e = FrameError::MissingContentLength {
            head: b"garbage\r\n\r\n".to_vec(),
        };
        assert_eq!(bad_request_for(&e), None);
    }
}
