//! The storage thread: sole owner of the open [`Store`].
//!
//! Others reach it through a [`StoreHandle`]. Appended messages are
//! committed in batches: the thread takes everything queued (up to
//! `STORE_BATCH_MAX` messages), commits it in one transaction, and hands the
//! results, in order, to the `on_appended` callback (the router's completion inbox).
//! Every other job is a closure run on the thread in arrival order.
//!
//! When the store fails, the thread marks itself unhealthy and pings it
//! with backoff until it answers again; jobs keep being tried (and refused
//! quickly) in the meantime, so nobody waits on an outage. A store that
//! answers pings but refuses writes (a full disk) is unhealthy too: the
//! outcome of the last commit is kept apart from reachability, and only a
//! commit that succeeds clears it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{NewMessage, Store, StoreError};
use crate::event::ChatMessage;
use crate::metrics::Metrics;

/// Anything to run against the store on the storage thread.
type StoreJob = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// A job for the storage thread.
enum Job {
    /// Commit a message; `ticket` comes back with the result.
    Append { ticket: u64, message: NewMessage },
    /// Run anything else against the store.
    Run(StoreJob),
    /// Commit what is queued and end the thread.
    Stop,
}

/// The outcome of one appended message.
pub struct AppendResult {
    pub ticket: u64,
    pub result: Result<Arc<ChatMessage>, StoreError>,
    /// The message was stored before under the same `client_msg_id`; the
    /// result is that earlier message, and nothing new was posted.
    pub duplicate: bool,
}

/// Cloneable access to the storage thread. When the last handle is dropped
/// the thread commits what is queued and ends.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: Sender<Job>,
    health: Arc<Health>,
}

/// What the storage thread knows of the store's health; written only by it.
struct Health {
    /// The store answered the last operation or ping.
    reachable: AtomicBool,
    /// The last commit of messages succeeded (true until one fails).
    writes: AtomicBool,
}

impl StoreHandle {
    /// Queues a message for the next group commit.
    pub fn append(&self, ticket: u64, message: NewMessage) {
        let _ = self.jobs.send(Job::Append { ticket, message });
    }

    /// Runs `job` on the storage thread, after everything queued before it.
    pub fn run(&self, job: impl FnOnce(&mut dyn Store) + Send + 'static) {
        let _ = self.jobs.send(Job::Run(Box::new(job)));
    }

    /// Runs `query` on the storage thread and waits for its answer.
    pub fn query<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.run(move |store| {
            let _ = tx.send(query(store));
        });
        rx.recv().unwrap_or_else(|_| Err(StoreError::Unavailable("the storage thread has stopped".into())))
    }

    /// Asks the thread to commit what is queued and end.
    pub fn stop(&self) {
        let _ = self.jobs.send(Job::Stop);
    }

    /// Whether the store is usable: it answers, and the last commit of
    /// messages succeeded (a store that answers but cannot write is not).
    pub fn is_healthy(&self) -> bool {
        self.health.reachable.load(Ordering::Relaxed) && self.health.writes.load(Ordering::Relaxed)
    }
}

/// Starts the storage thread. `on_appended` receives each committed batch.
pub fn spawn(
    store: Box<dyn Store>,
    batch_max: usize,
    metrics: Arc<Metrics>,
    on_appended: impl FnMut(Vec<AppendResult>) + Send + 'static,
) -> (StoreHandle, JoinHandle<()>) {
    let (jobs, rx) = crossbeam_channel::unbounded();
    let health = Arc::new(Health { reachable: AtomicBool::new(true), writes: AtomicBool::new(true) });
    let worker = Worker { store, rx, health: health.clone(), batch_max, metrics, on_appended };
    let thread = crate::vital::spawn("storage", None, move || worker.run()).expect("spawn storage thread");
    (StoreHandle { jobs, health }, thread)
}

/// Messages waiting for the next commit, with their tickets.
#[derive(Default)]
struct Batch {
    tickets: Vec<u64>,
    messages: Vec<NewMessage>,
}

struct Worker<F> {
    store: Box<dyn Store>,
    rx: Receiver<Job>,
    health: Arc<Health>,
    batch_max: usize,
    metrics: Arc<Metrics>,
    on_appended: F,
}

/// How often an idle or failed store is pinged.
const PING_HEALTHY: Duration = Duration::from_secs(5);
const PING_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl<F: FnMut(Vec<AppendResult>)> Worker<F> {
    fn run(mut self) {
        log::info!("storage thread started: {}", self.store.describe());
        let mut backoff = Duration::from_millis(100);
        let mut appends = Batch::default();
        'serve: loop {
            let wait = if self.is_healthy() { PING_HEALTHY } else { backoff };
            let first = match self.rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    let ok = self.store.ping().is_ok();
                    self.set_health(ok);
                    backoff = if ok { Duration::from_millis(100) } else { (backoff * 2).min(PING_BACKOFF_MAX) };
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break 'serve,
            };
            // Take everything queued behind the first job, so one commit
            // covers every message that arrived while the last one ran.
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Append { ticket, message } => {
                        appends.tickets.push(ticket);
                        appends.messages.push(message);
                    }
                    Job::Run(run) => {
                        self.commit(&mut appends);
                        run(self.store.as_mut());
                    }
                    Job::Stop => break 'serve,
                }
                if appends.tickets.len() >= self.batch_max {
                    self.commit(&mut appends);
                }
                next = self.rx.try_recv().ok();
            }
            self.commit(&mut appends);
        }
        self.commit(&mut appends);
        log::info!("storage thread stopped; everything queued was committed");
    }

    fn is_healthy(&self) -> bool {
        self.health.reachable.load(Ordering::Relaxed)
    }

    /// Records the outcome of a commit of messages.
    fn set_writes(&self, ok: bool) {
        if self.health.writes.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                log::info!("the store takes writes again");
            } else {
                log::warn!("the store refuses writes; health reports it until a commit succeeds");
            }
        }
    }

    fn set_health(&self, ok: bool) {
        if self.health.reachable.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                log::info!("store is available again");
            } else {
                log::warn!("store is unavailable; messages are refused until it is back");
            }
        }
    }

    /// Commits the queued messages in one transaction and reports them.
    fn commit(&mut self, appends: &mut Batch) {
        if appends.tickets.is_empty() {
            return;
        }
        let Batch { tickets, messages } = std::mem::take(appends);
        let started = Instant::now();
        let outcome = self.store.insert_messages(&messages);
        self.metrics.record_commit(messages.len(), started.elapsed());
        let results = match outcome {
            Ok(ids) => {
                self.set_health(true);
                self.set_writes(true);
                tickets
                    .into_iter()
                    .zip(messages.into_iter().zip(ids))
                    .map(|(ticket, (mut message, stored))| {
                        if let Some(at) = stored.earlier {
                            message.created_at_ms = at;
                        }
                        AppendResult {
                            ticket,
                            result: Ok(Arc::new(message.committed(stored.id, stored.seq))),
                            duplicate: stored.earlier.is_some(),
                        }
                    })
                    .collect()
            }
            Err(error) => {
                log::warn!("commit of {} messages failed: {error}", messages.len());
                self.set_health(!matches!(error, StoreError::Unavailable(_)));
                if error != StoreError::Conflict {
                    self.set_writes(false);
                }
                tickets
                    .into_iter()
                    .map(|ticket| AppendResult { ticket, result: Err(error.clone()), duplicate: false })
                    .collect()
            }
        };
        (self.on_appended)(results);
    }
}
