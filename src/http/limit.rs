//! A listener's connection limit (`--max-connections`): admission when a connection is
//! accepted, and the set of idle keep-alive connections that can be closed to make room.
//!
//! A connection is *idle* while egret's HTTP/1 loop waits between two requests on it (nothing
//! read, nothing in flight), and also before its first request: a connection that never sends
//! anything would otherwise hold its place for the whole idle timeout (an hour). Only that loop
//! reports idleness: connections served by hyper (once a request had a body or an upgrade, h2c,
//! TLS-terminated) and TCP connections are always busy.
//!
//! When the listener is full, the connection idle for the longest is told to close and the
//! new one is admitted (for the moment the closing one takes to go, the listener has one more
//! open than the limit). With nothing idle the new connection is refused: closed at once, as
//! Envoy does at its listener's `max_connections` (`downstream_cx_overflow`).
//!
//! It lives in `http`, the lowest floor that needs it: the HTTP/1 loop reports idleness here,
//! and `listener` admits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Refusals are logged at most this often (one summary line per interval of a storm).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The limit of one listener.
#[derive(Debug)]
pub struct ConnLimit {
    name: String,
    max: usize,
    open: AtomicUsize,
    /// Idle connections by when they became idle (oldest first): entry number -> its wake-up.
    idle: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: AtomicU64,
    log: Mutex<RefusalLog>,
}

#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    /// Refusals not yet reported.
    unreported: u64,
}

/// What [`ConnLimit::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Below the limit.
    Admitted(ConnSlot),
    /// At the limit: the longest-idle keep-alive connection was told to close.
    MadeRoom(ConnSlot),
    /// At the limit with nothing idle: close the new connection.
    Refused,
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnSlot {
    limit: Arc<ConnLimit>,
    wake: Arc<Notify>,
}

impl ConnLimit {
    pub fn new(name: &str, max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            name: name.to_string(),
            max: max.max(1),
            open: AtomicUsize::new(0),
            idle: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            log: Mutex::new(RefusalLog::default()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Decides on a connection just accepted. A refusal is logged (rate-limited); the caller
    /// counts it and closes the socket.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let slot = |limit: &Arc<ConnLimit>| ConnSlot {
            limit: limit.clone(),
            wake: Arc::new(Notify::new()),
        };
        if self.open.fetch_add(1, Ordering::AcqRel) < self.max {
            return Admission::Admitted(slot(self));
        }
        let oldest = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_first();
        if let Some((_, wake)) = oldest {
            wake.notify_one();
            tracing::debug!(
                listener = %self.name,
                "--max-connections {} reached: closing the longest-idle keep-alive connection to admit a new one",
                self.max
            );
            return Admission::MadeRoom(slot(self));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.log_refusal();
        Admission::Refused
    }

    fn log_refusal(&self) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.unreported += 1;
        let now = Instant::now();
        let since = log.last.map(|t| now.duration_since(t));
        if since.is_some_and(|d| d < LOG_EVERY) {
            return;
        }
        let n = std::mem::take(&mut log.unreported);
        log.last = Some(now);
        match since {
            None => tracing::warn!(
                listener = %self.name,
                "refused a connection: {} connections are open (--max-connections) and none is an idle keep-alive connection that could be closed; further refusals are summarised every {}s (envoy_listener_downstream_cx_overflow counts them all)",
                self.max,
                LOG_EVERY.as_secs()
            ),
            Some(d) => tracing::warn!(
                listener = %self.name,
                "refused {n} connection(s) in the last {}s: {} connections open (--max-connections) and none idle",
                d.as_secs(),
                self.max
            ),
        }
    }
}

impl ConnSlot {
    /// Marks the connection idle until [`Idle::busy`]; the listener may close it meanwhile.
    pub fn idle(&self) -> Idle<'_> {
        let id = self.limit.next.fetch_add(1, Ordering::Relaxed);
        self.limit
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, self.wake.clone());
        Idle { slot: self, id }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection registered as idle.
#[derive(Debug)]
pub struct Idle<'a> {
    slot: &'a ConnSlot,
    id: u64,
}

impl Idle<'_> {
    /// Resolves when the listener chose this connection to close (to make room).
    pub async fn evicted(&self) {
        self.slot.wake.notified().await;
    }

    /// The connection has work again: `false` if the listener chose it to close first (it
    /// must close now, whatever arrived).
    pub fn busy(self) -> bool {
        self.remove()
    }

    fn remove(&self) -> bool {
        self.slot
            .limit
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id)
            .is_some()
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_listener_closes_the_longest_idle_connection_first() {
        let limit = ConnLimit::new("l", 2);
        let Admission::Admitted(a) = limit.admit() else {
            panic!("first admitted")
        };
        let Admission::Admitted(b) = limit.admit() else {
            panic!("second admitted")
        };
        // Nothing idle: refused, and the count stays.
        assert!(matches!(limit.admit(), Admission::Refused));
        assert_eq!(limit.open(), 2);
        let ia = a.idle();
        let ib = b.idle();
        assert!(matches!(limit.admit(), Admission::MadeRoom(_)));
        // a went idle first, so a was chosen; b was not.
        assert!(!ia.busy());
        assert!(ib.busy());
        assert_eq!(limit.open(), 2, "the new slot was dropped at once");
    }

    #[test]
    fn a_connection_that_turned_busy_is_not_chosen() {
        let limit = ConnLimit::new("l", 1);
        let Admission::Admitted(a) = limit.admit() else {
            panic!("admitted")
        };
        assert!(a.idle().busy());
        assert!(matches!(limit.admit(), Admission::Refused));
        drop(a);
        assert!(matches!(limit.admit(), Admission::Admitted(_)));
    }
}
