//! Accounts: registered nicknames with a password.
//!
//! Everything slow or secret about accounts lives here and runs on adapter
//! threads (a TCP client's reader, an HTTP worker) or on the hasher threads,
//! never on the router thread:
//! - [`Secret`]: a password as typed, which never prints;
//! - [`validate_password`]: the password rules;
//! - [`Hasher`]: Argon2id hashing and verification on a small pool of
//!   threads of its own (a hash costs tens of milliseconds of CPU and
//!   19 MiB of memory), so a login storm queues there and nowhere else;
//! - [`LoginLimiter`]: login attempts per nickname and per client address;
//! - [`Accounts`]: the login, `/register` and `/password` procedures the
//!   adapters share, which check passwords against the store (the authority
//!   for registered names) and then tell the router.
//!
//! Passwords are never logged, stored, echoed or counted in metrics: only
//! their Argon2id hashes reach the store. HTTP session tokens of registered
//! users are stored as SHA-256 hashes ([`token_hash`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use crossbeam_channel::{Sender, TrySendError};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ChatError;
use crate::names::{name_key, validate_nickname};
use crate::router::{Identity, Outcome, Reply, RouterHandle, RouterMsg, SessionRef};
use crate::store::{Account, StoreHandle};

/// A password as the user typed it. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: &str) -> Secret {
        Secret(text.to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// The rules for a new password: 8 to 128 characters, none of them control
/// or invisible formatting characters (they could not be typed back).
pub fn validate_password(password: &Secret) -> Result<(), ChatError> {
    let text = password.expose();
    let chars = text.chars().count();
    if chars < PASSWORD_MIN_CHARS {
        return Err(ChatError::InvalidPassword("it must be at least 8 characters long."));
    }
    if chars > PASSWORD_MAX_CHARS {
        return Err(ChatError::InvalidPassword("it must be at most 128 characters long."));
    }
    if text.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(ChatError::InvalidPassword("it must not contain control or invisible characters."));
    }
    Ok(())
}

/// Bidirectional controls and invisible formatting characters.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The stored form of an HTTP session token: its SHA-256, in hex.
pub fn token_hash(token: &Uuid) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Work for the hasher threads.
enum HashJob {
    Hash { password: Secret, reply: Sender<Result<String, String>> },
    Verify { password: Secret, hash: String, reply: Sender<bool> },
}

/// Argon2id (the `argon2` crate's defaults: m = 19 MiB, t = 2, p = 1) on
/// a pool of its own threads.
#[derive(Clone)]
pub struct Hasher {
    jobs: Sender<HashJob>,
}

/// Password checks that may wait for a hasher thread; more are refused
/// (`AuthBusy`) rather than queued without bound.
const HASH_QUEUE: usize = 256;
const HASHER_STACK_BYTES: usize = 256 * 1024;

impl Hasher {
    pub fn start(threads: usize) -> Hasher {
        let (jobs, rx) = crossbeam_channel::bounded::<HashJob>(HASH_QUEUE);
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("hasher-{n}"))
                .stack_size(HASHER_STACK_BYTES)
                .spawn(move || {
                    for job in rx {
                        match job {
                            HashJob::Hash { password, reply } => {
                                let _ = reply.send(hash_now(&password));
                            }
                            HashJob::Verify { password, hash, reply } => {
                                let _ = reply.send(verify_now(&password, &hash));
                            }
                        }
                    }
                })
                .expect("spawn a hasher thread");
        }
        Hasher { jobs }
    }

    fn submit<T>(&self, build: impl FnOnce(Sender<T>) -> HashJob) -> Result<T, ChatError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        match self.jobs.try_send(build(tx)) {
            Ok(()) => rx.recv().map_err(|_| ChatError::ShuttingDown),
            Err(TrySendError::Full(_)) => Err(ChatError::AuthBusy),
            Err(TrySendError::Disconnected(_)) => Err(ChatError::ShuttingDown),
        }
    }

    /// The Argon2id PHC string of a password, with a fresh random salt.
    pub fn hash(&self, password: &Secret) -> Result<String, ChatError> {
        let password = password.clone();
        self.submit(|reply| HashJob::Hash { password, reply })?.map_err(|why| {
            log::error!("cannot hash a password: {why}");
            ChatError::AuthBusy
        })
    }

    /// Whether `password` matches a stored hash.
    pub fn verify(&self, password: &Secret, hash: &str) -> Result<bool, ChatError> {
        let (password, hash) = (password.clone(), hash.to_string());
        self.submit(|reply| HashJob::Verify { password, hash, reply })
    }
}

fn hash_now(password: &Secret) -> Result<String, String> {
    // 16 random bytes of salt from the operating system (through uuid's v4).
    let salt = SaltString::encode_b64(Uuid::new_v4().as_bytes()).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.expose().as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

fn verify_now(password: &Secret, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok(),
        Err(e) => {
            log::error!("a stored password hash cannot be read: {e}");
            false
        }
    }
}

/// Login attempts per key (a nickname, a client address) within a sliding
/// minute. An attempt counts from the moment it starts; a successful one is
/// given back, so only failures (and attempts in flight) use up the limit.
pub struct LoginLimiter {
    per_minute: u32,
    window: Duration,
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// An attempt under way; [`Attempt::succeeded`] gives it back.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    keys: Vec<String>,
    at: Instant,
}

impl Attempt<'_> {
    pub fn succeeded(self) {
        let mut attempts = self.limiter.attempts.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(times) = attempts.get_mut(key) {
                if let Some(pos) = times.iter().rposition(|t| *t == self.at) {
                    times.remove(pos);
                }
            }
        }
    }
}

impl LoginLimiter {
    /// `per_minute` 0 disables the limit.
    pub fn new(per_minute: u32) -> LoginLimiter {
        LoginLimiter { per_minute, window: Duration::from_secs(60), attempts: Mutex::new(HashMap::new()) }
    }

    /// Starts an attempt for every key, or says how long to wait.
    pub fn begin(&self, keys: Vec<String>) -> Result<Attempt<'_>, ChatError> {
        let now = Instant::now();
        if self.per_minute == 0 {
            return Ok(Attempt { limiter: self, keys: Vec::new(), at: now });
        }
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if attempts.len() > 10_000 {
            let window = self.window;
            attempts.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let mut wait = Duration::ZERO;
        for key in &keys {
            let times = attempts.entry(key.clone()).or_default();
            while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                times.pop_front();
            }
            if times.len() >= self.per_minute as usize {
                let oldest = *times.front().expect("full");
                wait = wait.max(self.window.saturating_sub(now.duration_since(oldest)));
            }
        }
        if !wait.is_zero() {
            return Err(ChatError::TooManyLoginAttempts { secs: wait.as_secs_f64().ceil().max(1.0) as u64 });
        }
        for key in &keys {
            attempts.entry(key.clone()).or_default().push_back(now);
        }
        Ok(Attempt { limiter: self, keys, at: now })
    }
}

/// The account procedures the adapters share.
pub struct Accounts {
    pub hasher: Hasher,
    pub limiter: LoginLimiter,
    pub store: StoreHandle,
    pub router: RouterHandle,
    /// How long a registered user's HTTP session lasts (`SESSION_TTL_DAYS`).
    pub session_ttl: Duration,
}

fn unavailable(e: crate::store::StoreError) -> ChatError {
    log::warn!("account lookup failed: {e}");
    ChatError::StoreUnavailable
}

impl Accounts {
    pub fn new(store: StoreHandle, router: RouterHandle, login_attempts: u32, session_ttl: Duration) -> Arc<Accounts> {
        Arc::new(Accounts { hasher: Hasher::start(1), limiter: LoginLimiter::new(login_attempts), store, router, session_ttl })
    }

    /// Checks a nickname's password, within the attempt limits.
    pub fn authenticate(&self, nickname: &str, password: &Secret, peer: Option<IpAddr>) -> Result<Account, ChatError> {
        validate_nickname(nickname)?;
        let mut keys = vec![format!("n:{}", name_key(nickname))];
        if let Some(peer) = peer {
            keys.push(format!("a:{peer}"));
        }
        let attempt = self.limiter.begin(keys)?;
        let key = nickname.to_string();
        let account = self.store.query(move |store| store.account(&key)).map_err(unavailable)?;
        let Some(account) = account else {
            return Err(ChatError::NoAccount(nickname.to_string()));
        };
        if !self.hasher.verify(password, &account.password_hash)? {
            log::info!("failed login for {}", account.nickname);
            return Err(ChatError::WrongPassword(account.nickname));
        }
        attempt.succeeded();
        Ok(account)
    }

    /// Logs a session in to an account (a new session at the prompt, or
    /// `/login` in a named one). With `missed_dms`, the answer carries the
    /// block of DMs that reached the account while it was offline, which
    /// then count as seen (text clients show it after the welcome).
    pub fn login(&self, session: SessionRef, nickname: &str, password: &Secret, peer: Option<IpAddr>, missed_dms: bool) -> Outcome {
        let account = self.authenticate(nickname, password, peer)?;
        self.router.call(|reply| RouterMsg::LoginAccount {
            session,
            user_id: account.user_id,
            nickname: account.nickname,
            missed_dms,
            reply,
        })
    }

    /// `/register <password>`: the session's guest nickname becomes an account.
    pub fn register(&self, session: SessionRef, password: &Secret) -> Outcome {
        validate_password(password)?;
        match self.identity(session)? {
            Identity { registered: true, nickname, .. } => return Err(ChatError::AlreadyRegistered(nickname)),
            Identity { nickname, .. } if nickname.is_empty() => return Err(ChatError::NoNickname),
            _ => {}
        }
        let password_hash = self.hasher.hash(password)?;
        self.router.call(|reply| RouterMsg::Register { session, password_hash, reply })
    }

    /// `/password <old> <new>`.
    pub fn change_password(&self, session: SessionRef, old: &Secret, new: &Secret, peer: Option<IpAddr>) -> Outcome {
        let identity = self.identity(session)?;
        if !identity.registered {
            return Err(ChatError::NotRegistered);
        }
        validate_password(new)?;
        self.authenticate(&identity.nickname, old, peer)?;
        let hash = self.hasher.hash(new)?;
        let user_id = identity.user_id;
        self.store.query(move |store| store.set_password(user_id, &hash)).map_err(unavailable)?;
        log::info!("{} changed their password", identity.nickname);
        Ok(Reply::Text("Password changed.".into()))
    }

    /// `/login` as a command: the welcome, then any DMs missed meanwhile.
    pub fn login_command(&self, session: SessionRef, nick: &str, password: &Secret, peer: Option<IpAddr>) -> Outcome {
        match self.login(session, nick, password, peer, true)? {
            Reply::LoggedIn { nickname, missed_dms, .. } | Reply::Welcomed { nickname, missed_dms, .. } => {
                let mut text = format!("Welcome back, {nickname}!");
                if let Some(block) = missed_dms {
                    text.push('\n');
                    text.push_str(&block);
                }
                Ok(Reply::Text(text))
            }
            other => Ok(other),
        }
    }

    fn identity(&self, session: SessionRef) -> Result<Identity, ChatError> {
        self.router.identity(session)?.ok_or(ChatError::UnknownSession)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_follow_the_rules() {
        assert!(validate_password(&Secret::new("hunter22hunter")).is_ok());
        assert!(validate_password(&Secret::new("short")).is_err());
        assert!(validate_password(&Secret::new(&"x".repeat(129))).is_err());
        assert!(validate_password(&Secret::new(&"é".repeat(128))).is_ok());
        assert!(validate_password(&Secret::new("abc\u{7}defgh")).is_err());
        assert!(validate_password(&Secret::new("abc\u{200b}defgh")).is_err());
    }

    #[test]
    fn hashes_verify_and_never_contain_the_password() {
        let hasher = Hasher::start(1);
        let password = Secret::new("hunter22hunter");
        let hash = hasher.hash(&password).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("hunter22"));
        assert!(hasher.verify(&password, &hash).unwrap());
        assert!(!hasher.verify(&Secret::new("hunter22hunteR"), &hash).unwrap());
        assert_ne!(hasher.hash(&password).unwrap(), hash, "salted");
        let started = std::time::Instant::now();
        for _ in 0..5 {
            hasher.verify(&password, &hash).unwrap();
        }
        println!("one Argon2id verification: {:?}", started.elapsed() / 5);
    }

    #[test]
    fn the_limiter_counts_failures_per_key() {
        let limiter = LoginLimiter::new(2);
        limiter.begin(vec!["n:alice".into()]).unwrap();
        limiter.begin(vec!["n:alice".into()]).unwrap().succeeded();
        limiter.begin(vec!["n:alice".into()]).unwrap();
        match limiter.begin(vec!["n:alice".into()]) {
            Err(ChatError::TooManyLoginAttempts { secs }) => assert!((59..=60).contains(&secs)),
            _ => panic!("the third failure is refused"),
        }
        assert!(limiter.begin(vec!["n:bob".into()]).is_ok());
        assert!(LoginLimiter::new(0).begin(vec!["n:alice".into()]).is_ok());
    }
}
