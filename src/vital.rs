//! Threads that own state fail loudly.
//!
//! The router, the storage thread, the writer pool and the Redis bus threads
//! each own state nobody else can rebuild. If one of them panicked and the
//! process stayed up, every caller would wait for an answer that never
//! comes while `/api/health` still said healthy. So they are started with
//! [`spawn`], which ends the whole process with exit status
//! [`PANIC_EXIT_CODE`] as soon as the thread's body panics, after logging
//! which thread it was and why; a supervisor then restarts a clean process.
//!
//! Threads that own no shared state (one client's reader, an HTTP worker)
//! are started normally: their panics end only their own connection.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

/// The exit status after a vital thread panicked (Rust's own for a panic).
pub const PANIC_EXIT_CODE: i32 = 101;

/// Starts a thread named `name` whose panic ends the process: the panic is
/// logged at `error` level and the process exits with [`PANIC_EXIT_CODE`]
/// at once, without unwinding other threads or running shutdown.
/// `stack` is the thread's stack size in bytes (`None`: the default).
pub fn spawn<T: Send + 'static>(
    name: &str,
    stack: Option<usize>,
    body: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    let mut builder = std::thread::Builder::new().name(name.to_string());
    if let Some(bytes) = stack {
        builder = builder.stack_size(bytes);
    }
    let name = name.to_string();
    builder.spawn(move || match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            log::error!("thread {name} panicked ({why}); the process exits so that it can be restarted cleanly");
            log::logger().flush();
            std::process::exit(PANIC_EXIT_CODE);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Set in the child process of [`a_panicking_vital_thread_ends_the_process`].
    const CHILD: &str = "BABY_DISCORD_VITAL_TEST_CHILD";

    /// Runs only as the child of the test below: a vital thread panics while
    /// the main thread would happily go on for a minute.
    #[test]
    fn vital_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        spawn("doomed", Some(64 * 1024), || panic!("deliberately")).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        // Not reached: the panic ends the process first.
        std::process::exit(0);
    }

    #[test]
    fn a_panicking_vital_thread_ends_the_process() {
        let started = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "vital::tests::vital_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(PANIC_EXIT_CODE), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "the process did not exit at once");
        assert!(String::from_utf8_lossy(&out.stderr).contains("deliberately"), "{out:?}");
    }

    #[test]
    fn a_vital_thread_that_returns_gives_its_value() {
        assert_eq!(spawn("fine", None, || 42).unwrap().join().unwrap(), 42);
    }
}
