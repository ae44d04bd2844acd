//! Where lines go: a bounded in-memory buffer that requests append to and a writer thread that
//! drains it to stdout, a file (reopened on request) or any writer.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::format::LogFormat;
use super::record::AccessRecord;

/// Where lines go.
pub enum Sink {
    Stdout,
    File(PathBuf),
    /// Any writer (tests, embedding).
    Writer(Box<dyn std::io::Write + Send>),
}

/// The access log: a compiled format, and a bounded in-memory buffer that a writer thread
/// drains. Requests only append to the buffer (no syscall, no thread wake-up per line); the
/// writer flushes it every [`FLUSH_INTERVAL`] (Envoy flushes access logs every second), or at
/// once when it holds [`FLUSH_BYTES`]. When the buffer is full, lines are dropped and counted.
pub struct AccessLog {
    pub format: LogFormat,
    shared: Option<Arc<Shared>>,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<Pending>,
    wake: Condvar,
    /// Most bytes the buffer may hold.
    capacity: usize,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    lines: u64,
    reopen: bool,
    /// Flush requests: the writer bumps `flushed` to this once written.
    flush_wanted: u64,
    flushed: u64,
    closed: bool,
}

/// Lines that may wait for the writer, in bytes (about 16k Istio lines); beyond that they are
/// dropped and counted.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How often the writer writes what has accumulated.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// A buffer this full is written at once.
const FLUSH_BYTES: usize = 256 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

impl AccessLog {
    /// A log that writes nothing (`accessLogFile: ""`).
    pub fn disabled() -> AccessLog {
        AccessLog {
            format: LogFormat::istio_text(),
            shared: None,
            dropped: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the writer thread. A file that cannot be opened is an error (at start-up).
    pub fn start(sink: Sink, format: LogFormat) -> std::io::Result<AccessLog> {
        Self::start_with_capacity(sink, format, QUEUE_BYTES)
    }

    /// Like [`AccessLog::start`] with a buffer of `bytes` bytes.
    pub fn start_with_capacity(
        mut sink: Sink,
        format: LogFormat,
        bytes: usize,
    ) -> std::io::Result<AccessLog> {
        let written = Arc::new(AtomicU64::new(0));
        let out = match std::mem::replace(&mut sink, Sink::Stdout) {
            Sink::Writer(w) => w,
            other => {
                let o = open(&other)?;
                sink = other;
                o
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            capacity: bytes,
        });
        let (w, sh) = (written.clone(), shared.clone());
        std::thread::Builder::new()
            .name("egret-access-log".into())
            .spawn(move || writer(sh, sink, out, w))?;
        Ok(AccessLog {
            format,
            shared: Some(shared),
            dropped: Arc::new(AtomicU64::new(0)),
            written,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether this log writes `format`.
    pub fn format_is(&self, format: &LogFormat) -> bool {
        self.format.source == format.source
    }

    /// Appends the record's line to the buffer; never blocks on I/O.
    pub fn log(&self, rec: &AccessRecord) {
        let Some(shared) = &self.shared else { return };
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            self.format.format_into(rec, &mut line);
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.buf.len() + line.len() > shared.capacity {
                drop(st);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            st.buf.extend_from_slice(line.as_bytes());
            st.lines += 1;
            if st.buf.len() >= FLUSH_BYTES {
                shared.wake.notify_one();
            }
        });
    }

    /// Reopens a file sink (SIGUSR1, for logrotate).
    pub fn reopen(&self) {
        if let Some(shared) = &self.shared {
            shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reopen = true;
            shared.wake.notify_one();
        }
    }

    /// Waits (up to 5 s) until every line logged so far is written (tests, shutdown).
    pub fn flush(&self) {
        let Some(shared) = &self.shared else { return };
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.flush_wanted += 1;
        let ticket = st.flush_wanted;
        shared.wake.notify_all();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while st.flushed < ticket && !st.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match shared.wake.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for AccessLog {
    /// Writes what is buffered and stops the writer (a reload that changes the log, or exit).
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            self.flush();
            shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed = true;
            shared.wake.notify_all();
        }
    }
}

type Out = Box<dyn std::io::Write + Send>;

fn open(sink: &Sink) -> std::io::Result<Out> {
    Ok(match sink {
        Sink::Stdout | Sink::Writer(_) => Box::new(std::io::stdout()),
        Sink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open the access log {}: {e}", p.display()),
                    )
                })?,
        ),
    })
}

fn writer(shared: Arc<Shared>, sink: Sink, mut out: Out, written: Arc<AtomicU64>) {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.buf.len() < FLUSH_BYTES && !st.reopen && st.flush_wanted == st.flushed && !st.closed {
            st = match shared.wake.wait_timeout(st, FLUSH_INTERVAL) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        // Take the buffer; requests keep appending to the (empty) spare meanwhile.
        std::mem::swap(&mut st.buf, &mut spare);
        let lines = std::mem::take(&mut st.lines);
        let reopen = std::mem::take(&mut st.reopen);
        let ticket = st.flush_wanted;
        let closed = st.closed;
        drop(st);
        if !spare.is_empty() {
            if out.write_all(&spare).is_ok() {
                written.fetch_add(lines, Ordering::Relaxed);
            }
            let _ = out.flush();
            spare.clear();
            // Do not keep a burst's worth of memory for ever.
            if spare.capacity() > 4 * FLUSH_BYTES {
                spare = Vec::new();
            }
        }
        if reopen && matches!(sink, Sink::File(_)) {
            match open(&sink) {
                Ok(o) => out = o,
                Err(e) => tracing::error!("{e}; still writing to the old file"),
            }
        }
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.flushed < ticket {
            st.flushed = ticket;
            shared.wake.notify_all();
        }
        if closed && st.buf.is_empty() {
            return;
        }
    }
}
