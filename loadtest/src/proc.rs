//! CPU and memory from `/proc`: the sidecar's (`--sidecar-pid`), the generator's own, and the
//! whole machine's, sampled once a second on a plain thread while the run goes on.
//!
//! The machine's busy time comes from the root cgroup's CPU accounting when it can be read
//! (`/sys/fs/cgroup/cpuacct/cpuacct.usage`, or `usage_usec` in cgroup v2's `cpu.stat`): that is
//! the scheduler's own run time of every task, in nanoseconds. `/proc/stat` is only the
//! fallback, because its busy time is counted in timer ticks, and on a tickless guest with
//! short, frequent sleeps (a relay run) ticks are skipped: it showed 2-5 % busy while the
//! sidecar and the generator alone used half a core. `/proc/pressure/cpu` adds how long
//! runnable tasks waited for a CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::calls::now_ns;

/// What `/proc/<pid>/stat` says about CPU and threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// User-mode CPU time, in clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time, in clock ticks.
    pub stime: u64,
    /// Threads in the process.
    pub threads: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// the fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let close = text
        .rfind(')')
        .ok_or_else(|| "no command name in /proc stat".to_owned())?;
    // Field 3 (state) is index 0 here; utime is field 14, stime 15, num_threads 20.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |i: usize, name: &str| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or_else(|| format!("/proc stat has no {name} field"))?
            .parse()
            .map_err(|_| format!("/proc stat: {name} is not a number"))
    };
    Ok(Stat {
        utime: field(11, "utime")?,
        stime: field(12, "stime")?,
        threads: field(17, "num_threads")?,
    })
}

/// What `/proc/<pid>/status` says about memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// The highest resident set size so far (`VmHWM`).
    pub hwm_kib: u64,
}

/// Parse `VmRSS` and `VmHWM` out of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Result<Memory, String> {
    let kib = |key: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .ok_or_else(|| format!("/proc status has no {key}"))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .map_err(|_| format!("/proc status: {key} is not a number of kB"))
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// The machine's CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// Time not idle.
    pub busy: u64,
    /// All time (summed over CPUs).
    pub total: u64,
}

/// Parse the first line of `/proc/stat` (`cpu  user nice system idle iowait irq softirq steal ...`).
pub fn parse_cpu_line(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| "/proc/stat has no cpu line".to_owned())?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|x| {
            x.parse()
                .map_err(|_| format!("/proc/stat: {x:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    if v.len() < 4 {
        return Err("/proc/stat: the cpu line is too short".into());
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Ok(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// The `usage_usec` of a cgroup v2 `cpu.stat`, in nanoseconds.
pub fn parse_cgroup_v2_usage(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("usage_usec "))?;
    line["usage_usec ".len()..]
        .trim()
        .parse::<u64>()
        .ok()
        .map(|us| us * 1000)
}

/// The `total` (µs) of the `some` line of `/proc/pressure/cpu`.
pub fn parse_pressure_some(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Every task's run time so far, in nanoseconds, from the root cgroup.
fn cgroup_busy_ns() -> Option<u64> {
    if let Ok(t) = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/cpuacct.usage") {
        return t.trim().parse().ok();
    }
    std::fs::read_to_string("/sys/fs/cgroup/cpu.stat")
        .ok()
        .and_then(|t| parse_cgroup_v2_usage(&t))
}

/// The machine at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineReading {
    /// Every task's run time so far (ns), from the root cgroup.
    pub busy_ns: Option<u64>,
    /// `/proc/stat`'s ticks.
    pub stat: Option<CpuTimes>,
    /// Time some runnable task waited for a CPU so far (µs), from `/proc/pressure/cpu`.
    pub pressure_us: Option<u64>,
}

fn read_machine() -> MachineReading {
    MachineReading {
        busy_ns: cgroup_busy_ns(),
        stat: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_cpu_line(&t).ok()),
        pressure_us: std::fs::read_to_string("/proc/pressure/cpu")
            .ok()
            .and_then(|t| parse_pressure_some(&t)),
    }
}

/// The number of CPUs in `/proc/stat` (`cpu0`, `cpu1`, ...).
pub fn count_cpus(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

/// One process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcReading {
    /// CPU ticks used so far.
    pub ticks: u64,
    /// Its threads.
    pub threads: u64,
    /// Its memory.
    pub memory: Memory,
}

fn read_proc(pid: &str) -> Result<ProcReading, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let s = parse_stat(&stat)?;
    Ok(ProcReading {
        ticks: s.utime + s.stime,
        threads: s.threads,
        memory: parse_status(&status)?,
    })
}

/// Everything sampled at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// When ([`now_ns`]).
    pub at: u64,
    /// The sidecar, when watched and still there.
    pub sidecar: Option<ProcReading>,
    /// This process.
    pub generator: Option<ProcReading>,
    /// The machine.
    pub machine: MachineReading,
}

fn read_all(pid: Option<u32>) -> Reading {
    Reading {
        at: now_ns(),
        sidecar: pid.and_then(|p| read_proc(&p.to_string()).ok()),
        generator: read_proc("self").ok(),
        machine: read_machine(),
    }
}

/// One process's use of the machine over a window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcUsage {
    /// CPU over the window, in % of one core.
    pub cpu_mean_pct: f64,
    /// The busiest one-second sample in the window, in % of one core.
    pub cpu_max_pct: f64,
    /// Resident memory when the window opened, in MiB.
    pub rss_start_mib: f64,
    /// The highest resident memory sampled in the window, in MiB.
    pub rss_max_mib: f64,
    /// The process's all-time peak (`VmHWM`) at the end, in MiB.
    pub rss_peak_mib: f64,
    /// Threads at the end.
    pub threads: u64,
}

/// The machine over a window.
#[derive(Debug, Clone, Serialize)]
pub struct MachineUsage {
    /// CPUs.
    pub cpus: usize,
    /// Busy time over the window, in % of all CPUs.
    pub busy_pct: f64,
    /// Where the busy time comes from: `cgroup` (the scheduler's run time of every task) or
    /// `/proc/stat` (timer ticks, which undercount on tickless guests).
    pub busy_source: &'static str,
    /// The share of the window in which some runnable task waited for a CPU
    /// (`/proc/pressure/cpu`), in %.
    pub cpu_pressure_pct: Option<f64>,
}

/// The machine between two readings.
fn machine_usage(a: &Reading, b: &Reading, cpus: usize) -> Option<MachineUsage> {
    let wall_ns = b.at.checked_sub(a.at).filter(|d| *d > 0)? as f64;
    let (busy_pct, busy_source) = match (a.machine.busy_ns, b.machine.busy_ns) {
        (Some(x), Some(y)) if cpus > 0 && y >= x => {
            ((y - x) as f64 * 100.0 / (wall_ns * cpus as f64), "cgroup")
        }
        _ => match (a.machine.stat, b.machine.stat) {
            (Some(x), Some(y)) if y.total > x.total => (
                (y.busy - x.busy) as f64 * 100.0 / (y.total - x.total) as f64,
                "/proc/stat",
            ),
            _ => return None,
        },
    };
    let cpu_pressure_pct = match (a.machine.pressure_us, b.machine.pressure_us) {
        (Some(x), Some(y)) if y >= x => Some((y - x) as f64 * 1000.0 * 100.0 / wall_ns),
        _ => None,
    };
    Some(MachineUsage {
        cpus,
        busy_pct,
        busy_source,
        cpu_pressure_pct,
    })
}

/// Samples the sidecar, the generator and the machine once a second.
pub struct Sampler {
    pid: Option<u32>,
    ticks_per_second: f64,
    cpus: usize,
    readings: Arc<Mutex<Vec<Reading>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Sampler {
    /// Start sampling. Fails when `pid` names no readable process.
    pub fn start(pid: Option<u32>) -> Result<Sampler, String> {
        if let Some(p) = pid {
            read_proc(&p.to_string())
                .map_err(|e| format!("--sidecar-pid {p}: no such process ({e})"))?;
        }
        let ticks_per_second = rustix::param::clock_ticks_per_second() as f64;
        let cpus = std::fs::read_to_string("/proc/stat")
            .map(|t| count_cpus(&t))
            .unwrap_or(0);
        let readings = Arc::new(Mutex::new(vec![read_all(pid)]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (readings, stop) = (readings.clone(), stop.clone());
            std::thread::Builder::new()
                .name("proc-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10 {
                            #[allow(
                                clippy::disallowed_methods,
                                reason = "the sampler's own thread"
                            )]
                            std::thread::sleep(Duration::from_millis(100));
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                        let r = read_all(pid);
                        if let Ok(mut v) = readings.lock() {
                            v.push(r);
                        }
                    }
                })
                .map_err(|e| format!("cannot start the /proc sampler: {e}"))?
        };
        Ok(Sampler {
            pid,
            ticks_per_second: ticks_per_second.max(1.0),
            cpus,
            readings,
            stop,
            thread: Some(thread),
        })
    }

    /// The watched sidecar's pid.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Take a reading now (window edges) and keep it.
    pub fn mark(&self) -> u64 {
        let r = read_all(self.pid);
        let at = r.at;
        if let Ok(mut v) = self.readings.lock() {
            v.push(r);
            v.sort_by_key(|r| r.at);
        }
        at
    }

    fn readings(&self) -> Vec<Reading> {
        self.readings.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// CPU % of one core between the last two readings: (sidecar, generator).
    pub fn latest_cpu(&self) -> (Option<f64>, Option<f64>) {
        let v = self.readings();
        match v.as_slice() {
            [.., a, b] => (
                cpu_pct(a.sidecar, b.sidecar, a.at, b.at, self.ticks_per_second),
                cpu_pct(a.generator, b.generator, a.at, b.at, self.ticks_per_second),
            ),
            _ => (None, None),
        }
    }

    /// Usage over `[from, to]` ([`now_ns`] readings, usually two [`Sampler::mark`]s):
    /// (sidecar, generator, machine).
    pub fn usage(
        &self,
        from: u64,
        to: u64,
    ) -> (Option<ProcUsage>, Option<ProcUsage>, Option<MachineUsage>) {
        let v: Vec<Reading> = self
            .readings()
            .into_iter()
            .filter(|r| r.at >= from && r.at <= to)
            .collect();
        let tps = self.ticks_per_second;
        let proc_usage = |pick: fn(&Reading) -> Option<ProcReading>| -> Option<ProcUsage> {
            let first = v.first()?;
            let last = v.last()?;
            let (a, b) = (pick(first)?, pick(last)?);
            let mean = cpu_pct(Some(a), Some(b), first.at, last.at, tps)?;
            let max = v
                .windows(2)
                .filter_map(|w| cpu_pct(pick(&w[0]), pick(&w[1]), w[0].at, w[1].at, tps))
                .fold(mean, f64::max);
            let rss_max = v
                .iter()
                .filter_map(|r| pick(r).map(|p| p.memory.rss_kib))
                .max()
                .unwrap_or(0);
            Some(ProcUsage {
                cpu_mean_pct: mean,
                cpu_max_pct: max,
                rss_start_mib: mib(a.memory.rss_kib),
                rss_max_mib: mib(rss_max),
                rss_peak_mib: mib(b.memory.hwm_kib),
                threads: b.threads,
            })
        };
        let machine = match (v.first(), v.last()) {
            (Some(a), Some(b)) => machine_usage(a, b, self.cpus),
            _ => None,
        };
        (
            proc_usage(|r| r.sidecar),
            proc_usage(|r| r.generator),
            machine,
        )
    }

    /// The sidecar's resident memory right now, in MiB.
    pub fn sidecar_rss_mib(&self) -> Option<f64> {
        let pid = self.pid?;
        read_proc(&pid.to_string())
            .ok()
            .map(|r| mib(r.memory.rss_kib))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cpu_pct(
    a: Option<ProcReading>,
    b: Option<ProcReading>,
    from: u64,
    to: u64,
    ticks_per_second: f64,
) -> Option<f64> {
    let (a, b) = (a?, b?);
    if to <= from {
        return None;
    }
    let secs = (to - from) as f64 / 1e9;
    Some(b.ticks.saturating_sub(a.ticks) as f64 / ticks_per_second / secs * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_read_after_the_command_name() {
        // A command name with spaces and a closing parenthesis of its own.
        let line = "4242 (tool gate) x) S 1 4242 4242 0 -1 4194560 1365 0 0 0 \
                    731 112 0 0 20 0 7 0 123456 812345344 10240 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Ok(Stat {
                utime: 731,
                stime: 112,
                threads: 7
            })
        );
        assert!(parse_stat("4242 tool S 1").is_err());
        assert!(parse_stat("4242 (t) S 1 2").unwrap_err().contains("utime"));
    }

    #[test]
    fn status_gives_rss_and_peak() {
        let text = "Name:\ttoolgate\nVmPeak:\t  900000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   70001 kB\nThreads:\t7\n";
        assert_eq!(
            parse_status(text),
            Ok(Memory {
                rss_kib: 70001,
                hwm_kib: 81234
            })
        );
        assert!(parse_status("Name:\tx\n").unwrap_err().contains("VmRSS"));
    }

    #[test]
    fn machine_cpu_counts_iowait_as_idle() {
        let text = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\ncpu1 50 3 25 400 20 2 1 0 0 0\nintr 1\n";
        assert_eq!(
            parse_cpu_line(text),
            Ok(CpuTimes {
                busy: 160,
                total: 1000
            })
        );
        assert_eq!(count_cpus(text), 2);
        assert!(parse_cpu_line("intr 1\n").is_err());
    }

    #[test]
    fn cgroup_and_pressure_files_are_read() {
        let v2 = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(parse_cgroup_v2_usage(v2), Some(1_500_000));
        assert_eq!(parse_cgroup_v2_usage("nr_periods 0\n"), None);
        let psi = "some avg10=3.34 avg60=2.18 avg300=4.42 total=2885415378\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_some(psi), Some(2_885_415_378));
        assert_eq!(parse_pressure_some("full total=1\n"), None);
    }

    #[test]
    fn machine_busy_prefers_the_cgroup() {
        let at = |at: u64, busy_ns: u64, ticks: (u64, u64), psi: u64| Reading {
            at,
            machine: MachineReading {
                busy_ns: Some(busy_ns),
                stat: Some(CpuTimes {
                    busy: ticks.0,
                    total: ticks.1,
                }),
                pressure_us: Some(psi),
            },
            ..Default::default()
        };
        // One second, two CPUs: 0.5 s of run time is 25 %; 0.1 s of waiting is 10 %. The
        // ticks (which say 5 %) are not used.
        let (a, b) = (
            at(0, 0, (0, 0), 0),
            at(1_000_000_000, 500_000_000, (10, 200), 100_000),
        );
        let m = machine_usage(&a, &b, 2).unwrap();
        assert!((m.busy_pct - 25.0).abs() < 1e-9);
        assert_eq!(m.busy_source, "cgroup");
        assert!((m.cpu_pressure_pct.unwrap() - 10.0).abs() < 1e-9);
        // Without the cgroup, the ticks.
        let mut a2 = a;
        a2.machine.busy_ns = None;
        let m = machine_usage(&a2, &b, 2).unwrap();
        assert!((m.busy_pct - 5.0).abs() < 1e-9);
        assert_eq!(m.busy_source, "/proc/stat");
    }

    #[test]
    fn this_process_can_be_read() {
        let r = read_proc("self").expect("own /proc entry");
        assert!(r.threads >= 1);
        assert!(r.memory.rss_kib > 0);
        assert!(r.memory.hwm_kib >= r.memory.rss_kib);
    }

    #[test]
    fn cpu_percent_is_of_one_core() {
        let a = ProcReading {
            ticks: 100,
            ..Default::default()
        };
        let b = ProcReading {
            ticks: 250,
            ..Default::default()
        };
        // 150 ticks at 100 per second over 2 s: 75% of one core.
        let pct = cpu_pct(Some(a), Some(b), 0, 2_000_000_000, 100.0).unwrap();
        assert!((pct - 75.0).abs() < 1e-9);
        assert_eq!(cpu_pct(Some(a), None, 0, 1, 100.0), None);
    }
}
