//! Wires the parts together: store, storage thread, router, listeners.
//!
//! [`Server::start`] is what `main` runs and what the integration tests run
//! (on port 0, with a temporary `DATA_DIR`); [`Server::shutdown`] is the
//! graceful stop on SIGINT/SIGTERM: no new connections, every client told,
//! the store flushed.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::adapters::http::{self, HttpContext, HttpServer};
use crate::adapters::tcp::{self, TcpContext};
use crate::adapters::writers::Writers;
use crate::adapters::ConnectionLimit;
use crate::bus::{self, BusHealth};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::{Completion, Router, RouterHandle, RouterMsg, RouterSettings};
use crate::store::{self, worker, StoreHandle};

/// A running server.
pub struct Server {
    pub tcp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub router: RouterHandle,
    pub store: StoreHandle,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<ConnectionLimit>,
    /// Health of the Redis bus; `None` for a single instance.
    pub bus_health: Option<Arc<BusHealth>>,
    stopping: Arc<AtomicBool>,
    router_thread: JoinHandle<()>,
    storage_thread: JoinHandle<()>,
    listener_threads: Vec<(SocketAddr, JoinHandle<()>)>,
    http: HttpServer,
}

/// How long shutdown waits for client writers to flush their last lines.
const CLIENT_FLUSH_GRACE: Duration = Duration::from_secs(2);

impl Server {
    /// Opens the store, rebuilds the ring buffers from it, starts the
    /// threads and binds the listeners. Errors are one readable sentence.
    pub fn start(config: &Config) -> Result<Server, String> {
        let mut store = store::open(config)?;
        log::info!("store: {}", store.describe());
        let mut rooms = Vec::new();
        for room in store.rooms().map_err(|e| format!("cannot read rooms from the store: {e}"))? {
            let history = store
                .messages_before(room.id, None, config.history_size)
                .map_err(|e| format!("cannot read the history of room {}: {e}", room.name))?;
            rooms.push((room, history));
        }
        log::info!("loaded {} rooms", rooms.len());
        let private_rooms = store.private_rooms().map_err(|e| format!("cannot read private rooms from the store: {e}"))?;

        let metrics = Arc::new(Metrics::default());
        let inboxes = Router::inboxes();
        let committed = inboxes.completions();
        let (store, storage_thread) =
            worker::spawn(store, config.limits.store_batch_max, metrics.clone(), move |results| {
                let _ = committed.send(Completion::Committed(results));
            });
        let (bus, bus_health) = match &config.redis_url {
            Some(url) => {
                let names = bus::Names { prefix: config.redis_prefix.clone(), instance: config.instance_id.clone() };
                let (events, claims) = (inboxes.completions(), inboxes.completions());
                let (handle, health) = bus::start(
                    url,
                    names,
                    metrics.clone(),
                    move |incoming| {
                        let _ = events.send(Completion::Bus(incoming));
                    },
                    move |claim| {
                        let _ = claims.send(Completion::Claimed(claim));
                    },
                )?;
                log::info!("multi-instance mode: Redis bus under prefix {}", config.redis_prefix);
                (Some(handle), Some(health))
            }
            None => (None, None),
        };
        let mut router =
            Router::new(RouterSettings::from_config(config), store.clone(), metrics.clone(), rooms, inboxes, bus);
        router.set_private_rooms(private_rooms);
        let handle = router.handle();
        let router_thread = router.spawn();

        let connections = ConnectionLimit::new(config.limits.max_connections);
        let stopping = Arc::new(AtomicBool::new(false));
        let tcp_listener = crate::adapters::listen((config.bind_addr, config.tcp_port).into())
            .map_err(|e| format!("cannot listen on TCP_PORT {} at BIND_ADDR {}: {e}", config.tcp_port, config.bind_addr))?;
        let tcp_addr = tcp_listener.local_addr().map_err(|e| e.to_string())?;
        let writers = Arc::new(
            Writers::start(config.limits.tcp_writer_threads, config.limits.write_timeout)
                .map_err(|e| format!("cannot start the writer threads: {e}"))?,
        );
        let accounts = crate::accounts::Accounts::new(
            store.clone(),
            handle.clone(),
            config.limits.login_attempts,
            config.limits.session_ttl,
        );
        let tcp_ctx = TcpContext {
            accounts: accounts.clone(),
            writers: writers.clone(),
            router: handle.clone(),
            limits: config.limits.clone(),
            metrics: metrics.clone(),
            connections: connections.clone(),
            stopping: stopping.clone(),
        };
        let tcp_thread = tcp::spawn_listener(tcp_listener, tcp_ctx);
        log::info!("TCP line protocol on {tcp_addr} (try: nc {} {})", tcp_addr.ip(), tcp_addr.port());

        let (http_listener, http_addr) = http::bind(SocketAddr::new(config.bind_addr, config.http_port))?;
        let mut http_ctx = HttpContext::new(
            handle.clone(),
            store.clone(),
            config.limits.clone(),
            metrics.clone(),
            connections.clone(),
            config.instance_id.clone(),
            writers,
        );
        http_ctx.redis = bus_health.clone();
        http_ctx.accounts = Some(accounts);
        let http = HttpServer::start(http_listener, config.limits.http_workers, http_ctx)?;
        log::info!("HTTP API and web page on http://{http_addr}/");

        Ok(Server {
            tcp_addr,
            http_addr,
            router: handle,
            store,
            metrics,
            connections,
            bus_health,
            stopping,
            router_thread,
            storage_thread,
            listener_threads: vec![(tcp_addr, tcp_thread)],
            http,
        })
    }

    /// Graceful stop: no new connections, pending messages committed and
    /// delivered, every client told, the store flushed and closed.
    pub fn shutdown(self) {
        log::info!("shutting down");
        self.stopping.store(true, Ordering::Release);
        for (addr, thread) in self.listener_threads {
            // A blocked accept() only returns for a connection: make one.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            let _ = thread.join();
        }
        // Requests in hand are answered (a message being sent is committed
        // first); open streams end below, when the router closes every session.
        self.http.stop();
        self.router.send(RouterMsg::Shutdown);
        let _ = self.router_thread.join();
        self.store.stop();
        let _ = self.storage_thread.join();
        let deadline = Instant::now() + CLIENT_FLUSH_GRACE;
        while self.connections.open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        log::info!("shutdown complete");
    }
}
