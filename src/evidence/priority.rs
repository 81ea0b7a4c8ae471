//! The evidence writer thread's CPU priority: evidence may wait, a caller may not.

/// Nice value of the writer thread when it runs as an ordinary thread: on a busy machine the
/// tool-call threads preempt its commits instead of queueing behind them.
pub(super) const WRITER_NICE: i32 = 10;

/// The writer thread's CPU priority.
///
/// On Linux the writer runs under `SCHED_IDLE` while it keeps up: it gets only CPU time that no
/// runtime worker wants, so a tool call never waits for a CPU behind one of its commits (at
/// 1,000 and 5,000 calls/s this lowered the added p99 by about a third; docs/performance.md,
/// "The evidence writer"). A batch that comes up full (the most the writer puts in one commit)
/// means the machine has had no idle time for a while and evidence is piling up: the writer
/// then runs as an ordinary thread at nice 10 until a batch is less than half full, so it
/// never falls so far behind that its queue fills. Leaving `SCHED_IDLE` needs `CAP_SYS_NICE`
/// or an `RLIMIT_NICE` that allows nice 0; without either, the writer stays an ordinary thread
/// at nice 10 throughout.
#[derive(Default)]
pub(super) struct Priority {
    /// Whether this thread may return from `SCHED_IDLE` (so it may use it).
    idle_ok: bool,
    /// Whether it runs under `SCHED_IDLE` now.
    idle: bool,
}

impl Priority {
    /// Set the calling thread's priority for its start: `SCHED_IDLE` when it may come back
    /// from it, nice 10 otherwise. Best effort: a refusal leaves the thread as it was.
    pub(super) fn lower() -> Priority {
        let mut p = Priority::default();
        #[cfg(target_os = "linux")]
        {
            let started_at = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
            if let Err(e) = set_nice(WRITER_NICE) {
                tracing::debug!(error = %e, "cannot lower the evidence writer's priority");
                return p;
            }
            // Coming back from nice 10 to 0 takes what leaving SCHED_IDLE takes (the kernel's
            // `can_nice` for the thread's nice value, 0 here): try it before going idle.
            p.idle_ok = started_at.is_ok_and(|n| n == 0) && set_nice(0).is_ok();
            if p.idle_ok {
                p.switch(true);
            }
        }
        p
    }

    /// After each commit: `events` is how many the batch held, of at most `most`.
    pub(super) fn after_batch(&mut self, events: usize, most: usize) {
        if !self.idle_ok {
            return;
        }
        if self.idle && events >= most {
            self.switch(false);
        } else if !self.idle && events < most / 2 {
            self.switch(true);
        }
    }

    /// To `SCHED_IDLE` (`idle`), or back to an ordinary thread at nice 10. A refusal ends the
    /// switching: the thread stays as it is (at nice 10, when going idle failed).
    #[cfg(target_os = "linux")]
    fn switch(&mut self, idle: bool) {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let policy = if idle {
            NormalThreadSchedulePolicy::Idle
        } else {
            NormalThreadSchedulePolicy::Other
        };
        // The crate also sets the nice value: 0 under SCHED_IDLE (where it does not count),
        // 19 under SCHED_OTHER (set to 10 below).
        match set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(policy),
        ) {
            Ok(()) => {
                self.idle = idle;
                if !idle {
                    let _ = set_nice(WRITER_NICE);
                    tracing::debug!(
                        "the evidence writer is behind; it runs as an ordinary thread until it has caught up"
                    );
                }
            }
            Err(e) if idle => {
                tracing::debug!(error = ?e, "the evidence writer cannot run at idle priority; it stays at nice 10");
                self.idle_ok = false;
                let _ = set_nice(WRITER_NICE);
            }
            Err(e) => {
                tracing::warn!(error = ?e, "the evidence writer is behind and cannot leave idle priority");
                self.idle_ok = false;
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn switch(&mut self, _idle: bool) {}
}

/// Set the calling thread's nice value.
#[cfg(target_os = "linux")]
fn set_nice(n: i32) -> rustix::io::Result<()> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), n)
}
