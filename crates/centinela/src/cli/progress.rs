//! The progress of a long `backup run`, `backup verify` or `restore`:
//! bytes, rate and ETA as a bar on a terminal (indicatif), and as a plain
//! line every 10 s otherwise (a log, a pipe). `CENTINELA_PROGRESS_EVERY`
//! sets that interval in seconds (`0` turns the lines off).
//!
//! A thread samples `centinela_backup::progress` and draws on stderr, so
//! stdout keeps only the result.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use centinela_backup::progress::{done, total};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows progress until dropped.
pub(super) struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    pub(super) fn start(what: String) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = if std::io::stderr().is_terminal() {
            Some(std::thread::spawn(move || bar(&what, &flag)))
        } else {
            let every = std::env::var("CENTINELA_PROGRESS_EVERY")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(10.0);
            (every > 0.0).then(|| {
                let every = Duration::from_secs_f64(every);
                std::thread::spawn(move || lines(&what, every, &flag))
            })
        };
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TICK: Duration = Duration::from_millis(100);

fn bar(what: &str, stop: &AtomicBool) {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_message(what.to_string());
    // Templates are constants: they parse.
    let mut known = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .ok()
    .map(|s| s.progress_chars("=> "));
    if let Ok(s) = ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}") {
        pb.set_style(s);
    }
    while !stop.load(Ordering::Relaxed) {
        let t = total();
        if t > 0 {
            if let Some(s) = known.take() {
                pb.set_style(s);
            }
            // An estimate (a backup's previous size) can be passed.
            pb.set_length(t.max(done()));
        }
        pb.set_position(done());
        std::thread::sleep(TICK);
    }
    pb.finish_and_clear();
}

fn lines(what: &str, every: Duration, stop: &AtomicBool) {
    let started = Instant::now();
    let mut next = started + every;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK.min(every));
        if Instant::now() < next {
            continue;
        }
        next += every;
        eprintln!("{}", line(what, done(), total(), started.elapsed()));
    }
}

fn line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let mut s = format!("{what}: {:.1} MiB", mib(done));
    if total > done {
        let eta = (total - done) as f64 / rate.max(1.0);
        s += &format!(
            " of {:.1} MiB ({}%)",
            mib(total),
            done.saturating_mul(100) / total
        );
        s += &format!(", {:.1} MiB/s, eta {:.0} s", mib(rate as u64), eta);
    } else {
        s += &format!(", {:.1} MiB/s", mib(rate as u64));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::line;
    use std::time::Duration;

    #[test]
    fn a_line_has_bytes_rate_and_eta_when_the_total_is_known() {
        let l = line("restore db", 50 << 20, 200 << 20, Duration::from_secs(5));
        assert_eq!(
            l,
            "restore db: 50.0 MiB of 200.0 MiB (25%), 10.0 MiB/s, eta 15 s"
        );
        let l = line("backup db", 30 << 20, 0, Duration::from_secs(3));
        assert_eq!(l, "backup db: 30.0 MiB, 10.0 MiB/s");
    }
}
