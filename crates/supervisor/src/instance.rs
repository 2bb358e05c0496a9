//! One instance of a service: spawn, watch, restart with backoff, stop.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use centinela_config::{Restart, Service};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::RestartBackoff;
use crate::logs::RotatingFile;
use crate::probe;
use crate::sys;

const STDERR_TAIL: usize = 20;
/// Consecutive quick exits after which an instance is crash-looping.
const CRASH_LOOP_AFTER: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Spawned; its readiness probe has not passed yet.
    Starting,
    /// Ready: receives traffic.
    Ready,
    /// Exited; waiting out the backoff before the next start.
    Restarting,
    /// Restarting over and over; centinela keeps trying.
    CrashLooping,
    /// `give_up` was reached; not restarted any more.
    Failed,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Restarting => "restarting",
            State::CrashLooping => "crash-looping",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub started_at: Option<Instant>,
    pub restarts: u32,
    /// "exit code 3", "signal 9 (SIGKILL)", "spawn failed: ...".
    pub last_exit: Option<String>,
    pub stderr_tail: VecDeque<String>,
    /// The most recent restart delays, newest last (at most 16).
    pub delays: VecDeque<Duration>,
}

/// Told when an instance with a port starts or stops taking traffic:
/// `(port, ready)`. Called with `false` before the instance is stopped.
pub type OnReady = Arc<dyn Fn(u16, bool) + Send + Sync>;

pub struct Instance {
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn lock(s: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Instance {
    /// Starts instance `index` of `svc` and keeps it running until stopped.
    pub fn spawn(svc: Arc<Service>, index: u32) -> Instance {
        Self::spawn_with(svc, index, None)
    }

    /// Like [`Instance::spawn`], reporting readiness changes to `on_ready`.
    pub fn spawn_with(svc: Arc<Service>, index: u32, on_ready: Option<OnReady>) -> Instance {
        let status = Arc::new(Mutex::new(Status {
            state: State::Starting,
            pid: None,
            port: svc.port(index),
            started_at: None,
            restarts: 0,
            last_exit: None,
            stderr_tail: VecDeque::new(),
            delays: VecDeque::new(),
        }));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(svc, index, status.clone(), stop_rx, on_ready));
        Instance { status, stop, task }
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// A handle on the live status, for status pages.
    pub fn status_handle(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    /// Stops the instance (stop signal to its process group, SIGKILL after
    /// the stop timeout) and waits until it is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn command(svc: &Service, index: u32) -> tokio::process::Command {
    let port = svc.port(index);
    let mut cmd = tokio::process::Command::new(&svc.command);
    for a in &svc.args {
        match port {
            Some(p) => cmd.arg(a.replace("{port}", &p.to_string())),
            None => cmd.arg(a),
        };
    }
    cmd.envs(svc.env.iter().map(|(k, v)| (k, v)));
    if let Some(p) = port {
        cmd.env("PORT", p.to_string());
    }
    cmd.env("CENTINELA_INSTANCE", index.to_string());
    cmd.current_dir(&svc.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: stopping it stops its children too.
        .process_group(0)
        .kill_on_drop(true);
    sys::die_with_parent(&mut cmd);
    cmd
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown exit".to_string(),
    }
}

/// Copies a child's output lines to its log file, keeping a stderr tail.
fn pump(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Option<Arc<Mutex<RotatingFile>>>,
    tail: Option<Arc<Mutex<Status>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(log) = &log {
                let _ = log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_line(line.as_bytes());
            }
            if let Some(st) = &tail {
                let mut st = lock(st);
                if st.stderr_tail.len() == STDERR_TAIL {
                    st.stderr_tail.pop_front();
                }
                st.stderr_tail.push_back(line);
            }
        }
    })
}

async fn stop_group(child: &mut tokio::process::Child, pid: u32, svc: &Service) {
    sys::kill_group(pid, svc.stop.signal.number);
    if tokio::time::timeout(svc.stop.timeout, child.wait())
        .await
        .is_err()
    {
        warn!(service = %svc.name, pid, timeout_secs = svc.stop.timeout.as_secs_f64(), "Instance ignored the stop signal; sending SIGKILL");
        sys::kill_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Leftover members of the group never outlive the instance.
    sys::kill_group(pid, libc::SIGKILL);
}

/// Waits until the instance is ready (its readiness probe, else a TCP connect
/// to its port, else at once), reports it, then runs the liveness probe and
/// returns when it failed `failures` times in a row.
async fn probes(
    svc: &Service,
    index: u32,
    status: &Mutex<Status>,
    ready: &(dyn Fn(bool) + Sync),
) -> String {
    let port = svc.port(index);
    let readiness = svc.readiness.clone().or_else(|| {
        port.map(|_| centinela_config::Probe {
            kind: centinela_config::ProbeKind::Tcp,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
            failures: 1,
        })
    });
    if let Some(r) = &readiness {
        while probe::check(r, port, &svc.workdir).await.is_err() {
            tokio::time::sleep(r.interval).await;
        }
    }
    lock(status).state = State::Ready;
    ready(true);
    let Some(l) = &svc.liveness else {
        return std::future::pending().await;
    };
    let mut failures = 0;
    loop {
        tokio::time::sleep(l.interval).await;
        match probe::check(l, port, &svc.workdir).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= l.failures {
                    return format!("liveness probe failed {failures} times, last: {e}");
                }
            }
        }
    }
}

async fn run(
    svc: Arc<Service>,
    index: u32,
    status: Arc<Mutex<Status>>,
    mut stop: watch::Receiver<bool>,
    on_ready: Option<OnReady>,
) {
    let port = svc.port(index);
    let ready = |r: bool| {
        if let (Some(f), Some(p)) = (&on_ready, port) {
            f(p, r);
        }
    };
    let name = format!("{}[{index}]", svc.name);
    let log = svc.logs.as_ref().and_then(|l| {
        match RotatingFile::open(&l.dir, &format!("{}-{index}", svc.name), l.max_size, l.keep) {
            Ok(f) => Some(Arc::new(Mutex::new(f))),
            Err(e) => {
                warn!(instance = %name, dir = %l.dir.display(), error = %e, "Cannot open log file; output is dropped");
                None
            }
        }
    });
    let mut backoff = RestartBackoff::new(svc.backoff.clone());
    let mut exits: VecDeque<Instant> = VecDeque::new();
    loop {
        if *stop.borrow() {
            break;
        }
        lock(&status).state = State::Starting;
        let started = Instant::now();
        let (outcome, success) = match command(&svc, index).spawn() {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                {
                    let mut st = lock(&status);
                    st.pid = Some(pid);
                    st.started_at = Some(started);
                }
                info!(instance = %name, pid, port = ?svc.port(index), "Instance started");
                let out = child.stdout.take().map(|s| pump(s, log.clone(), None));
                let err = child
                    .stderr
                    .take()
                    .map(|s| pump(s, log.clone(), Some(status.clone())));
                enum Ended {
                    Exited(std::io::Result<std::process::ExitStatus>),
                    Stop,
                    Hung(String),
                }
                let ended = tokio::select! {
                    r = child.wait() => Ended::Exited(r),
                    _ = stop.changed() => Ended::Stop,
                    why = probes(&svc, index, &status, &ready) => Ended::Hung(why),
                };
                // Out of rotation before anything is stopped.
                ready(false);
                let exit = match ended {
                    Ended::Exited(r) => r,
                    Ended::Stop => {
                        stop_group(&mut child, pid, &svc).await;
                        break;
                    }
                    Ended::Hung(why) => {
                        warn!(instance = %name, pid, reason = %why, "Instance is not alive; stopping it");
                        stop_group(&mut child, pid, &svc).await;
                        Err(std::io::Error::other(why))
                    }
                };
                sys::kill_group(pid, libc::SIGKILL);
                // Let the pumps record the last lines (they end at EOF).
                for h in [out, err].into_iter().flatten() {
                    let _ = tokio::time::timeout(Duration::from_millis(200), h).await;
                }
                match exit {
                    Ok(s) => (describe(s), s.success()),
                    Err(e) => (format!("killed: {e}"), false),
                }
            }
            Err(e) => (format!("spawn failed: {e}"), false),
        };
        let uptime = started.elapsed();
        {
            let mut st = lock(&status);
            st.pid = None;
            st.last_exit = Some(outcome.clone());
        }
        let restart = match svc.restart {
            Restart::Always => true,
            Restart::OnFailure => !success,
            Restart::Never => false,
        };
        if !restart {
            info!(instance = %name, exit = %outcome, "Instance exited; not restarted (restart policy)");
            lock(&status).state = State::Stopped;
            break;
        }
        let now = Instant::now();
        exits.push_back(now);
        if let Some(g) = &svc.give_up {
            while exits
                .front()
                .is_some_and(|t| now.duration_since(*t) > g.within)
            {
                exits.pop_front();
            }
            if exits.len() as u32 > g.restarts {
                let tail: Vec<String> = lock(&status).stderr_tail.iter().cloned().collect();
                warn!(instance = %name, exit = %outcome, restarts = exits.len(), within_secs = g.within.as_secs_f64(), stderr_tail = ?tail, "Instance failed: giving up");
                lock(&status).state = State::Failed;
                break;
            }
        }
        let delay = backoff.on_exit(uptime);
        let crash_looping = backoff.quick_exits >= CRASH_LOOP_AFTER;
        {
            let mut st = lock(&status);
            st.restarts += 1;
            if st.delays.len() == 16 {
                st.delays.pop_front();
            }
            st.delays.push_back(delay);
            let was = st.state;
            st.state = if crash_looping {
                State::CrashLooping
            } else {
                State::Restarting
            };
            if crash_looping && was != State::CrashLooping {
                let tail: Vec<String> = st.stderr_tail.iter().cloned().collect();
                warn!(instance = %name, exit = %outcome, quick_exits = backoff.quick_exits, stderr_tail = ?tail, "Instance is crash-looping");
            } else {
                info!(instance = %name, exit = %outcome, uptime_secs = uptime.as_secs_f64(), delay_ms = delay.as_millis() as u64, "Instance exited; restarting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    let mut st = lock(&status);
    if st.state != State::Failed {
        st.state = State::Stopped;
    }
    st.pid = None;
}
