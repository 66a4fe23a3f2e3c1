//! Start-up configuration, read once from environment variables.
//!
//! Every limit of the server lives here with its default, so the README's
//! configuration table and this file tell the same story. A value that does
//! not parse, or is out of range, is a start-up error naming the variable:
//! never a silent fallback to the default.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Everything the server needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Names this instance in logs, `/api/health` and cross-instance messages.
    pub instance_id: String,
    /// TCP line protocol port (0 picks a free port; tests use that).
    pub tcp_port: u16,
    /// HTTP API and web page port (0 picks a free port).
    pub http_port: u16,
    pub bind_addr: IpAddr,
    /// `None` selects the embedded SQLite store under `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// `None` runs a single instance with in-process delivery only.
    pub redis_url: Option<String>,
    /// Prefix of every Redis channel and key this service uses.
    pub redis_prefix: String,
    pub log_level: log::LevelFilter,
    /// Messages kept per room in memory and shown on join.
    pub history_size: usize,
    /// Joins and leaves are announced only in rooms with at most this many members.
    pub announce_limit: usize,
    /// Edits and deletions kept per room in memory for streams that resume.
    pub change_log_size: usize,
    pub limits: Limits,
}

/// Limits on what one client may do or cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest TCP line in bytes, without its line ending.
    pub max_line_bytes: usize,
    /// Longest chat message in characters (after control characters are removed).
    pub max_message_chars: usize,
    /// Time a new TCP connection has to choose a nickname.
    pub nick_timeout: Duration,
    /// Messages per second per session; 0 disables rate limiting.
    pub msg_rate: u32,
    /// Messages a session may send at once before the rate applies.
    pub msg_burst: u32,
    /// Open client connections (TCP and HTTP together) before new ones are refused.
    pub max_connections: usize,
    /// Events queued for one session before it counts as too slow and is dropped.
    pub outbox_capacity: usize,
    /// Bytes queued for one session (waiting, or encoded and not yet taken
    /// by its socket) before it counts as too slow and is dropped.
    pub sendq_bytes: usize,
    /// How long a client's socket may stay full (the client not reading)
    /// before the client is given up.
    pub write_timeout: Duration,
    /// HTTP sessions with no stream and no request for this long are ended.
    pub session_idle: Duration,
    /// Stack size of each per-client thread (a TCP client's reader, an SSE
    /// stream's thread).
    pub client_stack_bytes: usize,
    /// Writer threads that send every client its output (TCP and SSE).
    pub tcp_writer_threads: usize,
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Largest total size of HTTP request headers.
    pub max_header_bytes: usize,
    /// Longest search text and most words in it (`/search`, the search endpoint).
    pub search: crate::store::search::SearchLimits,
    /// Interval of the `: ping` comment on an SSE stream; a write that
    /// fails is also how the writer pool notices a client has gone.
    pub sse_ping: Duration,
    /// An HTTP request head, and a body up to `max_body_bytes`, must arrive
    /// within this (from its first byte), else 408 and the connection closes.
    pub http_read_timeout: Duration,
    /// A keep-alive HTTP connection with no new request for this long closes.
    pub http_idle: Duration,
    /// Threads answering ordinary HTTP requests (streams have their own).
    /// A `POST /api/message` holds one until its message is committed.
    pub http_workers: usize,
    /// Most messages committed in one store transaction.
    pub store_batch_max: usize,
    /// Messages waiting for the store before new ones are refused as "busy".
    pub store_queue_max: usize,
    /// Failed login attempts per minute, per nickname and per client
    /// address; 0 disables the limit.
    pub login_attempts: u32,
    /// How long a registered user's HTTP session lasts (`SESSION_TTL_DAYS`).
    pub session_ttl: Duration,
    /// Web origins (`scheme://host[:port]`, lower case) besides the server's
    /// own whose pages may open a WebSocket (`ALLOWED_ORIGINS`).
    pub allowed_origins: Vec<String>,
    /// Longest away message (`/away <message>`) in characters.
    pub max_away_chars: usize,
    /// Typing signals of one session closer together than this are answered
    /// but not passed on (`TYPING_INTERVAL_MS`).
    pub typing_interval: Duration,
}

impl Limits {
    /// The bounds of one client's outbound queue.
    pub fn queue_limits(&self) -> crate::adapters::writers::QueueLimits {
        crate::adapters::writers::QueueLimits { events: self.outbox_capacity, bytes: self.sendq_bytes }
    }
}

/// A configuration value that could not be used; names the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Reads the configuration from a variable map (the environment, or a test's).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let env = Env(vars);
        let instance_id = env.string("INSTANCE_ID", "1");
        if instance_id.is_empty()
            || instance_id.len() > 32
            || !instance_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(env.error("INSTANCE_ID", "use 1-32 letters, digits, '-' or '_'"));
        }
        let log_level = match env.string("LOG_LEVEL", "info").to_ascii_lowercase().as_str() {
            "off" => log::LevelFilter::Off,
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            _ => return Err(env.error("LOG_LEVEL", "use off, error, warn, info, debug or trace")),
        };
        let redis_prefix = env.string("REDIS_PREFIX", "baby-discord");
        if redis_prefix.is_empty() || redis_prefix.contains(char::is_whitespace) {
            return Err(env.error("REDIS_PREFIX", "must be non-empty and without spaces"));
        }
        let limits = Limits {
            max_line_bytes: env.number("MAX_LINE_BYTES", 4096, 64, 1 << 20)?,
            max_message_chars: env.number("MAX_MESSAGE_CHARS", 2000, 1, 100_000)?,
            nick_timeout: Duration::from_secs(env.number("NICK_TIMEOUT_SECS", 60, 1, 86_400)?),
            msg_rate: env.number("MSG_RATE", 5, 0, 1_000_000)?,
            msg_burst: env.number("MSG_BURST", 10, 1, 1_000_000)?,
            max_connections: env.number("MAX_CONNECTIONS", 10_000, 1, 1_000_000)?,
            outbox_capacity: env.number("OUTBOX_CAPACITY", 1024, 8, 1_000_000)?,
            sendq_bytes: env.number("SENDQ_BYTES", 1 << 20, 16 * 1024, 1 << 30)?,
            write_timeout: Duration::from_secs(env.number("WRITE_TIMEOUT_SECS", 10, 1, 3600)?),
            session_idle: Duration::from_secs(env.number("SESSION_IDLE_SECS", 300, 1, 86_400 * 7)?),
            client_stack_bytes: env.number::<usize>("CLIENT_STACK_KB", 64, 32, 8192)? * 1024,
            tcp_writer_threads: env.number("TCP_WRITER_THREADS", 2, 1, 64)?,
            max_body_bytes: env.number("MAX_BODY_BYTES", 64 * 1024, 1024, 64 << 20)?,
            max_header_bytes: env.number("MAX_HEADER_BYTES", 8 * 1024, 1024, 1 << 20)?,
            search: crate::store::search::SearchLimits {
                max_bytes: env.number("SEARCH_MAX_BYTES", 256, 1, 64 * 1024)?,
                max_words: env.number("SEARCH_MAX_WORDS", 16, 1, 1024)?,
            },
            sse_ping: Duration::from_secs(env.number("SSE_PING_SECS", 15, 1, 3600)?),
            http_read_timeout: Duration::from_secs(env.number("HTTP_READ_TIMEOUT_SECS", 10, 1, 3600)?),
            http_idle: Duration::from_secs(env.number("HTTP_IDLE_SECS", 30, 1, 86_400)?),
            http_workers: env.number("HTTP_WORKERS", 16, 1, 1024)?,
            store_batch_max: env.number("STORE_BATCH_MAX", 512, 1, 100_000)?,
            store_queue_max: env.number("STORE_QUEUE_MAX", 50_000, 1, 10_000_000)?,
            login_attempts: env.number("LOGIN_ATTEMPTS", 5, 0, 1_000_000)?,
            session_ttl: Duration::from_secs(env.number::<u64>("SESSION_TTL_DAYS", 30, 1, 3650)? * 86_400),
            allowed_origins: env.origins("ALLOWED_ORIGINS")?,
            max_away_chars: env.number("MAX_AWAY_CHARS", 200, 1, 10_000)?,
            typing_interval: Duration::from_millis(env.number("TYPING_INTERVAL_MS", 2000, 0, 3_600_000)?),
        };
        let database_url = env.optional("DATABASE_URL");
        let redis_url = env.optional("REDIS_URL");
        if redis_url.is_some() && database_url.is_none() {
            return Err(env.error(
                "REDIS_URL",
                "several instances need one shared store: set DATABASE_URL to a PostgreSQL database too",
            ));
        }
        Ok(Config {
            instance_id,
            tcp_port: env.number("TCP_PORT", 9001, 0, 65535)?,
            http_port: env.number("HTTP_PORT", 3001, 0, 65535)?,
            bind_addr: env.parsed("BIND_ADDR", "127.0.0.1", "an IP address such as 127.0.0.1 or 0.0.0.0")?,
            database_url,
            data_dir: PathBuf::from(env.string("DATA_DIR", "./data")),
            redis_url,
            redis_prefix,
            log_level,
            history_size: env.number("HISTORY_SIZE", 10, 1, 1000)?,
            announce_limit: env.number("ANNOUNCE_LIMIT", 100, 0, 1_000_000)?,
            change_log_size: env.number("CHANGE_LOG_SIZE", 256, 1, 100_000)?,
            limits,
        })
    }

    /// A configuration for tests: ephemeral ports, no rate limit surprises.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let mut config = Config::from_vars(&HashMap::new()).expect("defaults are valid");
        config.tcp_port = 0;
        config.http_port = 0;
        config.data_dir = data_dir;
        config
    }
}

/// Typed access to a variable map, producing errors that name the variable.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    fn optional(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_string())
    }

    fn error(&self, name: &str, problem: &str) -> ConfigError {
        let value = self.0.get(name).map(String::as_str).unwrap_or("");
        ConfigError { variable: name.to_string(), problem: format!("{problem} (got {value:?})") }
    }

    fn parsed<T: FromStr>(&self, name: &str, default: &str, expected: &str) -> Result<T, ConfigError> {
        self.string(name, default).parse().map_err(|_| self.error(name, &format!("expected {expected}")))
    }

    /// A comma-separated list of web origins such as `https://chat.example.com`.
    fn origins(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = self.optional(name) else { return Ok(Vec::new()) };
        let mut origins = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains(['/', ' ', '?', '#'])) {
                return Err(self.error(name, "expected origins like https://chat.example.com, separated by commas"));
            }
            origins.push(origin);
        }
        Ok(origins)
    }

    fn number<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.optional(name) else { return Ok(default) };
        let value: T = raw
            .parse()
            .map_err(|_| self.error(name, &format!("expected a whole number from {min} to {max}")))?;
        if value < min || value > max {
            return Err(self.error(name, &format!("must be from {min} to {max}")));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!((c.tcp_port, c.http_port), (9001, 3001));
        assert_eq!(c.history_size, 10);
        assert_eq!(c.change_log_size, 256);
        assert_eq!(c.limits.max_line_bytes, 4096);
        assert_eq!(c.limits.msg_rate, 5);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.sendq_bytes, 1024 * 1024);
        assert!(c.database_url.is_none() && c.redis_url.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_vars(&vars(&[("TCP_PORT", "ninety")])).unwrap_err();
        assert_eq!(err.variable, "TCP_PORT");
        let err = Config::from_vars(&vars(&[("HISTORY_SIZE", "0")])).unwrap_err();
        assert_eq!(err.variable, "HISTORY_SIZE");
        let err = Config::from_vars(&vars(&[("CHANGE_LOG_SIZE", "0")])).unwrap_err();
        assert_eq!(err.variable, "CHANGE_LOG_SIZE");
        let err = Config::from_vars(&vars(&[("BIND_ADDR", "localhost:1")])).unwrap_err();
        assert_eq!(err.variable, "BIND_ADDR");
        let err = Config::from_vars(&vars(&[("ALLOWED_ORIGINS", "https://a.example, ftp://b")])).unwrap_err();
        assert_eq!(err.variable, "ALLOWED_ORIGINS");
        let c = Config::from_vars(&vars(&[("ALLOWED_ORIGINS", "https://A.example/, http://b:8080")])).unwrap();
        assert_eq!(c.limits.allowed_origins, ["https://a.example", "http://b:8080"]);
        let err = Config::from_vars(&vars(&[("LOG_LEVEL", "loud")])).unwrap_err();
        assert!(err.to_string().contains("LOG_LEVEL"));
    }
}
