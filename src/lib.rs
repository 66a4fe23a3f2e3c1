//! Baby Discord: a chat server with two front doors, a netcat line protocol
//! and an HTTP/SSE API with a web page, onto the same rooms and users.
//!
//! Module map (who owns what):
//!
//! - [`config`]: start-up configuration and every limit, from the environment.
//! - [`server`]: wires the threads together; start and graceful shutdown.
//! - [`router`]: the router thread, sole owner of chat state (sessions,
//!   nicknames, rooms, memberships, per-room ring buffers).
//! - [`event`]: what the router delivers to sessions, through each
//!   session's [`event::Sink`].
//! - [`command`]: slash-command parsing and the `/help` table.
//! - [`names`]: nickname, room-name and message-text rules.
//! - [`error`]: every user-visible refusal, as one enum.
//! - [`adapters`]: TCP and HTTP; bytes to router requests, events to bytes.
//! - [`store`]: the storage interface, SQLite and PostgreSQL behind it, and
//!   the storage thread that group-commits messages.
//! - [`bus`]: Redis pub/sub between instances (publisher and subscriber
//!   threads); the router keeps the view of other instances.
//! - [`metrics`]: counters and histograms for `/metrics`.
//!
//! Threads: one router, one storage thread, one accept thread per listener,
//! and per TCP client a reader and a writer thread with small stacks.

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
