//! What `/proc` tells about instances: CPU% and RSS per process group, and
//! processes left behind by a centinela that died.

use std::collections::HashMap;
use std::time::Instant;

use tracing::warn;

use crate::sys;

/// Set in every instance's environment to the pid of the centinela that
/// started it.
pub const OWNER_ENV: &str = "CENTINELA_SUPERVISOR";

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub pgrp: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        pgrp: num(5)? as u32,
        cpu_ticks: num(14)? + num(15)?,
        rss_pages: num(24)?,
    })
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn stat_of(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks and RSS pages summed over each process group.
fn groups() -> HashMap<u32, (u64, u64)> {
    let mut out: HashMap<u32, (u64, u64)> = HashMap::new();
    for st in all_pids().filter_map(stat_of) {
        let e = out.entry(st.pgrp).or_default();
        e.0 += st.cpu_ticks;
        e.1 += st.rss_pages;
    }
    out
}

/// Per process group: CPU% since the previous sample, RSS in KiB, CPU
/// seconds used since the previous sample.
pub type Sampled = std::collections::HashMap<u32, (Option<f64>, u64, f64)>;

/// Turns successive samples into CPU% and RSS per process group.
pub struct Sampler {
    ticks: u64,
    page: u64,
    last: HashMap<u32, (u64, Instant)>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            ticks: sys::clock_ticks(),
            page: sys::page_size(),
            last: HashMap::new(),
        }
    }
}

impl Sampler {
    /// For each process group in `pgids`: CPU% since the previous sample
    /// (None on the first), RSS in KiB, and the CPU seconds used since the
    /// previous sample (on the first, since the group started).
    pub fn sample(&mut self, pgids: &[u32]) -> Sampled {
        let now = Instant::now();
        let all = groups();
        let mut out = HashMap::new();
        let mut last = HashMap::new();
        for &g in pgids {
            let Some(&(cpu, rss)) = all.get(&g) else {
                continue;
            };
            let pct = self.last.get(&g).and_then(|&(prev, at)| {
                let secs = now.duration_since(at).as_secs_f64();
                (secs > 0.0 && cpu >= prev)
                    .then(|| (cpu - prev) as f64 / self.ticks as f64 / secs * 100.0)
            });
            let used = cpu.saturating_sub(self.last.get(&g).map_or(0, |&(prev, _)| prev));
            out.insert(
                g,
                (pct, rss * self.page / 1024, used as f64 / self.ticks as f64),
            );
            last.insert(g, (cpu, now));
        }
        self.last = last;
        out
    }
}

/// A process's start time (clock ticks since boot, field 22 of its stat),
/// unless it is gone or a zombie. With the pid it names one process for
/// good: a pid used again later has another start time.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    f.get(22 - 3)?.parse().ok()
}

/// The value of [`OWNER_ENV`] for processes this process starts:
/// `PID:START_TIME`.
pub fn owner_tag() -> String {
    let me = std::process::id();
    format!("{me}:{}", start_time(me).unwrap_or(0))
}

/// The owner recorded in a process's environment: (pid, start time).
fn owner_of(pid: u32) -> Option<(u32, u64)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let key = format!("{OWNER_ENV}=");
    env.split(|b| *b == 0).find_map(|kv| {
        let v = std::str::from_utf8(kv.strip_prefix(key.as_bytes())?).ok()?;
        let (p, t) = v.split_once(':')?;
        Some((p.parse().ok()?, t.parse().ok()?))
    })
}

/// Kills processes started by a centinela that is no longer running (for
/// example the children of a worker, which the kernel does not kill when
/// centinela is SIGKILLed), so that they do not hold ports a new centinela
/// needs. Returns the pids killed.
pub fn sweep_orphans() -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let Some((owner, started)) = owner_of(pid) else {
            continue;
        };
        // The owner lives on if a process with its pid and start time does.
        if owner == me || start_time(owner) == Some(started) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        warn!(pid, owner, command = %cmdline.trim_end(), "Killing a process left behind by a centinela that is gone");
        if let Some(st) = stat_of(pid) {
            if st.pgrp == pid {
                sys::kill_group(pid, libc::SIGKILL);
            }
        }
        sys::kill_pid(pid, libc::SIGKILL);
        killed.push(pid);
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parens_in_the_name() {
        let line = "4242 (my (odd) worker) S 1 4240 4240 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 12345 104857600 2560 18446744073709551615";
        let st = parse_stat(line).unwrap();
        assert_eq!(
            st,
            ProcStat {
                pid: 4242,
                pgrp: 4240,
                cpu_ticks: 300,
                rss_pages: 2560
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_owner_tag_names_this_process_by_pid_and_start_time() {
        let tag = owner_tag();
        let (pid, start) = tag.split_once(':').unwrap();
        let pid: u32 = pid.parse().unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(start_time(pid), Some(start.parse().unwrap()));
        assert!(start.parse::<u64>().unwrap() > 0);
        // No process has pid 0 in /proc; u32::MAX is above pid_max.
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn samples_a_process_group_with_cpu_after_the_second_sample() {
        // A group of its own, burning CPU: the test runner's group has
        // other tests' processes coming and going.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "while :; do :; done"])
            .process_group(0)
            .spawn()
            .unwrap();
        let g = child.id();
        let mut s = Sampler::default();
        let first = s.sample(&[g]);
        let (cpu, rss, _) = first[&g];
        assert_eq!(cpu, None);
        assert!(rss > 100, "rss {rss} KiB");
        let start = stat_of(g).unwrap().cpu_ticks;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while stat_of(g).unwrap().cpu_ticks < start + 5 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let (cpu, _, used) = s.sample(&[g])[&g];
        let _ = child.kill();
        let _ = child.wait();
        let cpu = cpu.unwrap();
        // Since the first sample: at least the 5 ticks burnt.
        assert!(used >= 5.0 / s.ticks as f64 - 1e-9, "{used}");
        assert!(cpu > 0.0, "cpu {cpu}%");
    }
}
