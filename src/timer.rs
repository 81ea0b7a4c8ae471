//! Deadlines kept to a fraction of a millisecond: when a filler line goes out and when a live
//! call is handed off.
//!
//! Tokio's timer counts whole milliseconds and rounds every deadline up, so a filler due at
//! 500 ms goes out anywhere up to about a millisecond later. [`sleep_until`] sleeps on tokio's
//! timer until [`MARGIN`] before the deadline, and then (for the few calls still waiting by
//! then) on one shared thread that sleeps on the kernel's high-resolution timers. Calls that
//! finish before the margin never touch the thread; a call that finishes inside it leaves an
//! entry the thread drops when its time comes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long before a deadline the precise thread takes over from tokio's timer: tokio's
/// rounding (up to 1 ms) plus room for a busy runtime.
pub const MARGIN: Duration = Duration::from_millis(2);

/// Sleep until `at`, a fraction of a millisecond late instead of up to a millisecond.
///
/// Not for tokio's paused clock (tests): the last [`MARGIN`] passes in real time.
pub async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.checked_sub(MARGIN).unwrap_or(at)).await;
    let at = at.into_std();
    if at <= std::time::Instant::now() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    TIMER.schedule(at, tx);
    // The thread never drops a sender before its time: an error means it is gone (it cannot
    // be, short of a panic), and returning then is the right fallback.
    let _ = rx.await;
}

struct Entry {
    at: std::time::Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

static TIMER: LazyLock<&'static Timer> = LazyLock::new(|| {
    let timer: &'static Timer = Box::leak(Box::new(Timer {
        queue: Mutex::new(Queue::default()),
        changed: Condvar::new(),
    }));
    std::thread::Builder::new()
        .name("toolgate-timer".into())
        .spawn(move || timer.run())
        .expect("cannot start the timer thread");
    timer
});

impl Timer {
    fn schedule(&self, at: std::time::Instant, wake: oneshot::Sender<()>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.seq += 1;
        let seq = q.seq;
        let first = q.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        q.heap.push(Reverse(Entry { at, seq, wake }));
        drop(q);
        // Only a new earliest deadline changes how long the thread sleeps.
        if first {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = std::time::Instant::now();
            while q.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
                let Some(Reverse(e)) = q.heap.pop() else {
                    break;
                };
                let _ = e.wake.send(());
            }
            q = match q.heap.peek() {
                None => self.changed.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(Reverse(e)) => {
                    let wait = e.at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(q, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_are_kept_in_order_and_never_early() {
        let start = Instant::now();
        let mut tasks = Vec::new();
        // Out of order, some inside the margin from the start, some after it.
        for ms in [7u64, 1, 4, 3, 9, 0, 5] {
            let at = start + Duration::from_millis(ms);
            tasks.push(tokio::spawn(async move {
                sleep_until(at).await;
                (ms, Instant::now())
            }));
        }
        for t in tasks {
            let (ms, woke) = t.await.unwrap();
            assert!(
                woke >= start + Duration::from_millis(ms),
                "{ms} ms deadline woke early"
            );
        }
    }

    #[tokio::test]
    async fn an_abandoned_sleep_does_not_hold_up_later_ones() {
        let start = Instant::now();
        let abandoned = tokio::spawn(sleep_until(start + Duration::from_millis(1)));
        abandoned.abort();
        sleep_until(start + Duration::from_millis(3)).await;
        assert!(Instant::now() >= start + Duration::from_millis(3));
    }
}
