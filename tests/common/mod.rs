//! Test harness: the real `baby-discord` binary on port 0 with its own data
//! directory (or its own PostgreSQL database), and clients that talk to it
//! over real sockets the way netcat and a browser do.
//!
//! Tests that should hold for every store are written once inside
//! [`for_each_store!`], which makes one test per store.

#![allow(dead_code)]

pub mod proxy;
pub mod tcp;
pub mod webdriver;
pub mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use tcp::Client;

/// Which store a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// Writes each test once per store: `mod sqlite { #[test] fn … }` and
/// `mod postgres { … }`, with `$store` bound to the store in the body.
#[macro_export]
macro_rules! for_each_store {
    ($( $(#[$meta:meta])* fn $name:ident($store:ident) $body:block )*) => {
        mod sqlite {
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $store = $crate::common::Store::Sqlite; $body } )*
        }
        mod postgres {
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $store = $crate::common::Store::Postgres; $body } )*
        }
    };
}

/// How long a test waits for anything the server should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL database that exists for one test and is dropped after it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn create() -> TestDatabase {
        let name = unique_name("bd_test");
        let mut admin = postgres::Client::connect(ADMIN_URL, postgres::NoTls)
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see .ci/run)");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        TestDatabase { url: format!("postgres://postgres@127.0.0.1:5432/{name}"), name }
    }

    /// Runs SQL on an admin connection (e.g. `pg_terminate_backend`).
    pub fn admin(&self, sql: &str) {
        let mut admin = postgres::Client::connect(ADMIN_URL, postgres::NoTls).unwrap();
        admin.batch_execute(sql).unwrap();
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(ADMIN_URL, postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// Settings for a server a test starts.
pub struct ServerBuilder {
    store: Store,
    env: HashMap<String, String>,
}

/// Names unique to this test process and moment, for databases and prefixes.
pub fn unique_name(kind: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{kind}_{}_{nanos}_{n}", std::process::id())
}

impl ServerBuilder {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    pub fn start(self) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        // A DATABASE_URL given by the test (a cluster's shared database) wins.
        let owns_database = self.store == Store::Postgres && !self.env.contains_key("DATABASE_URL");
        let database = owns_database.then(TestDatabase::create);
        let mut server = TestServer {
            child: None,
            tcp: "0.0.0.0:0".parse().unwrap(),
            http: None,
            env: self.env,
            logs: Arc::new(Mutex::new(Vec::new())),
            database,
            data_dir,
        };
        server.launch();
        server
    }
}

/// A running server process.
pub struct TestServer {
    child: Option<Child>,
    pub tcp: SocketAddr,
    pub http: Option<SocketAddr>,
    env: HashMap<String, String>,
    logs: Arc<Mutex<Vec<String>>>,
    pub database: Option<TestDatabase>,
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    pub fn builder(store: Store) -> ServerBuilder {
        ServerBuilder { store, env: HashMap::new() }
    }

    pub fn start(store: Store) -> TestServer {
        TestServer::builder(store).start()
    }

    /// Starts the binary with this server's environment and waits until it
    /// says where it listens.
    fn launch(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baby-discord"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TCP_PORT", "0")
            .env("HTTP_PORT", "0")
            .env("LOG_LEVEL", "info")
            .env("DATA_DIR", self.data_dir.path());
        if let Some(db) = &self.database {
            cmd.env("DATABASE_URL", &db.url);
        }
        cmd.envs(&self.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start baby-discord");
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (tx, logs) = (tx.clone(), self.logs.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        self.child = Some(child);
        self.http = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tcp = None;
        // Listeners log their addresses before `main` logs "ready".
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(remaining) else {
                panic!("server did not start; log:\n{}", self.log());
            };
            if let Some(rest) = line.split("TCP line protocol on ").nth(1) {
                tcp = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.split(" on http://").nth(1) {
                self.http = Some(rest.trim_end_matches('/').split('/').next().unwrap().parse().unwrap());
            }
            if line.ends_with(" ready") {
                break;
            }
        }
        self.tcp = tcp.expect("the server logs its TCP address");
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A logged-in netcat-style client.
    pub fn login(&self, nick: &str) -> Client {
        Client::login(self.tcp, nick)
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.tcp)
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same store (after kill9/terminate).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.launch();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the binary with `env` and returns its exit status and output, for
/// start-up failures.
pub fn run_to_exit(env: &[(&str, &str)]) -> (ExitStatus, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baby-discord"))
        .env_clear()
        .env("DATA_DIR", data_dir.path())
        .env("TCP_PORT", "0")
        .env("HTTP_PORT", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// Several instances sharing one PostgreSQL database and one Redis, under a
/// Redis prefix of their own.
pub struct Cluster {
    // Declared first so the servers stop before their database is dropped.
    pub servers: Vec<TestServer>,
    pub database: TestDatabase,
    pub prefix: String,
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Which Redis a cluster of instances shares: the single Redis on 6379, or
/// the local Redis Cluster `.ci/run` starts (`REDIS_CLUSTER_URL`, default
/// nodes 7001-7003).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redis {
    Single,
    Cluster,
}

/// The ports of the shared local Redis Cluster's nodes.
pub const REDIS_CLUSTER_PORTS: [u16; 6] = [7001, 7002, 7003, 7004, 7005, 7006];

impl Redis {
    pub fn url(self) -> String {
        match self {
            Redis::Single => REDIS_URL.to_string(),
            Redis::Cluster => std::env::var("REDIS_CLUSTER_URL")
                .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".to_string()),
        }
    }

    /// Runs a Redis command through redis-cli (following a cluster's
    /// redirections) and returns its output.
    pub fn cli(self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        match self {
            Redis::Single => cmd.args(["-h", "127.0.0.1", "-p", "6379"]),
            Redis::Cluster => cmd.args(["-c", "-h", "127.0.0.1", "-p", "7001"]),
        };
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many connections subscribe to a room channel (sharded ones on a
    /// cluster, counted over every node).
    pub fn subscribers(self, channel: &str) -> usize {
        let count = |port: u16, verb: &str| {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PUBSUB", verb, channel])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|n| n.trim().parse::<usize>().ok()).unwrap_or(0)
        };
        match self {
            Redis::Single => count(6379, "NUMSUB"),
            Redis::Cluster => REDIS_CLUSTER_PORTS.iter().map(|p| count(*p, "SHARDNUMSUB")).sum(),
        }
    }
}

/// Writes each multi-instance test once per Redis: `mod single_redis` and
/// `mod redis_cluster`, each calling `fn name(redis: Redis)`.
#[macro_export]
macro_rules! for_each_redis {
    ($($name:ident),* $(,)?) => {
        mod single_redis {
            $( #[test] fn $name() { super::$name($crate::common::Redis::Single) } )*
        }
        mod redis_cluster {
            $( #[test] fn $name() { super::$name($crate::common::Redis::Cluster) } )*
        }
    };
}

impl Cluster {
    pub fn start(instances: usize) -> Cluster {
        Cluster::start_with(instances, |builder| builder)
    }

    /// Starts the instances at the same moment (migrations race on purpose).
    pub fn start_with(instances: usize, configure: impl Fn(ServerBuilder) -> ServerBuilder + Sync) -> Cluster {
        Cluster::start_on(Redis::Single, instances, configure)
    }

    /// Starts the instances on the given Redis.
    pub fn start_on(redis: Redis, instances: usize, configure: impl Fn(ServerBuilder) -> ServerBuilder + Sync) -> Cluster {
        let database = TestDatabase::create();
        let prefix = unique_name("bdtest");
        let url = redis.url();
        let servers = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..=instances)
                .map(|i| {
                    let builder = Cluster::builder(&database, &prefix, i).env("REDIS_URL", &url);
                    let configure = &configure;
                    scope.spawn(move || configure(builder).start())
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("instance started")).collect()
        });
        Cluster { servers, database, prefix }
    }

    fn builder(database: &TestDatabase, prefix: &str, instance: usize) -> ServerBuilder {
        TestServer::builder(Store::Postgres)
            .env("DATABASE_URL", &database.url)
            .env("REDIS_URL", REDIS_URL)
            .env("REDIS_PREFIX", prefix)
            .env("INSTANCE_ID", format!("i{instance}"))
    }

    /// Runs a Redis command (through redis-cli) and returns its output.
    pub fn redis(args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", "6379"]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills this cluster's Redis pub/sub connections (and only those).
    pub fn kill_subscriptions(&self) -> usize {
        let list = Cluster::redis(&["CLIENT", "LIST", "TYPE", "pubsub"]);
        let ours: Vec<String> = list
            .lines()
            .filter(|line| line.contains(&format!("name={}-", self.prefix)))
            .filter_map(|line| line.split_whitespace().find_map(|f| f.strip_prefix("id=")).map(str::to_string))
            .collect();
        for id in &ours {
            Cluster::redis(&["CLIENT", "KILL", "ID", id]);
        }
        ours.len()
    }
}

/// `GET path` over a fresh connection; returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an HTTP answer");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// One JSON request over a fresh connection (`Connection: close`): the
/// status and the body as JSON (`Null` if it is not JSON).
pub fn http_json(addr: SocketAddr, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// A Redis Cluster of this test's own (three masters, one replica each, a
/// short node timeout so a replica takes over within seconds), for tests
/// that kill or stop nodes. Its processes end with it.
pub struct OwnRedisCluster {
    pub ports: Vec<u16>,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A port that is free, with its cluster bus port (+10000) free too.
fn free_cluster_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl OwnRedisCluster {
    pub fn start() -> OwnRedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..6).map(|_| free_cluster_port()).collect();
        let mut cluster = OwnRedisCluster { ports: ports.clone(), nodes: Vec::new(), _dir: dir };
        for port in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf"), "--cluster-node-timeout", "1000"])
                // A replica may take over even if it has just started syncing.
                .args(["--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(cluster._dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            cluster.nodes.push(child);
        }
        for port in &ports {
            cluster.wait_for(*port, "PING", "PONG");
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "could not create the test's Redis Cluster");
        for port in &ports {
            cluster.wait_for(*port, "CLUSTER INFO", "cluster_state:ok");
        }
        cluster
    }

    fn cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    fn wait_for(&self, port: u16, command: &str, expected: &str) {
        let started = Instant::now();
        let args: Vec<&str> = command.split(' ').collect();
        while !OwnRedisCluster::cli(port, &args).contains(expected) {
            assert!(started.elapsed() < Duration::from_secs(30), "node {port}: no {expected}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The port of the master serving a channel's (or key's) slot now.
    pub fn master_of(&self, channel: &str) -> u16 {
        let slot = redis::cluster_routing::get_slot(channel.as_bytes());
        let alive = self.ports.iter().copied().find(|p| OwnRedisCluster::cli(*p, &["PING"]).contains("PONG")).unwrap();
        let nodes = OwnRedisCluster::cli(alive, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if (s..=e).contains(&slot))
            });
            if owns {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }

    fn node(&mut self, port: u16) -> &mut Child {
        let i = self.ports.iter().position(|p| *p == port).expect("a node of this cluster");
        &mut self.nodes[i]
    }

    /// `kill -9` one node.
    pub fn kill(&mut self, port: u16) {
        let node = self.node(port);
        let _ = node.kill();
        let _ = node.wait();
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) every node still running.
    pub fn pause_all(&mut self, paused: bool) {
        for node in &mut self.nodes {
            if let Ok(None) = node.try_wait() {
                unsafe { libc::kill(node.id() as i32, if paused { libc::SIGSTOP } else { libc::SIGCONT }) };
            }
        }
    }

    /// Waits until every live node says the cluster is ok.
    pub fn wait_ok(&self) {
        for (port, node) in self.ports.iter().zip(&self.nodes) {
            let _ = node;
            if OwnRedisCluster::cli(*port, &["PING"]).contains("PONG") {
                self.wait_for(*port, "CLUSTER INFO", "cluster_state:ok");
            }
        }
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            unsafe { libc::kill(node.id() as i32, libc::SIGCONT) };
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}
