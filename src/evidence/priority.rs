//! The evidence writer thread's CPU priority: evidence may wait, a caller may not.

use super::store::MAX_BATCH;

/// Nice value of the writer thread when it runs as an ordinary thread: on a busy machine the
/// tool-call threads preempt its commits instead of queueing behind them (evidence may wait; a
/// caller may not).
pub(super) const WRITER_NICE: i32 = 10;

/// The writer thread's CPU priority.
///
/// On Linux the writer runs under `SCHED_IDLE` while it keeps up: it gets only CPU time that no
/// runtime worker wants, so a tool call never waits for a CPU behind one of its commits (at
/// 1,000 and 5,000 calls/s this lowered the added p99 by about a third; docs/performance.md,
/// "The evidence writer"). A
/// batch that comes up full ([`MAX_BATCH`]) means the machine has had no idle time for a
/// while and evidence is piling up: the writer then runs as an ordinary thread at nice 10
/// until a batch is less than half full, so it never falls so far behind that its queue fills.
/// Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows nice 0; without
/// either, the writer stays an ordinary thread at nice 10 throughout.
pub(super) struct Priority {
    /// Whether this thread may return from `SCHED_IDLE` (so it may use it).
    idle_ok: bool,
    /// Whether it runs under `SCHED_IDLE` now.
    idle: bool,
}

impl Priority {
    /// Set the calling thread's priority for its start: `SCHED_IDLE` when it may come back
    /// from it, nice 10 otherwise. Best effort: a refusal leaves the thread as it was.
    #[cfg(target_os = "linux")]
    pub(super) fn lower() -> Priority {
        let tid = rustix::thread::gettid();
        let nice = |n: i32| rustix::process::setpriority_process(Some(tid), n);
        let started_at = rustix::process::getpriority_process(Some(tid)).unwrap_or(-1);
        if let Err(e) = nice(WRITER_NICE) {
            tracing::debug!(error = %e, "cannot lower the evidence writer's priority");
            return Priority {
                idle_ok: false,
                idle: false,
            };
        }
        // Coming back from nice 10 to 0 takes what leaving SCHED_IDLE takes (the kernel's
        // `can_nice` for the thread's nice value, 0 here): try it before going idle.
        let mut p = Priority {
            idle_ok: started_at == 0 && nice(0).is_ok(),
            idle: false,
        };
        if p.idle_ok {
            p.go_idle();
        }
        p
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn lower() -> Priority {
        Priority {
            idle_ok: false,
            idle: false,
        }
    }

    /// After each commit: `events` is how many the batch held.
    pub(super) fn after_batch(&mut self, events: usize) {
        if !self.idle_ok {
            return;
        }
        if self.idle && events >= MAX_BATCH {
            self.go_ordinary();
        } else if !self.idle && events < MAX_BATCH / 2 {
            self.go_idle();
        }
    }

    #[cfg(target_os = "linux")]
    fn go_idle(&mut self) {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        // Under SCHED_IDLE the nice value does not count; the crate sets it to 0.
        match set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        ) {
            Ok(()) => self.idle = true,
            Err(e) => {
                tracing::debug!(error = ?e, "the evidence writer cannot run at idle priority; it stays at nice 10");
                self.idle_ok = false;
                let tid = rustix::thread::gettid();
                let _ = rustix::process::setpriority_process(Some(tid), WRITER_NICE);
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn go_ordinary(&mut self) {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        // SCHED_OTHER at the crate's lowest priority (nice 19), then nice 10.
        let back = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
        );
        match back {
            Ok(()) => {
                self.idle = false;
                let tid = rustix::thread::gettid();
                let _ = rustix::process::setpriority_process(Some(tid), WRITER_NICE);
                tracing::debug!(
                    "the evidence writer is behind; it runs as an ordinary thread until it has caught up"
                );
            }
            Err(e) => {
                tracing::warn!(error = ?e, "the evidence writer is behind and cannot leave idle priority");
                self.idle_ok = false;
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn go_idle(&mut self) {}

    #[cfg(not(target_os = "linux"))]
    fn go_ordinary(&mut self) {}
}
