//! Admin authentication: the password and API tokens persisted in `<state>/auth.json`, the
//! in-memory login sessions with their CSRF tokens, the login rate limiter, and the
//! `mohd passwd` / `mohd token` command-line helpers.
//!
//! Secrets never touch the disk in the clear: the password is an argon2id PHC string, and a
//! token is kept only as its SHA-256 (a token is 256 random bits, so a fast hash is enough; it
//! is not a guessable password). The plain token is shown once, when it is made.
//!
//! Sessions and the limiter are hand-written because they are a few dozen lines each and take
//! time as a `now: Instant` parameter, so tests drive them without sleeping; the session and
//! rate-limit crates for axum (tower-sessions, governor) bring stores, cookies and clocks of
//! their own that we would have to work around.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the store inside the state directory.
pub const AUTH_FILE: &str = "auth.json";
/// Prefix of every API token, so a leaked one is recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "mohd_";
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes: argon2 would take more, but nobody types more, and it
/// bounds what an unauthenticated login request can make us hash.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest token name, in characters.
pub const MAX_TOKEN_NAME: usize = 64;
/// Most API tokens kept; every bearer request compares against all of them.
pub const MAX_TOKENS: usize = 100;
/// Default cap on live sessions; the least recently used one is dropped beyond it.
pub const MAX_SESSIONS: usize = 1000;

const FILE_VERSION: u32 = 1;

/// Why an auth operation failed. Messages are full sentences fit for the CLI and the web API.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The store exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The auth file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The store could not be written; nothing was changed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The auth file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The store is not what mohd writes (hand-edited, truncated, from a newer version).
    #[error("{} is corrupt: {reason} (fix or delete it; deleting removes the password and all tokens)", path.display())]
    Corrupt {
        /// The auth file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The new password is shorter than [`MIN_PASSWORD_CHARS`].
    #[error("password too short: use at least {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    /// The new password is longer than [`MAX_PASSWORD_BYTES`].
    #[error("password too long: use at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    /// A token name outside 1-64 characters of `[A-Za-z0-9._-]`.
    #[error("invalid token name {0:?}: use 1-{MAX_TOKEN_NAME} characters from A-Z a-z 0-9 . _ -")]
    BadTokenName(String),
    /// A token with this name exists already.
    #[error("a token named {0:?} already exists")]
    TokenExists(String),
    /// [`MAX_TOKENS`] tokens exist already.
    #[error("too many API tokens (at most {MAX_TOKENS}): revoke one first")]
    TooManyTokens,
    /// argon2 refused to hash (should not happen with the default parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The name given at creation.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// On-disk shape of `auth.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AuthFile {
    version: u32,
    /// argon2id PHC string; absent until `mohd passwd` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default)]
    tokens: Vec<FileToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileToken {
    name: String,
    /// Lower-case hex SHA-256 of the whole token string, prefix included.
    sha256: String,
    created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredToken {
    name: String,
    hash: [u8; 32],
    created_unix: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    password: Option<String>,
    tokens: Vec<StoredToken>,
}

/// What identifies one version of the file: every write is a rename, so a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// The admin password and API tokens, persisted in `<state>/auth.json`.
///
/// Every mutation writes the file (atomically) before it returns and leaves `self` unchanged
/// if the write fails. Mutations first pick up changes made by another process (`mohd passwd`
/// or `mohd token` while the server runs), so neither side overwrites the other's work; a
/// server should call [`AuthStore::refresh`] before checking credentials to see them at once.
#[derive(Debug)]
pub struct AuthStore {
    state_dir: PathBuf,
    path: PathBuf,
    state: State,
    stamp: Option<FileStamp>,
}

impl AuthStore {
    /// Loads `<state_dir>/auth.json`. A missing file (or state folder) is an empty store; an
    /// unreadable or malformed one is an error naming the file.
    pub fn open(state_dir: &Path) -> Result<AuthStore, AuthError> {
        let path = state_dir.join(AUTH_FILE);
        let (state, stamp) = load(&path)?;
        Ok(AuthStore {
            state_dir: state_dir.to_owned(),
            path,
            state,
            stamp,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if another process replaced it since we last read or wrote it (one
    /// `stat` otherwise). Returns whether anything was reloaded. On error `self` is unchanged.
    pub fn refresh(&mut self) -> Result<bool, AuthError> {
        let now = stamp_of(&self.path).map_err(|source| AuthError::Read {
            path: self.path.clone(),
            source,
        })?;
        if now == self.stamp {
            return Ok(false);
        }
        let (state, stamp) = load(&self.path)?;
        self.state = state;
        self.stamp = stamp;
        Ok(true)
    }

    /// Whether an admin password is set.
    pub fn has_password(&self) -> bool {
        self.state.password.is_some()
    }

    /// Sets the admin password (argon2id, default parameters). Takes tens of milliseconds in
    /// an optimised build: call it from a blocking thread, or hash outside any lock with
    /// [`hash_password`] and store with [`AuthStore::set_password_hash`].
    pub fn set_password(&mut self, pw: &str) -> Result<(), AuthError> {
        let phc = hash_password(pw)?;
        self.set_password_hash(phc)
    }

    /// Stores a PHC string made by [`hash_password`].
    pub fn set_password_hash(&mut self, phc: String) -> Result<(), AuthError> {
        if PasswordHash::new(&phc).is_err() {
            return Err(AuthError::Hash("not a PHC string".into()));
        }
        self.mutate(|s| {
            s.password = Some(phc);
            Ok(())
        })
    }

    /// The stored PHC string, so a server can verify with [`verify_password_hash`] on a
    /// blocking thread without holding the store's lock.
    pub fn password_hash(&self) -> Option<String> {
        self.state.password.clone()
    }

    /// Whether `pw` is the admin password (false when none is set). argon2's own comparison
    /// is constant-time. Slow on purpose, like [`AuthStore::set_password`].
    pub fn verify_password(&self, pw: &str) -> bool {
        self.state
            .password
            .as_deref()
            .is_some_and(|phc| verify_password_hash(phc, pw))
    }

    /// Makes an API token named `name` and returns it; only its hash is kept, so this is the
    /// one time it can be shown.
    pub fn new_token(&mut self, name: &str) -> Result<String, AuthError> {
        validate_token_name(name)?;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let stored = StoredToken {
            name: name.to_owned(),
            hash: sha256(token.as_bytes()),
            created_unix: unix_now(),
        };
        self.mutate(|s| {
            if s.tokens.iter().any(|t| t.name == stored.name) {
                return Err(AuthError::TokenExists(stored.name.clone()));
            }
            if s.tokens.len() >= MAX_TOKENS {
                return Err(AuthError::TooManyTokens);
            }
            s.tokens.push(stored);
            Ok(())
        })?;
        Ok(token)
    }

    /// The tokens' names and creation times, oldest first.
    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        self.state
            .tokens
            .iter()
            .map(|t| TokenInfo {
                name: t.name.clone(),
                created_unix: t.created_unix,
            })
            .collect()
    }

    /// Deletes the token named `name`. `Ok(false)` if there was none (nothing is written).
    pub fn revoke_token(&mut self, name: &str) -> Result<bool, AuthError> {
        self.refresh()?;
        if !self.state.tokens.iter().any(|t| t.name == name) {
            return Ok(false);
        }
        self.mutate(|s| {
            s.tokens.retain(|t| t.name != name);
            Ok(())
        })?;
        Ok(true)
    }

    /// The name of the token `presented` (a bearer token as sent), if it is one of ours.
    /// Compares against every stored hash in constant time, so timing tells nothing about
    /// which token, or how much of one, matched.
    pub fn check_token(&self, presented: &str) -> Option<String> {
        // Real tokens are 48 bytes; hashing a megabyte header would be wasted work.
        if presented.len() > 256 {
            return None;
        }
        let h = sha256(presented.as_bytes());
        let mut found = None;
        for t in &self.state.tokens {
            if ct_eq(&t.hash, &h) {
                found = Some(t.name.clone());
            }
        }
        found
    }

    /// Applies `f` to a copy of the freshest state, persists it, then adopts it.
    fn mutate(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        self.refresh()?;
        let mut next = self.state.clone();
        f(&mut next)?;
        let stamp = self.persist(&next)?;
        self.state = next;
        self.stamp = stamp;
        Ok(())
    }

    fn persist(&self, state: &State) -> Result<Option<FileStamp>, AuthError> {
        let file = AuthFile {
            version: FILE_VERSION,
            password: state.password.clone(),
            tokens: state
                .tokens
                .iter()
                .map(|t| FileToken {
                    name: t.name.clone(),
                    sha256: hex(&t.hash),
                    created_unix: t.created_unix,
                })
                .collect(),
        };
        let write_err = |source| AuthError::Write {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| write_err(e.into()))?;
        text.push(b'\n');
        // `mohd passwd` may run before the service ever started and made its state folder.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .map_err(write_err)?;
        crate::fsutil::write_atomic(&self.path, &text).map_err(write_err)?;
        tighten_owner_and_mode(&self.state_dir, &self.path);
        stamp_of(&self.path).map_err(write_err)
    }
}

/// Hashes `pw` as an argon2id PHC string after checking its length.
pub fn hash_password(pw: &str) -> Result<String, AuthError> {
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::PasswordTooLong);
    }
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::PasswordTooShort);
    }
    let hash: PasswordHash = Argon2::default()
        .hash_password(pw.as_bytes())
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `pw` matches the PHC string `phc` (false if `phc` does not parse).
pub fn verify_password_hash(phc: &str, pw: &str) -> bool {
    if pw.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(pw.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Constant-time string equality for secrets such as a presented CSRF token. Leaks only the
/// lengths, which are public for our fixed-size tokens.
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && ct_eq(a.as_bytes(), b.as_bytes())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

fn validate_token_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadTokenName(name.to_owned()))
    }
}

fn load(path: &Path) -> Result<(State, Option<FileStamp>), AuthError> {
    let read_err = |source| AuthError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((State::default(), None)),
        Err(source) => return Err(read_err(source)),
    };
    // The stamp is taken after the read: if the file is replaced in between we reload once
    // more at the next refresh, which is harmless.
    let stamp = stamp_of(path).map_err(read_err)?;
    Ok((parse_store(path, &bytes)?, stamp))
}

/// The store's contents, checked as mohd writes them; anything else is [`AuthError::Corrupt`].
fn parse_store(path: &Path, bytes: &[u8]) -> Result<State, AuthError> {
    let corrupt = |reason: String| AuthError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file: AuthFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FILE_VERSION {
        return Err(corrupt(format!(
            "version {} is not {FILE_VERSION} (written by another mohd version?)",
            file.version
        )));
    }
    if let Some(phc) = &file.password
        && PasswordHash::new(phc).is_err()
    {
        return Err(corrupt("the password hash is not a PHC string".into()));
    }
    let mut tokens: Vec<StoredToken> = Vec::with_capacity(file.tokens.len());
    for t in file.tokens {
        validate_token_name(&t.name).map_err(|e| corrupt(e.to_string()))?;
        if tokens.iter().any(|o| o.name == t.name) {
            return Err(corrupt(format!("token {:?} appears twice", t.name)));
        }
        let hash = unhex32(&t.sha256)
            .ok_or_else(|| corrupt(format!("token {:?} has a malformed sha256", t.name)))?;
        tokens.push(StoredToken {
            name: t.name,
            hash,
            created_unix: t.created_unix,
        });
    }
    Ok(State {
        password: file.password,
        tokens,
    })
}

fn stamp_of(path: &Path) -> io::Result<Option<FileStamp>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Best effort, after the file is in place: readable by its owner only, and owned like the
/// state folder, so `sudo mohd passwd` leaves a file the service user can still read. Failing
/// is not fatal: the content is already safely written, and hashes are not plain secrets.
fn tighten_owner_and_mode(state_dir: &Path, path: &Path) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    if let (Ok(dir), Ok(file)) = (fs::metadata(state_dir), fs::metadata(path))
        && (dir.uid(), dir.gid()) != (file.uid(), file.gid())
    {
        let _ = std::os::unix::fs::chown(path, Some(dir.uid()), Some(dir.gid()));
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(*pair.first()?).to_digit(16)?;
        let lo = char::from(*pair.get(1)?).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_b64(rng: &mut StdRng) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[derive(Debug)]
struct Session {
    csrf: String,
    last_used: Instant,
}

/// Logged-in browser sessions, in memory (a restart logs everyone out, which is fine for one
/// admin). Expiry slides: each successful check extends it by the TTL.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    max: usize,
    map: HashMap<String, Session>,
    // A CSPRNG seeded once from the OS, rather than the thread-local one, so the type owns
    // its randomness.
    rng: StdRng,
}

impl Sessions {
    /// Sessions that expire after `ttl` without use, at most [`MAX_SESSIONS`] of them.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions::with_limit(ttl, MAX_SESSIONS)
    }

    /// Like [`Sessions::new`] with another cap (at least 1).
    pub fn with_limit(ttl: Duration, max: usize) -> Sessions {
        Sessions {
            ttl,
            max: max.max(1),
            map: HashMap::new(),
            rng: StdRng::from_os_rng(),
        }
    }

    /// Starts a session: returns `(session_id, csrf_token)`, both 32 random bytes in
    /// base64url. Expired sessions are dropped first; if the cap is still reached, the least
    /// recently used session goes.
    pub fn create(&mut self, now: Instant) -> (String, String) {
        self.prune(now);
        while self.map.len() >= self.max {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.map.remove(&id),
                None => break,
            };
        }
        let id = random_b64(&mut self.rng);
        let csrf = random_b64(&mut self.rng);
        self.map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The session's CSRF token if `id` is a live session, extending its expiry; an expired
    /// session is removed.
    pub fn check(&mut self, id: &str, now: Instant) -> Option<String> {
        let s = self.map.get_mut(id)?;
        if now.saturating_duration_since(s.last_used) >= self.ttl {
            self.map.remove(id);
            return None;
        }
        s.last_used = s.last_used.max(now);
        Some(s.csrf.clone())
    }

    /// Ends a session (logout). Whether it existed.
    pub fn remove(&mut self, id: &str) -> bool {
        self.map.remove(id).is_some()
    }

    /// Ends every session except `keep` (after a password change, other browsers must log
    /// in again).
    pub fn remove_all_except(&mut self, keep: Option<&str>) {
        self.map.retain(|id, _| Some(id.as_str()) == keep);
    }

    /// Live and not yet pruned sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn prune(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.map
            .retain(|_, s| now.saturating_duration_since(s.last_used) < ttl);
    }
}

// ---------------------------------------------------------------------------------------------
// Login rate limiting

/// Default failed attempts allowed per source per window.
pub const LOGIN_PER_IP: usize = 5;
/// Default failed attempts allowed across all sources per window.
pub const LOGIN_GLOBAL: usize = 30;
/// Default window.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Default cap on tracked sources.
pub const LOGIN_MAX_IPS: usize = 10_000;

/// Slows password guessing: per source at most [`LOGIN_PER_IP`] failures per
/// [`LOGIN_WINDOW`], and at most [`LOGIN_GLOBAL`] across all sources, so a guess spread over
/// many addresses is slowed too (at the price that such an attack also delays the real
/// admin's login; bearer tokens keep working).
///
/// Protocol: call [`LoginLimiter::attempt`] *before* verifying the password; it counts the
/// attempt as a failure at once, so parallel requests cannot all slip past the check while
/// argon2 runs. On a correct password call [`LoginLimiter::succeeded`], which forgives it and
/// clears that source's record.
///
/// IPv6 sources count per /64 (one host usually owns a whole /64); IPv4-mapped addresses
/// count as IPv4.
#[derive(Debug)]
pub struct LoginLimiter {
    per_ip: usize,
    global: usize,
    window: Duration,
    max_ips: usize,
    ips: HashMap<IpAddr, VecDeque<Instant>>,
    recent: VecDeque<(Instant, IpAddr)>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new()
    }
}

impl LoginLimiter {
    /// A limiter with the default limits.
    pub fn new() -> LoginLimiter {
        LoginLimiter::with_limits(LOGIN_PER_IP, LOGIN_GLOBAL, LOGIN_WINDOW, LOGIN_MAX_IPS)
    }

    /// A limiter with other limits (each at least 1).
    pub fn with_limits(
        per_ip: usize,
        global: usize,
        window: Duration,
        max_ips: usize,
    ) -> LoginLimiter {
        LoginLimiter {
            per_ip: per_ip.max(1),
            global: global.max(1),
            window,
            max_ips: max_ips.max(1),
            ips: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    /// Admits one login attempt from `ip`, counting it as a failure until
    /// [`LoginLimiter::succeeded`] says otherwise, or refuses it with how long to wait
    /// (round up to whole seconds for `Retry-After`).
    pub fn attempt(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = source_key(ip);
        let window = self.window;
        let live = |t: &Instant| now.saturating_duration_since(*t) < window;
        while self.recent.front().is_some_and(|(t, _)| !live(t)) {
            self.recent.pop_front();
        }
        if let Some(q) = self.ips.get_mut(&key) {
            while q.front().is_some_and(|t| !live(t)) {
                q.pop_front();
            }
        }
        let mut wait = Duration::ZERO;
        if self.recent.len() >= self.global
            && let Some((t, _)) = self.recent.front()
        {
            wait = wait.max(self.retry_after(*t, now));
        }
        if let Some(q) = self.ips.get(&key)
            && q.len() >= self.per_ip
            && let Some(t) = q.front()
        {
            wait = wait.max(self.retry_after(*t, now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if !self.ips.contains_key(&key) {
            self.make_room(now);
        }
        self.ips.entry(key).or_default().push_back(now);
        self.recent.push_back((now, key));
        Ok(())
    }

    /// The attempt from `ip` had the right password: forget that source's failures and take
    /// its latest attempt out of the global count.
    pub fn succeeded(&mut self, ip: IpAddr) {
        let key = source_key(ip);
        self.ips.remove(&key);
        if let Some(pos) = self.recent.iter().rposition(|(_, k)| *k == key) {
            self.recent.remove(pos);
        }
    }

    /// Sources with a record (for tests and metrics).
    pub fn tracked_sources(&self) -> usize {
        self.ips.len()
    }

    fn retry_after(&self, oldest: Instant, now: Instant) -> Duration {
        // Never zero: a refusal must tell the client to wait a little.
        (oldest + self.window)
            .saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    /// Keeps the map bounded: sweeps sources with no failure in the window once the map
    /// outgrows what the global cap lets be live (amortised O(1)), and as a last resort drops
    /// the source whose latest failure is oldest.
    fn make_room(&mut self, now: Instant) {
        let window = self.window;
        if self.ips.len() >= self.max_ips.min(self.global.saturating_mul(2)) {
            self.ips.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        while self.ips.len() >= self.max_ips {
            let stalest = self
                .ips
                .iter()
                .min_by_key(|(_, q)| q.back().copied())
                .map(|(k, _)| *k);
            match stalest {
                Some(k) => self.ips.remove(&k),
                None => break,
            };
        }
    }
}

fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

// ---------------------------------------------------------------------------------------------
// Command-line helpers

/// `mohd token` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCmd {
    /// Make a token with this name and print it.
    New(String),
    /// Print the tokens' names and creation times.
    List,
    /// Delete the token with this name.
    Revoke(String),
}

/// Why `mohd passwd` or `mohd token` failed. Messages are full sentences for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store refused (unreadable, bad name, duplicate, short password, ...).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `mohd token revoke` of a name that has no token.
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    /// No `/dev/tty` to prompt on (a pipe, a service): the password must come with `--stdin`.
    #[error("no terminal to ask for the password ({0}): pipe it in with --stdin")]
    NoTerminal(io::Error),
    /// Reading the password's line failed.
    #[error("cannot read the password: {0}")]
    ReadPassword(io::Error),
    /// An empty line, or nothing at all.
    #[error("no password given on stdin")]
    NoPassword,
    /// The line is not UTF-8, so it could not be typed again at the login page.
    #[error("the password is not valid UTF-8")]
    PasswordNotUtf8,
    /// The prompt's two entries differ.
    #[error("the passwords do not match; nothing changed")]
    PasswordsDiffer,
    /// The terminal's settings could not be read, so echo stays on and nothing is asked.
    #[error("cannot read terminal settings: {0}")]
    TerminalSettings(nix::errno::Errno),
    /// Echo could not be turned off, so nothing is asked.
    #[error("cannot turn terminal echo off: {0}")]
    EchoOff(nix::errno::Errno),
}

/// `mohd passwd`: sets the admin password, read from stdin (one line, without its line end)
/// or prompted for twice on the terminal without echo.
pub fn cli_passwd(state_dir: &Path, from_stdin: bool) -> Result<(), CliError> {
    let mut store = AuthStore::open(state_dir)?;
    let pw = if from_stdin {
        read_password_line(&mut io::stdin().lock())?
    } else {
        prompt_twice()?
    };
    Ok(store.set_password(&pw)?)
}

/// `mohd token new|list|revoke`: returns what to print on stdout.
pub fn cli_token(state_dir: &Path, cmd: TokenCmd) -> Result<String, CliError> {
    let mut store = AuthStore::open(state_dir)?;
    match cmd {
        TokenCmd::New(name) => {
            let token = store.new_token(&name)?;
            Ok(format!("{token}\n"))
        }
        TokenCmd::List => Ok(store
            .list_tokens()
            .iter()
            .map(|t| format!("{}\t{}\n", t.name, format_utc(t.created_unix)))
            .collect()),
        TokenCmd::Revoke(name) => match store.revoke_token(&name)? {
            true => Ok(format!("revoked token {name}\n")),
            false => Err(CliError::NoSuchToken(name)),
        },
    }
}

/// The line to print at start when no admin password is set (None when one is, or when the
/// store cannot be read: opening it properly reports that).
pub fn first_run_hint(state_dir: &Path) -> Option<String> {
    match AuthStore::open(state_dir) {
        // The state folder names exactly where the password goes, whichever config (or
        // none) this server was started with.
        Ok(s) if !s.has_password() => Some(format!(
            "no admin password set: the web admin refuses every login until one is; run \
             `mohd passwd --state {dir}` (or `echo PASS | mohd passwd --stdin --state {dir}`)",
            dir = state_dir.display()
        )),
        _ => None,
    }
}

/// One line of at most a little over [`MAX_PASSWORD_BYTES`], without its `\n` or `\r\n`.
fn read_password_line(input: &mut impl BufRead) -> Result<String, CliError> {
    let mut buf = Vec::new();
    // Read one byte past the limit so an over-long password is reported, not truncated.
    let limit = u64::try_from(MAX_PASSWORD_BYTES + 3).unwrap_or(u64::MAX);
    input
        .take(limit)
        .read_until(b'\n', &mut buf)
        .map_err(CliError::ReadPassword)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.is_empty() {
        return Err(CliError::NoPassword);
    }
    String::from_utf8(buf).map_err(|_| CliError::PasswordNotUtf8)
}

fn prompt_twice() -> Result<String, CliError> {
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(CliError::NoTerminal)?;
    let first = prompt(&tty, "New admin password: ")?;
    // Checked before asking again, so a typo'd short password fails fast.
    if first.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::PasswordTooLong.into());
    }
    if first.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::PasswordTooShort.into());
    }
    let second = prompt(&tty, "Repeat it: ")?;
    if first != second {
        return Err(CliError::PasswordsDiffer);
    }
    Ok(first)
}

fn prompt(tty: &fs::File, text: &str) -> Result<String, CliError> {
    let mut err = io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
    let line = {
        let _echo_off = EchoOff::new(tty)?;
        read_password_line(&mut BufReader::new(tty))
    };
    // The user's Enter was not echoed either.
    let _ = writeln!(err);
    line
}

/// Turns terminal echo off while alive.
struct EchoOff<'a> {
    tty: &'a fs::File,
    saved: nix::sys::termios::Termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a fs::File) -> Result<EchoOff<'a>, CliError> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let saved = tcgetattr(tty).map_err(CliError::TerminalSettings)?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(tty, SetArg::TCSAFLUSH, &quiet).map_err(CliError::EchoOff)?;
        Ok(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(self.tty, SetArg::TCSANOW, &self.saved);
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` without a date crate (Howard Hinnant's days-to-civil).
fn format_utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let rem = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn store() -> (tempfile::TempDir, AuthStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = AuthStore::open(dir.path()).unwrap();
        (dir, s)
    }

    fn file_text(dir: &tempfile::TempDir) -> String {
        fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap()
    }

    #[test]
    fn password_hash_and_verify() {
        let (dir, mut s) = store();
        assert!(!s.has_password());
        assert!(
            !s.verify_password("anything-at-all"),
            "no password: nothing verifies"
        );
        s.set_password("correct horse").unwrap();
        assert!(s.has_password());
        assert!(s.verify_password("correct horse"));
        assert!(!s.verify_password("correct hors"));
        assert!(!s.verify_password("Correct horse"));
        assert!(!s.verify_password(""));
        let text = file_text(&dir);
        assert!(text.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
        assert!(!text.contains("correct horse"));
        let mode = fs::metadata(dir.path().join(AUTH_FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn password_length_limits() {
        let (dir, mut s) = store();
        assert!(matches!(
            s.set_password("seven77"),
            Err(AuthError::PasswordTooShort)
        ));
        // Eight characters, more bytes: counted in characters.
        s.set_password("ééééééé1").unwrap();
        assert!(matches!(
            s.set_password(&"x".repeat(1025)),
            Err(AuthError::PasswordTooLong)
        ));
        s.set_password(&"x".repeat(1024)).unwrap();
        assert!(s.verify_password(&"x".repeat(1024)));
        assert!(!s.verify_password(&"x".repeat(1025)));
        assert!(
            AuthError::PasswordTooShort
                .to_string()
                .contains("at least 8")
        );
        drop(dir);
    }

    #[test]
    fn token_roundtrip_and_no_plain_secret_on_disk() {
        let (dir, mut s) = store();
        let t = s.new_token("ci-deploy.1").unwrap();
        assert!(t.starts_with("mohd_"));
        assert_eq!(t.len(), 5 + 43, "32 bytes base64url without padding");
        assert_eq!(s.check_token(&t).as_deref(), Some("ci-deploy.1"));
        assert_eq!(s.check_token(&format!("{t}x")), None);
        assert_eq!(s.check_token(""), None);
        assert_eq!(s.check_token(&t[..t.len() - 1]), None);

        let text = file_text(&dir);
        assert!(!text.contains(&t), "plain token on disk: {text}");
        assert!(!text.contains(&t[5..]), "token secret on disk: {text}");
        assert!(text.contains(&hex(&sha256(t.as_bytes()))));

        let t2 = s.new_token("other").unwrap();
        assert_ne!(t, t2);
        let list = s.list_tokens();
        assert_eq!(
            list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["ci-deploy.1", "other"]
        );
        let debug = format!("{list:?}");
        assert!(!debug.contains(&t[5..]) && !debug.contains(&t2[5..]));
        let now = unix_now();
        assert!(
            list.iter()
                .all(|i| i.created_unix + 60 > now && i.created_unix <= now)
        );

        assert!(s.revoke_token("ci-deploy.1").unwrap());
        assert_eq!(s.check_token(&t), None);
        assert_eq!(s.check_token(&t2).as_deref(), Some("other"));
        assert!(!s.revoke_token("ci-deploy.1").unwrap());
        assert!(!file_text(&dir).contains("ci-deploy.1"));
    }

    #[test]
    fn token_names_are_validated_and_unique() {
        let (_dir, mut s) = store();
        for bad in ["", "a b", "ü", "a/b", "x;y", &"a".repeat(65)] {
            assert!(
                matches!(s.new_token(bad), Err(AuthError::BadTokenName(_))),
                "{bad:?}"
            );
        }
        s.new_token(&"a".repeat(64)).unwrap();
        s.new_token("A.z_0-9").unwrap();
        let e = s.new_token("A.z_0-9").unwrap_err();
        assert!(matches!(e, AuthError::TokenExists(_)));
        assert_eq!(s.list_tokens().len(), 2);
    }

    #[test]
    fn too_many_tokens_is_refused() {
        let (_dir, mut s) = store();
        for i in 0..MAX_TOKENS {
            s.new_token(&format!("t{i}")).unwrap();
        }
        assert!(matches!(
            s.new_token("one-more"),
            Err(AuthError::TooManyTokens)
        ));
    }

    #[test]
    fn reopen_sees_everything() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("not-yet-made");
        let mut s = AuthStore::open(&state).unwrap();
        s.set_password("hunter2hunter2").unwrap();
        let t = s.new_token("a").unwrap();
        s.new_token("b").unwrap();
        s.revoke_token("b").unwrap();
        let r = AuthStore::open(&state).unwrap();
        assert!(r.verify_password("hunter2hunter2"));
        assert_eq!(r.check_token(&t).as_deref(), Some("a"));
        assert_eq!(r.list_tokens(), s.list_tokens());
        assert_eq!(r.list_tokens().len(), 1);
    }

    #[test]
    fn changes_by_another_process_are_seen_and_not_overwritten() {
        let (dir, mut server) = store();
        server.set_password("first-password").unwrap();
        // `mohd token new` in another process while the server runs.
        let mut cli = AuthStore::open(dir.path()).unwrap();
        let t = cli.new_token("from-cli").unwrap();
        cli.set_password("second-password").unwrap();

        assert_eq!(server.check_token(&t), None, "not refreshed yet");
        assert!(server.refresh().unwrap());
        assert!(!server.refresh().unwrap(), "nothing changed since");
        assert_eq!(server.check_token(&t).as_deref(), Some("from-cli"));
        assert!(server.verify_password("second-password"));

        // A server-side mutation after another external change keeps that change too.
        cli.new_token("second-cli").unwrap();
        server.new_token("from-web").unwrap();
        let names: Vec<_> = AuthStore::open(dir.path())
            .unwrap()
            .list_tokens()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["from-cli", "second-cli", "from-web"]);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let cases: [(&str, &str); 5] = [
            ("{not json", ""),
            (r#"{"version":2}"#, "version 2"),
            (r#"{"version":1,"password":"plaintext"}"#, "PHC"),
            (
                r#"{"version":1,"tokens":[{"name":"a","sha256":"zz","created_unix":1}]}"#,
                "malformed sha256",
            ),
            (
                r#"{"version":1,"tokens":[{"name":"bad name","sha256":"00","created_unix":1}]}"#,
                "invalid token name",
            ),
        ];
        for (content, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(AUTH_FILE);
            fs::write(&p, content).unwrap();
            let e = AuthStore::open(dir.path()).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, AuthError::Corrupt { .. }), "{msg}");
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
    }

    #[test]
    fn failed_write_leaves_memory_unchanged() {
        let (dir, mut s) = store();
        s.set_password("original-pw").unwrap();
        let t = s.new_token("keep").unwrap();
        // Make the target a non-empty folder: the rename in write_atomic then fails.
        let p = dir.path().join(AUTH_FILE);
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        fs::write(p.join("x"), b"").unwrap();
        // refresh() would now fail to read a folder as the file; stop that from masking the
        // write failure by making the store believe it is up to date.
        s.stamp = stamp_of(&p).unwrap();

        assert!(matches!(s.new_token("new"), Err(AuthError::Write { .. })));
        assert!(matches!(
            s.set_password("changed-pw"),
            Err(AuthError::Write { .. })
        ));
        assert!(matches!(
            s.revoke_token("keep"),
            Err(AuthError::Write { .. })
        ));
        assert!(s.verify_password("original-pw"));
        assert_eq!(s.check_token(&t).as_deref(), Some("keep"));
        assert_eq!(s.list_tokens().len(), 1);
    }

    #[test]
    fn secret_eq_compares_exactly() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "ab"));
        assert!(secret_eq("", ""));
    }

    #[test]
    fn sessions_slide_and_expire() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(600);
        let mut s = Sessions::new(ttl);
        let (id, csrf) = s.create(t0);
        assert_eq!(URL_SAFE_NO_PAD.decode(&id).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&csrf).unwrap().len(), 32);
        assert_ne!(id, csrf);
        // Used every 9 minutes for an hour: stays alive (sliding).
        let mut t = t0;
        for _ in 0..7 {
            t += Duration::from_secs(540);
            assert_eq!(s.check(&id, t).as_deref(), Some(csrf.as_str()));
        }
        // Then idle for the TTL: gone, and removed.
        assert_eq!(s.check(&id, t + ttl), None);
        assert_eq!(s.len(), 0);
        assert_eq!(s.check("unknown", t), None);

        let (a, _) = s.create(t);
        assert!(s.remove(&a));
        assert!(!s.remove(&a));
        assert_eq!(s.check(&a, t), None);
    }

    #[test]
    fn sessions_are_capped_dropping_the_least_recently_used() {
        let t0 = Instant::now();
        let mut s = Sessions::with_limit(Duration::from_secs(3600), 3);
        let sec = Duration::from_secs(1);
        let (a, _) = s.create(t0);
        let (b, _) = s.create(t0 + sec);
        let (c, _) = s.create(t0 + sec * 2);
        // `a` is the oldest but was just used, so `b` is the one to go.
        assert!(s.check(&a, t0 + sec * 3).is_some());
        let (d, _) = s.create(t0 + sec * 4);
        assert_eq!(s.len(), 3);
        assert!(s.check(&b, t0 + sec * 5).is_none());
        for id in [&a, &c, &d] {
            assert!(s.check(id, t0 + sec * 5).is_some());
        }
        // Expired sessions make room before live ones are dropped.
        let later = t0 + Duration::from_secs(3600) + sec * 6;
        let (e, _) = s.create(later);
        assert_eq!(s.len(), 1);
        assert!(s.check(&e, later).is_some());

        let mut big = Sessions::new(Duration::from_secs(3600));
        for i in 0..(MAX_SESSIONS as u64 + 50) {
            big.create(t0 + Duration::from_millis(i));
        }
        assert_eq!(big.len(), MAX_SESSIONS);
    }

    #[test]
    fn remove_all_except_keeps_one() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let (a, _) = s.create(t0);
        let (b, _) = s.create(t0);
        s.remove_all_except(Some(&a));
        assert!(s.check(&a, t0).is_some());
        assert!(s.check(&b, t0).is_none());
        s.remove_all_except(None);
        assert!(s.is_empty());
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn limiter_allows_five_then_refuses_with_retry_after() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new();
        for i in 0..5 {
            l.attempt(ip(1), t0 + Duration::from_secs(i)).unwrap();
        }
        let wait = l.attempt(ip(1), t0 + Duration::from_secs(10)).unwrap_err();
        // The first failure (t0) leaves the window at t0 + 60 s.
        assert_eq!(wait, Duration::from_secs(50));
        // Refusals are not counted: the wait does not grow.
        let wait2 = l.attempt(ip(1), t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait2, Duration::from_secs(40));
        // Another source is unaffected.
        l.attempt(ip(2), t0 + Duration::from_secs(20)).unwrap();
    }

    #[test]
    fn limiter_window_slides() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new();
        for i in 0..5 {
            l.attempt(ip(1), t0 + Duration::from_secs(i * 10)).unwrap();
        }
        assert!(l.attempt(ip(1), t0 + Duration::from_secs(59)).is_err());
        // At 60 s the t0 failure has left the window: one more attempt, not five.
        l.attempt(ip(1), t0 + Duration::from_secs(60)).unwrap();
        let wait = l.attempt(ip(1), t0 + Duration::from_secs(61)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(9));
    }

    #[test]
    fn limiter_success_resets_the_source() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new();
        for _ in 0..4 {
            l.attempt(ip(1), t0).unwrap();
        }
        l.attempt(ip(1), t0).unwrap();
        l.succeeded(ip(1));
        for _ in 0..5 {
            l.attempt(ip(1), t0).unwrap();
        }
        assert!(l.attempt(ip(1), t0).is_err());
    }

    #[test]
    fn limiter_global_cap_slows_distributed_guessing() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new();
        for i in 0..30 {
            l.attempt(ip(i), t0 + Duration::from_millis(u64::from(i)))
                .unwrap();
        }
        let wait = l
            .attempt(ip(1000), t0 + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(59));
        // A success forgives its attempt in the global count too.
        l.succeeded(ip(5));
        l.attempt(ip(1000), t0 + Duration::from_secs(1)).unwrap();
        assert!(l.attempt(ip(1001), t0 + Duration::from_secs(1)).is_err());
        // After the window everything is admitted again.
        l.attempt(ip(1001), t0 + Duration::from_secs(61)).unwrap();
    }

    #[test]
    fn limiter_groups_ipv6_by_64_and_maps_v4() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new();
        for i in 0..5u16 {
            let a = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i);
            l.attempt(IpAddr::V6(a), t0).unwrap();
        }
        let other_host_same_64 = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9);
        assert!(l.attempt(IpAddr::V6(other_host_same_64), t0).is_err());
        let other_64 = Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1);
        l.attempt(IpAddr::V6(other_64), t0).unwrap();

        for _ in 0..5 {
            l.attempt(ip(7), t0).unwrap();
        }
        let mapped = match ip(7) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(_) => unreachable!(),
        };
        assert!(l.attempt(mapped, t0).is_err());
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let t0 = Instant::now();
        // Hour after hour of guesses from ever new addresses.
        let mut l = LoginLimiter::new();
        for i in 0..100_000u32 {
            let _ = l.attempt(ip(i), t0 + Duration::from_millis(u64::from(i) * 100));
            assert!(l.tracked_sources() <= 2 * LOGIN_GLOBAL);
        }
        // Even with a generous global cap, the per-source map never passes its cap.
        let mut l = LoginLimiter::with_limits(5, 1_000_000, LOGIN_WINDOW, 100);
        for i in 0..5_000u32 {
            l.attempt(ip(i), t0).unwrap();
            assert!(l.tracked_sources() <= 100);
        }
    }

    #[test]
    fn stdin_password_line() {
        let mut r = io::Cursor::new(b"pass word\r\nsecond line\n".to_vec());
        assert_eq!(read_password_line(&mut r).unwrap(), "pass word");
        let mut r = io::Cursor::new(b"no-newline".to_vec());
        assert_eq!(read_password_line(&mut r).unwrap(), "no-newline");
        let mut r = io::Cursor::new(b"\n".to_vec());
        assert!(matches!(
            read_password_line(&mut r),
            Err(CliError::NoPassword)
        ));
        let mut r = io::Cursor::new(b"\xff\xfe\n".to_vec());
        let not_utf8 = read_password_line(&mut r).unwrap_err();
        assert!(matches!(not_utf8, CliError::PasswordNotUtf8));
        assert!(not_utf8.to_string().contains("UTF-8"));
        // An over-long line is read just far enough to be refused, not silently truncated.
        let mut r = io::Cursor::new(vec![b'a'; 5000]);
        let long = read_password_line(&mut r).unwrap();
        assert!(long.len() > MAX_PASSWORD_BYTES);
        assert!(matches!(
            hash_password(&long),
            Err(AuthError::PasswordTooLong)
        ));
    }

    #[test]
    fn cli_token_commands() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cli_token(dir.path(), TokenCmd::List).unwrap(), "");
        let out = cli_token(dir.path(), TokenCmd::New("backup".into())).unwrap();
        let token = out.trim_end();
        assert!(token.starts_with("mohd_"));
        let s = AuthStore::open(dir.path()).unwrap();
        assert_eq!(s.check_token(token).as_deref(), Some("backup"));
        let list = cli_token(dir.path(), TokenCmd::List).unwrap();
        assert!(list.starts_with("backup\t20"), "{list}");
        assert!(list.ends_with("Z\n"));
        assert!(!list.contains(token));
        assert!(matches!(
            cli_token(dir.path(), TokenCmd::New("backup".into())),
            Err(CliError::Auth(AuthError::TokenExists(_)))
        ));
        let bad = cli_token(dir.path(), TokenCmd::New("bad name".into())).unwrap_err();
        assert!(matches!(bad, CliError::Auth(AuthError::BadTokenName(_))));
        assert!(bad.to_string().contains("invalid token name"), "{bad}");
        assert_eq!(
            cli_token(dir.path(), TokenCmd::Revoke("backup".into())).unwrap(),
            "revoked token backup\n"
        );
        let gone = cli_token(dir.path(), TokenCmd::Revoke("backup".into())).unwrap_err();
        assert!(matches!(&gone, CliError::NoSuchToken(n) if n == "backup"));
        assert_eq!(gone.to_string(), "no token named \"backup\"");
        assert_eq!(cli_token(dir.path(), TokenCmd::List).unwrap(), "");
    }

    #[test]
    fn first_run_hint_only_without_password() {
        let dir = tempfile::tempdir().unwrap();
        let hint = first_run_hint(dir.path()).unwrap();
        assert!(hint.contains("mohd passwd"));
        AuthStore::open(dir.path())
            .unwrap()
            .set_password("long-enough")
            .unwrap();
        assert_eq!(first_run_hint(dir.path()), None);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_790_000_000), "2026-09-21T14:13:20Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
