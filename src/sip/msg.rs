//! SIP message parsing and printing (RFC 3261 §7, §20, §25), sans-IO.
//!
//! Owns the wire format: a datagram in, a [`Message`] out (or a [`ParseError`] that still carries
//! what was needed to answer 400/505); a [`Response`] out as bytes.
//!
//! Hand-written on purpose. The project card names rsip, whose last release is from 2022 and whose
//! licence metadata is unknown; its maintained successor, rsipstack 0.7.14's `sip` module, does not
//! build without its tokio platform and transport layer (`compile_error!` without
//! `platform-tokio`), which would pull I/O into this pure core. What a music-on-hold UAS needs from
//! a parser is small (start line, header folding, compact names, a handful of typed headers) and
//! this one is strict where RFC 4475 wants strictness, never panics, and is fuzzed (`fuzz/`).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

/// Largest message we accept; UDP cannot carry more anyway.
pub const MAX_MESSAGE: usize = 65_535;
/// More header lines than this is an attack, not a PBX.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Update,
    Prack,
    Info,
    Refer,
    Subscribe,
    Notify,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn parse(token: &str) -> Option<Method> {
        if token.is_empty() || !token.bytes().all(is_token_char) {
            return None;
        }
        // Methods are case-sensitive (RFC 3261 §7.1).
        Some(match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a datagram was not a usable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("message too large")]
    TooLarge,
    #[error("not UTF-8 in the header section")]
    NotUtf8,
    #[error("empty message")]
    Empty,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed header line {0}")]
    HeaderLine(usize),
    #[error("too many headers")]
    TooManyHeaders,
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    BadHeader(&'static str),
    #[error("Content-Length larger than the body")]
    ShortBody,
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    #[error("{0} appears more than once")]
    Duplicate(&'static str),
}

/// A parse failure. When the start line and the headers needed for a response (Via, From, To,
/// Call-ID, CSeq) were readable, `request` holds them so the endpoint can answer 400 (or 505).
#[derive(Debug, Clone)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub request: Option<Box<Request>>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for ParseError {}

fn err(kind: ParseErrorKind) -> ParseError {
    ParseError {
        kind,
        request: None,
    }
}

/// Header list in arrival order. Names are stored in their long form (compact forms expanded),
/// compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0
            .push((expand_compact(name).to_string(), value.into()));
    }
    /// The first header of that name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// All values of that name, in order (each header line is one value; see [`split_list`]).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// All list elements of a comma-separated header (Via, Route, Contact…), across lines.
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_list)
    }
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.push(name, value);
    }
    /// Replace the first header of that name where it stands (or append it).
    pub fn set_in_place(&mut self, name: &str, value: impl Into<String>) {
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = value.into(),
            None => self.push(name, value),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Parse one datagram (RFC 3261 §7). Bytes after Content-Length are ignored (§18.3).
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    if data.len() > MAX_MESSAGE {
        return Err(err(ParseErrorKind::TooLarge));
    }
    // Leading CRLFs are keep-alives or stray line ends; RFC 3261 §7.5 says to ignore them.
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or_else(|| err(ParseErrorKind::Empty))?;
    let data = &data[start..];
    let (head, body) = split_head_body(data);
    let head = std::str::from_utf8(head).map_err(|_| err(ParseErrorKind::NotUtf8))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().ok_or_else(|| err(ParseErrorKind::Empty))?;
    let headers = parse_headers(lines)?;

    if let Some(rest) = start_line.strip_prefix("SIP/") {
        let (version, rest) = rest
            .split_once(' ')
            .ok_or_else(|| err(ParseErrorKind::StartLine))?;
        if version != "2.0" {
            return Err(err(ParseErrorKind::Version));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(ParseErrorKind::StartLine));
        }
        let code: u16 = code.parse().map_err(|_| err(ParseErrorKind::StartLine))?;
        if !(100..=699).contains(&code) {
            return Err(err(ParseErrorKind::StartLine));
        }
        let body = take_body(&headers, body)?;
        return Ok(Message::Response(Response {
            code,
            reason: reason.to_string(),
            headers,
            body,
        }));
    }

    // Request-Line = Method SP Request-URI SP SIP-Version: exactly single spaces (RFC 4475 §3.1.2.8/9).
    let mut parts = start_line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err(ParseErrorKind::StartLine));
    };
    let method = Method::parse(method).ok_or_else(|| err(ParseErrorKind::StartLine))?;
    if uri.is_empty() || uri.starts_with('<') || !uri.contains(':') {
        return Err(err(ParseErrorKind::StartLine));
    }
    let mut request = Request {
        method,
        uri: uri.to_string(),
        headers,
        body: Vec::new(),
    };
    let fail = |kind: ParseErrorKind, request: &Request| -> ParseError {
        // A 400 needs somewhere to go: a readable top Via is enough (RFC 4475 §3.3.1).
        let answerable = request.top_via().is_some();
        ParseError {
            kind,
            request: answerable.then(|| Box::new(request.clone())),
        }
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(fail(ParseErrorKind::Version, &request));
    }
    match take_body(&request.headers, body) {
        Ok(b) => request.body = b,
        Err(e) => return Err(fail(e.kind, &request)),
    }
    if let Err(kind) = validate_request(&request) {
        return Err(fail(kind, &request));
    }
    Ok(Message::Request(request))
}

fn split_head_body(data: &[u8]) -> (&[u8], &[u8]) {
    if let Some(i) = find(data, b"\r\n\r\n") {
        return (&data[..i], &data[i + 4..]);
    }
    if let Some(i) = find(data, b"\n\n") {
        return (&data[..i], &data[i + 2..]);
    }
    (data, &[])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Headers, ParseError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.starts_with(' ') || line.starts_with('\t') {
            // Folded continuation (RFC 3261 §7.3.1): joins the previous header with one space.
            let (_, value) = headers
                .last_mut()
                .ok_or_else(|| err(ParseErrorKind::HeaderLine(n + 2)))?;
            if !value.is_empty() {
                value.push(' ');
            }
            value.push_str(line.trim());
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| err(ParseErrorKind::HeaderLine(n + 2)))?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(err(ParseErrorKind::HeaderLine(n + 2)));
        }
        if headers.len() >= MAX_HEADERS {
            return Err(err(ParseErrorKind::TooManyHeaders));
        }
        headers.push((
            expand_compact(name).to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(Headers(headers))
}

fn take_body(headers: &Headers, body: &[u8]) -> Result<Vec<u8>, ParseError> {
    match headers.get("Content-Length") {
        None => Ok(body.to_vec()),
        Some(v) => {
            let len: usize = parse_digits(v)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| err(ParseErrorKind::BadHeader("Content-Length")))?;
            if len > body.len() {
                return Err(err(ParseErrorKind::ShortBody));
            }
            Ok(body[..len].to_vec())
        }
    }
}

/// Headers that may appear once only (RFC 3261 §7.3: not comma-list headers).
const SINGLE_VALUED: [&str; 6] = [
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Length",
];

fn validate_request(req: &Request) -> Result<(), ParseErrorKind> {
    for h in SINGLE_VALUED {
        if req.headers.get_all(h).nth(1).is_some() {
            return Err(ParseErrorKind::Duplicate(h));
        }
    }
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if req.headers.get(h).is_none() {
            return Err(ParseErrorKind::Missing(match h {
                "Via" => "Via",
                "From" => "From",
                "To" => "To",
                "Call-ID" => "Call-ID",
                _ => "CSeq",
            }));
        }
    }
    let (_, method) = req.cseq().ok_or(ParseErrorKind::BadHeader("CSeq"))?;
    if method != req.method {
        return Err(ParseErrorKind::CSeqMismatch);
    }
    for value in req.headers.get_all("Via") {
        for element in value.split(',') {
            // split on every comma: Via has no quoted parts that may hold one
            Via::parse(element).ok_or(ParseErrorKind::BadHeader("Via"))?;
        }
    }
    for contact in req.headers.list("Contact") {
        if contact != "*" {
            NameAddr::parse(contact).ok_or(ParseErrorKind::BadHeader("Contact"))?;
        }
    }
    if let Some(date) = req.headers.get("Date")
        && !date.trim_end().ends_with("GMT")
    {
        // RFC 3261 §20.17: SIP-date is always GMT.
        return Err(ParseErrorKind::BadHeader("Date"));
    }
    let scheme = req.uri.split(':').next().unwrap_or_default();
    if (scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips"))
        && req.uri[req.uri.rfind('@').unwrap_or(0)..].contains('?')
    {
        // Headers are not allowed in a Request-URI (§19.1.5).
        return Err(ParseErrorKind::StartLine);
    }
    if let Some(mf) = req.headers.get("Max-Forwards") {
        parse_digits(mf)
            .filter(|n| *n <= 255)
            .ok_or(ParseErrorKind::BadHeader("Max-Forwards"))?;
    }
    for h in ["From", "To"] {
        let v = req.headers.get(h).unwrap_or_default();
        NameAddr::parse(v).ok_or(ParseErrorKind::BadHeader(if h == "From" {
            "From"
        } else {
            "To"
        }))?;
    }
    Ok(())
}

fn parse_digits(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn expand_compact(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'v' => "Via",
        b'f' => "From",
        b't' => "To",
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'k' => "Supported",
        b's' => "Subject",
        b'e' => "Content-Encoding",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'x' => "Session-Expires",
        b'u' => "Allow-Events",
        _ => name,
    }
}

/// Split a comma-separated header value, respecting quotes and angle brackets.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0usize);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
}

/// `;name=value;flag` parameters, as (lowercased name, value).
fn parse_params(s: &str) -> Vec<(String, Option<String>)> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"').to_string()),
            ),
            None => (p.to_ascii_lowercase(), None),
        })
        .collect()
}

/// Like [`parse_params`], but an empty parameter (`;;`) or name makes the whole value invalid.
fn parse_params_strict(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Vec::new());
    }
    let body = s.strip_prefix(';')?;
    for p in body.split(';') {
        let name = p.split('=').next().unwrap_or_default().trim();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return None;
        }
    }
    Some(parse_params(s))
}

fn close_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' || c == '\t' {
            // Drop whitespace that is followed (after more whitespace) by a slash.
            let mut ws = String::from(c);
            while let Some(&n) = chars.peek() {
                if n == ' ' || n == '\t' {
                    ws.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek() != Some(&'/') && !out.ends_with('/') {
                out.push_str(&ws);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One Via element (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    pub fn parse(value: &str) -> Option<Via> {
        // sent-protocol allows LWS around its slashes (RFC 4475 §3.1.1.1): close them up first.
        let value = close_slashes(value.trim());
        let (proto, rest) = value.split_once([' ', '\t'])?;
        let mut p = proto.split('/').map(str::trim);
        let (name, version, transport) = (p.next()?, p.next()?, p.next()?);
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
            return None;
        }
        let rest = rest.trim();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(sent_by.trim())?;
        Some(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: parse_params_strict(params)?,
        })
    }
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim().parse().ok()?),
            None if after.trim().is_empty() => None,
            None => return None,
        };
        return Some((format!("[{host}]"), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.trim().parse::<u16>().ok()?)),
        None => (s, None),
    };
    let host = host.trim();
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((host.to_string(), port))
}

/// A From/To/Contact value: optional display name, URI and header parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub uri: String,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(value: &str) -> Option<NameAddr> {
        let value = value.trim();
        if let Some(lt) = find_unquoted(value, '<') {
            let display = value[..lt].trim();
            if display.starts_with('"') {
                if !display.ends_with('"') || display.len() < 2 {
                    return None;
                }
            } else if !display
                .bytes()
                .all(|b| is_token_char(b) || b == b' ' || b == b'\t')
            {
                // An unquoted display name is tokens only: "Bell, Alexander" needs quotes.
                return None;
            }
            let rest = &value[lt + 1..];
            let gt = rest.find('>')?;
            let uri = &rest[..gt];
            // No whitespace inside the brackets (RFC 4475 §3.1.2.14).
            if uri.is_empty() || !uri.contains(':') || uri.contains([' ', '\t', '<']) {
                return None;
            }
            Some(NameAddr {
                uri: uri.to_string(),
                params: parse_params_strict(&rest[gt + 1..])?,
            })
        } else {
            if value.contains('"') {
                return None;
            }
            let (uri, params) = match value.find(';') {
                Some(i) => (&value[..i], &value[i..]),
                None => (value, ""),
            };
            let uri = uri.trim();
            // Without brackets a URI cannot carry headers or commas (§20: addr-spec).
            if uri.is_empty() || !uri.contains(':') || uri.contains([' ', '?', ',']) {
                return None;
            }
            Some(NameAddr {
                uri: uri.to_string(),
                params: parse_params_strict(params)?,
            })
        }
    }
    pub fn tag(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == "tag")
            .and_then(|(_, v)| v.as_deref())
    }
}

fn find_unquoted(s: &str, target: char) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == target && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The parts of a `sip:`/`sips:` URI a UAS looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl SipUri {
    pub fn parse(uri: &str) -> Option<SipUri> {
        let (scheme, rest) = uri.trim().split_once(':')?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            return None;
        }
        // The user part may itself contain '?' (RFC 4475 §3.1.1.2); headers start after the host.
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let hostpart = hostpart.split('?').next().unwrap_or_default();
        let (hostport, params) = match hostpart.find(';') {
            Some(i) => (&hostpart[..i], &hostpart[i..]),
            None => (hostpart, ""),
        };
        let (host, port) = split_host_port(hostport)?;
        let user = match userinfo {
            Some(u) => {
                let user = u.split(':').next().unwrap_or_default();
                Some(percent_decode(user)?)
            }
            None => None,
        };
        Some(SipUri {
            scheme,
            user,
            host,
            port,
            params: parse_params(params),
        })
    }

    /// The address to send to, when the host is an IP literal (we never resolve names here).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host.parse().ok()?;
        let default = if self.scheme == "sips" { 5061 } else { 5060 };
        Some(SocketAddr::new(ip, self.port.unwrap_or(default)))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Request {
    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID").filter(|v| !v.is_empty())
    }
    pub fn cseq(&self) -> Option<(u32, Method)> {
        cseq(&self.headers)
    }
    pub fn top_via(&self) -> Option<Via> {
        self.headers.list("Via").next().and_then(Via::parse)
    }
    pub fn from(&self) -> Option<NameAddr> {
        self.headers.get("From").and_then(NameAddr::parse)
    }
    pub fn to(&self) -> Option<NameAddr> {
        self.headers.get("To").and_then(NameAddr::parse)
    }
    pub fn contact(&self) -> Option<NameAddr> {
        self.headers
            .list("Contact")
            .next()
            .and_then(NameAddr::parse)
    }
    pub fn max_forwards(&self) -> Option<u64> {
        self.headers.get("Max-Forwards").and_then(parse_digits)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        write_headers(&mut head, &self.headers, self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }
    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID")
    }
    pub fn cseq(&self) -> Option<(u32, Method)> {
        cseq(&self.headers)
    }
    pub fn to(&self) -> Option<NameAddr> {
        self.headers.get("To").and_then(NameAddr::parse)
    }
    pub fn contact(&self) -> Option<NameAddr> {
        self.headers
            .list("Contact")
            .next()
            .and_then(NameAddr::parse)
    }
    pub fn top_via(&self) -> Option<Via> {
        self.headers.list("Via").next().and_then(Via::parse)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("SIP/2.0 {} {}\r\n", self.code, self.reason);
        write_headers(&mut head, &self.headers, self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn cseq(headers: &Headers) -> Option<(u32, Method)> {
    let v = headers.get("CSeq")?;
    let mut it = v.split_whitespace();
    let (num, method, None) = (it.next()?, it.next()?, it.next()) else {
        return None;
    };
    // RFC 3261 §8.1.1.5: the sequence number is a 32-bit unsigned integer below 2^31.
    let num = parse_digits(num).filter(|n| *n < (1 << 31))? as u32;
    Some((num, Method::parse(method)?))
}

fn write_headers(out: &mut String, headers: &Headers, body_len: usize) {
    for (n, v) in headers.iter() {
        if n.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n");
}

/// The standard reason phrase for the codes mohd sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:moh@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:moh@127.0.0.1>\r\n\
From: \"Alice, A\" <sip:alice@10.0.0.1>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\nEXTRA";

    #[test]
    fn parses_an_invite() {
        let Ok(Message::Request(r)) = parse(INVITE.as_bytes()) else {
            panic!("should parse")
        };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.body, b"v=0\r");
        assert_eq!(r.cseq(), Some((314159, Method::Invite)));
        let via = r.top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.port, Some(5070));
        assert_eq!(via.param("rport"), Some(None));
        assert_eq!(r.from().unwrap().tag(), Some("1928301774"));
        assert_eq!(r.to().unwrap().tag(), None);
        let uri = SipUri::parse(&r.uri).unwrap();
        assert_eq!(uri.user.as_deref(), Some("moh"));
        assert_eq!(uri.socket_addr(), Some("127.0.0.1:5060".parse().unwrap()));
    }

    #[test]
    fn compact_and_folded_headers() {
        let msg = "OPTIONS sip:x@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1,\r\n SIP/2.0/UDP g\r\nf: <sip:a@h>;tag=1\r\nt: sip:x@h\r\ni: 1\r\nCSeq : 1 OPTIONS\r\nl: 0\r\n\r\n";
        let Ok(Message::Request(r)) = parse(msg.as_bytes()) else {
            panic!()
        };
        assert_eq!(r.headers.list("Via").count(), 2);
        assert_eq!(r.call_id(), Some("1"));
    }

    #[test]
    fn bad_content_length_still_answerable() {
        let msg = INVITE.replace("Content-Length: 4", "Content-Length: 9999");
        let e = parse(msg.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::ShortBody);
        assert!(e.request.is_some());
    }

    #[test]
    fn bad_version_and_missing_headers() {
        let msg = INVITE.replace(
            "sip:moh@127.0.0.1:5060 SIP/2.0",
            "sip:moh@127.0.0.1:5060 SIP/7.0",
        );
        assert_eq!(
            parse(msg.as_bytes()).unwrap_err().kind,
            ParseErrorKind::Version
        );
        let msg = INVITE.replace("Call-ID: a84b4c76e66710@pc33\r\n", "");
        let e = parse(msg.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::Missing("Call-ID"));
        assert!(e.request.is_some(), "still answerable: the Via is there");
        let msg = INVITE.replace(
            "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n",
            "",
        );
        let e = parse(msg.as_bytes()).unwrap_err();
        assert!(e.request.is_none(), "no Via: nowhere to answer");
        let msg = INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 ACK");
        assert_eq!(
            parse(msg.as_bytes()).unwrap_err().kind,
            ParseErrorKind::CSeqMismatch
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        let base = INVITE.as_bytes();
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut v = base.to_vec();
            let n = (seed % 8) as usize + 1;
            for k in 0..n {
                let pos = ((seed >> (k * 8)) as usize) % v.len();
                v[pos] = (seed >> (k * 3)) as u8;
            }
            v.truncate((seed as usize >> 5) % (v.len() + 1));
            if i % 3 == 0 {
                v.extend(std::iter::repeat_n(b'\x80', (seed % 100) as usize));
            }
            let _ = parse(&v);
        }
    }

    #[test]
    fn response_round_trip() {
        let mut h = Headers::new();
        h.push("Via", "SIP/2.0/UDP h;branch=z9hG4bKx");
        h.push("Call-ID", "c");
        h.push("CSeq", "1 BYE");
        h.push("From", "<sip:a@h>;tag=1");
        h.push("To", "<sip:b@h>;tag=2");
        let r = Response {
            code: 200,
            reason: "OK".into(),
            headers: h,
            body: vec![],
        };
        let bytes = r.to_bytes();
        let Ok(Message::Response(back)) = parse(&bytes) else {
            panic!()
        };
        assert_eq!(back.code, 200);
        assert_eq!(back.cseq(), Some((1, Method::Bye)));
    }
}
