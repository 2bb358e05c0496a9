//! The usual `process_*` metrics of centinela itself, read from `/proc`
//! at scrape time, and `centinela_build_info`.

use crate::{Collect, Exposition, Kind};

/// Linux reports CPU times in `/proc` in USER_HZ units, 100 per second on
/// every architecture centinela builds for.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// Reads `/proc/self`; fields it cannot read stay zero.
pub fn sample() -> Sample {
    let mut s = Sample::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which may hold spaces.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            s.cpu_seconds = (num(14).unwrap_or(0) + num(15).unwrap_or(0)) as f64 / USER_HZ;
            s.virtual_bytes = num(23).unwrap_or(0);
            let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            });
            if let (Some(b), Some(start)) = (btime, num(22)) {
                s.start_time_seconds = b as f64 + start as f64 / USER_HZ;
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        s.resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
    }
    s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    s.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        });
    s
}

/// `process_*` and `centinela_build_info{version}`.
pub struct Process {
    pub version: &'static str,
}

impl Collect for Process {
    fn collect(&self, out: &mut Exposition) {
        let s = sample();
        out.family(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
        )
        .counter_f64(&[], s.cpu_seconds);
        out.family(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
        )
        .gauge(&[], s.resident_bytes as f64);
        out.family(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
        )
        .gauge(&[], s.virtual_bytes as f64);
        out.family(
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
        )
        .gauge(&[], s.open_fds as f64);
        if let Some(max) = s.max_fds {
            out.family(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
            )
            .gauge(&[], max as f64);
        }
        out.family(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Kind::Gauge,
        )
        .gauge(&[], s.start_time_seconds);
        out.family(
            "centinela_build_info",
            "The running centinela's version; always 1.",
            Kind::Gauge,
        )
        .gauge(&[("version", self.version)], 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample();
        assert!(s.resident_bytes > 0, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.max_fds.unwrap_or(0) >= s.open_fds, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started within the last day, not in the future.
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0,
            "{s:?} now {now}"
        );
    }
}
