//! Baby Discord: a chat server with two front doors, a netcat line protocol
//! and an HTTP/SSE API with a web page, onto the same rooms and users. The
//! wire protocols are written up in `docs/protocol.md`.
//!
//! # Modules (who owns what)
//!
//! - [`config`]: start-up configuration and every limit, from the environment.
//! - [`server`]: wires the threads together; start and graceful shutdown.
//! - [`router`]: the router thread, sole owner of chat state (sessions,
//!   nicknames, rooms, memberships, per-room ring buffers and logs of recent
//!   edits and deletions, stream replays, presence and typing signals, the
//!   view of other instances).
//! - [`event`]: what the router delivers to sessions, through each
//!   session's [`event::Sink`].
//! - [`command`]: slash-command parsing and the `/help` table.
//! - [`names`]: nickname, room-name and message-text rules.
//! - [`accounts`]: registered nicknames: password rules, Argon2id on the
//!   hasher thread, the login-attempt limiter, and the login, `/register`
//!   and `/password` procedures the adapters run (never the router).
//! - [`error`]: every user-visible refusal, as one enum.
//! - [`adapters`]: the TCP line protocol and HTTP (API, SSE, WebSocket, page): bytes to
//!   router requests, and each transport's encoder of events into bytes;
//!   [`adapters::writers`] is the delivery layer every transport shares.
//! - [`store`]: the storage interface, SQLite and PostgreSQL behind it, and
//!   the storage thread that group-commits messages.
//! - [`bus`]: Redis pub/sub between instances (publisher and subscriber
//!   threads); the router keeps the view of other instances.
//! - [`metrics`]: counters and histograms for `/metrics`.
//! - [`vital`]: starts the threads whose panic must end the process.
//!
//! # Threads
//!
//! | thread | how many | stack | owns |
//! |---|---|---|---|
//! | `main` | 1 | default | waits for SIGINT/SIGTERM, then [`server::Server::shutdown`] |
//! | `router` (vital) | 1 | default | all chat state ([`router::RouterState`]) |
//! | `storage` (vital) | 1 | default | the open [`store::Store`] and the batch being committed |
//! | `writer-<n>` (vital) | `TCP_WRITER_THREADS` (2) | default | an epoll instance and the outboxes it serves; the only writer to every client socket |
//! | `redis-publisher`, `redis-subscriber` (vital) | 1 each, with `REDIS_URL` | default | the publisher: one Redis connection (a cluster connection on `redis+cluster://`) and the nickname claims this instance holds; the subscriber: one connection to a single Redis, or one to each cluster master (sharded room channels, `src/bus/sharded.rs`), and the rooms this instance listens to |
//! | `tcp-accept` | 1 | default | the TCP listener |
//! | `tcp-client` | 1 per TCP client | `CLIENT_STACK_KB` (64 KiB) | reading its client's socket, the nickname prompt |
//! | `http-worker` | `HTTP_WORKERS` (16) | 256 KiB | one HTTP request at a time (a WebSocket's handshake included: checks, attach, the 101) |
//! | `sse` | 1 per SSE stream | `CLIENT_STACK_KB` (64 KiB) | its stream's life: attach, `: ping`, detach |
//! | `hasher-0` | 1 | 256 KiB | hashing and checking passwords (Argon2id, ~30 ms and 19 MiB each) |
//! | `ws` | 1 per WebSocket | `CLIENT_STACK_KB` (64 KiB) | reading its client's frames into router requests, pings, detach |
//! | tiny_http's | 1 accept + 1 per open HTTP connection | default | reading one request at a time under `HTTP_READ_TIMEOUT_SECS` (head and body up to `MAX_BODY_BYTES`), closing idle connections after `HTTP_IDLE_SECS`; each connection holds a `MAX_CONNECTIONS` place until its socket closes (an event-stream or upgrade request ends its connection's thread; the stream or WebSocket keeps the place) |
//! | `pg-close` | brief, now and then | default | closing a lost PostgreSQL connection without blocking the storage thread |
//!
//! A panic in a vital thread logs and exits the process (status 101) at
//! once; elsewhere it ends only its own client or request.
//!
//! # Channels
//!
//! - adapters → router: [`router::RouterMsg`] requests through a
//!   [`router::RouterHandle`] (bounded); answers come back on a one-shot
//!   channel in the request, or as events in the session's own stream;
//! - storage thread and bus → router: [`router::Completion`]s on a second
//!   inbox (bounded), served before waiting requests (a few at a time);
//! - router → storage thread: appends and store calls through a
//!   [`store::StoreHandle`] (unbounded; the router caps what it queues);
//! - router → bus publisher: events and nickname claims through a
//!   [`bus::BusHandle`] (unbounded);
//! - router → clients: [`event::Event`]s into each session's outbox
//!   ([`adapters::writers::Outbox`], bounded by `OUTBOX_CAPACITY` and
//!   `SENDQ_BYTES`; never blocking), which puts itself on its writer's
//!   ready channel and wakes it.
//!
//! One message's path is one way: adapter → router → storage thread →
//! router → every member's outbox → writer thread → socket.

pub mod accounts;
pub mod adapters;
pub mod bus;
pub mod command;
pub mod config;
pub mod error;
pub mod event;
pub mod metrics;
pub mod names;
pub mod router;
pub mod server;
pub mod store;
pub mod vital;
