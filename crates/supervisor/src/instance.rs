//! One instance of a service: spawn, watch, restart with backoff, drain and
//! stop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::fd::OwnedFd;

use centinela_config::{Restart, Service};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::RestartBackoff;
use crate::cgroup::{Cgroup, Usage};
use crate::logs::RotatingFile;
use crate::ports::Ports;
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
    /// Out of rotation, letting its requests in flight finish before it is
    /// stopped.
    Draining,
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
            State::Draining => "draining",
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
    /// The instance number, 0..instances (`CENTINELA_INSTANCE`).
    pub slot: u32,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub started_at: Option<Instant>,
    pub restarts: u32,
    /// "exit code 3", "signal 9 (SIGKILL)", "spawn failed: ...".
    pub last_exit: Option<String>,
    pub stderr_tail: VecDeque<String>,
    /// The most recent restart delays, newest last (at most 16).
    pub delays: VecDeque<Duration>,
    /// CPU use of the whole process group over the last sample, in percent
    /// of one core, and its resident memory (see `stats`).
    pub cpu_percent: Option<f64>,
    pub rss_kib: Option<u64>,
    /// CPU seconds used by the instance's process groups, every run of
    /// this slot since it was shown.
    pub cpu_seconds: f64,
    /// The running instance's cgroup, when `limits` asks for one: CPU%,
    /// RSS and CPU time then come from it.
    pub cgroup: Option<Arc<Cgroup>>,
    /// The cgroup's counts at the last sample.
    pub cgroup_seen: Option<(Usage, Instant)>,
    /// Time the slot's instances waited because their CPU quota ran out,
    /// and how many quota periods that happened in (every run).
    pub throttled_seconds: f64,
    pub throttled_periods: u64,
}

impl Status {
    /// Reads the cgroup's counts: CPU% since the last sample, RSS now, and
    /// the CPU and throttled time added since.
    pub fn sample_cgroup(&mut self) {
        let Some(cg) = &self.cgroup else { return };
        let (now, u) = (Instant::now(), cg.usage());
        let before = self.cgroup_seen.replace((u, now));
        self.rss_kib = u.memory_bytes.map(|b| b / 1024);
        let Some((prev, at)) = before else {
            self.cpu_seconds += u.cpu.unwrap_or_default().as_secs_f64();
            self.throttled_seconds += u.throttled.as_secs_f64();
            self.throttled_periods += u.throttled_periods;
            return;
        };
        let used = u
            .cpu
            .unwrap_or_default()
            .saturating_sub(prev.cpu.unwrap_or_default());
        let secs = now.duration_since(at).as_secs_f64();
        self.cpu_percent =
            (secs > 0.0 && u.cpu.is_some()).then(|| used.as_secs_f64() / secs * 100.0);
        self.cpu_seconds += used.as_secs_f64();
        self.throttled_seconds += u.throttled.saturating_sub(prev.throttled).as_secs_f64();
        self.throttled_periods += u.throttled_periods.saturating_sub(prev.throttled_periods);
    }
}

/// Where instances take and leave traffic: the gateway's upstreams.
pub trait Membership: Send + Sync {
    /// Adds (`ready`) or removes `addr` as a server of `upstream`.
    fn set(&self, upstream: &str, addr: SocketAddr, ready: bool);
    /// Requests in flight to `addr`, including those of a server that has
    /// just been removed.
    fn in_flight(&self, upstream: &str, addr: SocketAddr) -> u32;
    /// Removes `addr`, which stopped answering, and ends the requests
    /// waiting on it instead of letting them run into their timeout.
    fn fail(&self, upstream: &str, addr: SocketAddr) {
        self.set(upstream, addr, false);
    }
}

/// A log file shared by the successive instances of one slot.
pub type SharedLog = Arc<Mutex<RotatingFile>>;

/// Everything an instance is started with.
pub struct Setup {
    pub svc: Arc<Service>,
    pub slot: u32,
    pub port: Option<u16>,
    pub member: Option<Arc<dyn Membership>>,
    pub log: Option<SharedLog>,
    /// Turns true when centinela shuts down: stop at once, without draining.
    pub closing: Option<watch::Receiver<bool>>,
    /// The service's port book: `port` is held in it (see [`Ports::hold`]);
    /// the instance gives its port back once its process group is gone,
    /// and takes a spare one from it to replace a hung process at once.
    pub ports: Arc<Ports>,
}

/// How to stop an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopMode {
    /// Leave the upstream, wait for requests in flight (up to `stop.drain`),
    /// then the stop signal.
    Drain,
    /// The stop signal at once (the gateway has already drained).
    Now,
}

pub struct Instance {
    svc: Arc<Service>,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<Option<StopMode>>,
    state: watch::Receiver<State>,
    task: JoinHandle<()>,
}

fn lock(s: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Instance {
    /// Starts instance `slot` of `svc` on its first port, on its own (no
    /// upstream), with its own log file, and keeps it running until stopped.
    pub fn spawn(svc: Arc<Service>, slot: u32) -> Instance {
        let log = svc.logs.as_ref().and_then(|l| open_log(&svc.name, slot, l));
        let ports = Arc::new(Ports::default());
        let port = svc.port(slot);
        if let Some(p) = port {
            ports.hold(p);
        }
        Self::start(Setup {
            port,
            svc,
            slot,
            member: None,
            log,
            closing: None,
            ports,
        })
    }

    /// Starts an instance and keeps it running until stopped.
    pub fn start(setup: Setup) -> Instance {
        let status = Arc::new(Mutex::new(Status {
            state: State::Starting,
            slot: setup.slot,
            pid: None,
            port: setup.port,
            started_at: None,
            restarts: 0,
            last_exit: None,
            stderr_tail: VecDeque::new(),
            delays: VecDeque::new(),
            cpu_percent: None,
            rss_kib: None,
            cpu_seconds: 0.0,
            cgroup: None,
            cgroup_seen: None,
            throttled_seconds: 0.0,
            throttled_periods: 0,
        }));
        let (stop, stop_rx) = watch::channel(None);
        let (state_tx, state) = watch::channel(State::Starting);
        let svc = setup.svc.clone();
        let task = tokio::spawn(run(setup, status.clone(), state_tx, stop_rx));
        Instance {
            svc,
            status,
            stop,
            state,
            task,
        }
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// A handle on the live status, for status pages.
    pub fn status_handle(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    /// The settings this instance runs with.
    pub fn spec(&self) -> Arc<Service> {
        self.svc.clone()
    }

    pub fn port(&self) -> Option<u16> {
        lock(&self.status).port
    }

    /// Waits until the instance is ready. Fails if it exits first, or stops,
    /// or is not ready within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                let state = *rx.borrow_and_update();
                let st = self.status();
                if st.restarts > 0 || !matches!(state, State::Starting | State::Ready) {
                    return Err(format!(
                        "exited before it was ready ({}){}",
                        st.last_exit.as_deref().unwrap_or("no exit status"),
                        st.stderr_tail
                            .back()
                            .map(|l| format!("; last stderr line: {l}"))
                            .unwrap_or_default()
                    ));
                }
                if state == State::Ready {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err("its task ended".to_string());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(format!("not ready after {:?} (ready_timeout)", timeout)),
        }
    }

    /// Stops the instance at once (stop signal to its process group, SIGKILL
    /// after the stop timeout) and waits until it is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(Some(StopMode::Now));
        let _ = self.task.await;
    }

    /// Takes the instance out of its upstream, lets its requests in flight
    /// finish (up to `stop.drain`), then stops it and waits until it is gone.
    pub async fn drain_and_stop(self) {
        let _ = self.stop.send(Some(StopMode::Drain));
        let _ = self.task.await;
    }
}

/// Opens slot `slot`'s log file, `DIR/NAME-SLOT.log`.
pub fn open_log(service: &str, slot: u32, l: &centinela_config::Logs) -> Option<SharedLog> {
    match RotatingFile::open(&l.dir, &format!("{service}-{slot}"), l.max_size, l.keep) {
        Ok(f) => Some(Arc::new(Mutex::new(f))),
        Err(e) => {
            warn!(instance = %format!("{service}[{slot}]"), dir = %l.dir.display(), error = %e, "Cannot open log file; output is dropped");
            None
        }
    }
}

fn command(
    svc: &Service,
    slot: u32,
    port: Option<u16>,
    cgroup: Option<&Cgroup>,
) -> tokio::process::Command {
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
    cmd.env("CENTINELA_INSTANCE", slot.to_string());
    // Marks the process as ours, so that a later centinela can find it if
    // it outlives this one (see `stats::sweep_orphans`).
    cmd.env(crate::stats::OWNER_ENV, crate::stats::owner_tag());
    cmd.current_dir(&svc.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: stopping it stops its children too.
        .process_group(0)
        .kill_on_drop(true);
    sys::die_with_parent(&mut cmd);
    let procs = match cgroup.map(Cgroup::procs_files) {
        Some(Ok(fds)) => fds,
        Some(Err(e)) => {
            warn!(service = %svc.name, error = %e, "Cannot join the instance's cgroup; it runs without its limits");
            Vec::new()
        }
        None => Vec::new(),
    };
    sys::prepare_child(&mut cmd, procs, svc.limits.nofile);
    cmd
}

/// A cgroup for one run of an instance, with the service's limits; none
/// when it asks for no limit, or (logged once) when the host gives none.
fn make_cgroup(svc: &Service, slot: u32) -> Option<Arc<Cgroup>> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !svc.limits.needs_cgroup() {
        return None;
    }
    let made = crate::cgroup::cgroups()
        .map_err(str::to_string)
        .and_then(|c| {
            c.create(&format!("{}-{slot}", svc.name), &svc.limits)
                .map_err(|e| e.to_string())
        });
    match made {
        Ok(cg) => Some(Arc::new(cg)),
        Err(e) => {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(service = %svc.name, error = %e, "Cannot create cgroups: memory, cpu and pids limits are not applied (logged once)");
            }
            None
        }
    }
}

/// The end of one run in its cgroup: the last counts into the status, the
/// cgroup removed (what is left in it killed). True when the OOM killer
/// ended a process of it: the main one (signal 9) or a child, which a
/// wrapper then reports as its own exit.
async fn close_cgroup(status: &Mutex<Status>) -> bool {
    let Some(cg) = lock(status).cgroup.clone() else {
        return false;
    };
    let oom = {
        let mut st = lock(status);
        st.sample_cgroup();
        st.cgroup = None;
        st.cgroup_seen = None;
        cg.usage().oom_kills > 0
    };
    let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
    oom
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown exit".to_string(),
    }
}

/// An output line longer than this is cut; the rest of it, up to its
/// newline, is dropped and the line marked.
pub const MAX_LINE: usize = 16 * 1024;
const TRUNCATED: &str = " [truncated]";

/// Splits a child's output into lines: bytes, not text, so that no byte an
/// instance writes (an invalid UTF-8 request path it logs, say) can stop
/// the reading; invalid UTF-8 is replaced, lines are capped at
/// [`MAX_LINE`].
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    /// Dropping the rest of a line that was cut.
    skipping: bool,
}

impl Lines {
    /// Feeds `data`; calls `out` with each complete line.
    fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(String)) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (piece, rest, ended) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if !self.skipping {
                let room = MAX_LINE - self.partial.len();
                self.partial
                    .extend_from_slice(&piece[..piece.len().min(room)]);
                if piece.len() > room {
                    let mut line = String::from_utf8_lossy(&self.partial).into_owned();
                    line.push_str(TRUNCATED);
                    out(line);
                    self.partial.clear();
                    self.skipping = !ended;
                    continue;
                }
            }
            if ended {
                if !self.skipping {
                    let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
                    out(String::from_utf8_lossy(line).into_owned());
                }
                self.partial.clear();
                self.skipping = false;
            }
        }
    }

    /// What is left at the end of the output.
    fn finish(&mut self, out: &mut impl FnMut(String)) {
        if !self.partial.is_empty() && !self.skipping {
            out(String::from_utf8_lossy(&self.partial).into_owned());
        }
        self.partial.clear();
    }
}

/// Copies a child's output lines to its log file, keeping a stderr tail.
/// Reads until the child closes its end, whatever it writes.
fn pump(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Option<Arc<Mutex<RotatingFile>>>,
    tail: Option<Arc<Mutex<Status>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = stream;
        let mut buf = vec![0u8; 8192];
        let mut lines = Lines::default();
        let mut emit = |line: String| {
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
        };
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => lines.feed(&buf[..n], &mut emit),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        lines.finish(&mut emit);
    })
}

/// Waits until the instance's process has exited, without reaping it: its
/// pid, which is also its process group's id, cannot be reused until it is
/// reaped, so the group can still be killed safely. Without pidfds (Linux
/// before 5.3) it reaps, as `wait` does.
async fn exited(child: &mut tokio::process::Child, pidfd: Option<&AsyncFd<OwnedFd>>) {
    match pidfd {
        Some(fd) => {
            let _ = fd.readable().await;
        }
        None => {
            let _ = child.wait().await;
        }
    }
}

/// Stops the whole group: the stop signal, then SIGKILL after `grace`;
/// then what is left of the group, before the instance is reaped.
async fn stop_group(child: &mut tokio::process::Child, pid: u32, svc: &Service, grace: Duration) {
    let pidfd = sys::watch_exit(pid);
    sys::kill_group(pid, svc.stop.signal.number);
    // As systemd does: a stopped (SIGSTOP) process acts on the signal only
    // once it runs again.
    sys::kill_group(pid, libc::SIGCONT);
    if tokio::time::timeout(grace, exited(child, pidfd.as_ref()))
        .await
        .is_err()
    {
        warn!(service = %svc.name, pid, grace_secs = grace.as_secs_f64(), "Instance ignored the stop signal; sending SIGKILL");
        sys::kill_group(pid, libc::SIGKILL);
        exited(child, pidfd.as_ref()).await;
    }
    // Leftover members of the group never outlive the instance.
    sys::kill_group(pid, libc::SIGKILL);
    let _ = child.wait().await;
}

/// Lets a stopped instance's output pumps record its last lines (they end
/// at end of file), within a bound.
async fn flush(pumps: [Option<JoinHandle<()>>; 2]) {
    for h in pumps.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(200), h).await;
    }
}

/// Waits until the instance is ready (its readiness probe, else a TCP connect
/// to its port, else at once), reports it, then runs the liveness probe and
/// returns when it failed `failures` times in a row.
async fn probes(
    svc: &Service,
    port: Option<u16>,
    set_state: &(dyn Fn(State) + Sync),
    ready: &(dyn Fn(bool) + Sync),
) -> String {
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
    set_state(State::Ready);
    ready(true);
    let Some(l) = &svc.liveness else {
        return std::future::pending().await;
    };
    // A check starts every `interval` (as Kubernetes' `periodSeconds`), or
    // as soon as the previous one timed out if that took longer: a frozen
    // process is found after `failures` × max(interval, timeout).
    let mut every = tokio::time::interval_at(Instant::now() + l.interval, l.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    loop {
        every.tick().await;
        match probe::check(l, port, &svc.workdir).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= l.failures {
                    return format!("liveness failed {failures}×: {e}");
                }
            }
        }
    }
}

/// Resolves when centinela shuts down (never, for an instance without a
/// `closing` signal).
async fn shutting_down(closing: &mut Option<watch::Receiver<bool>>) {
    match closing {
        Some(c) => {
            let _ = c.wait_for(|c| *c).await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when a stop is asked for, by the instance's owner or by
/// centinela shutting down (which never drains).
async fn stop_asked(
    stop: &mut watch::Receiver<Option<StopMode>>,
    closing: &mut Option<watch::Receiver<bool>>,
) -> StopMode {
    let own = async {
        match stop.wait_for(Option::is_some).await {
            Ok(m) => (*m).unwrap_or(StopMode::Now),
            Err(_) => StopMode::Now,
        }
    };
    tokio::select! {
        m = own => m,
        _ = shutting_down(closing) => StopMode::Now,
    }
}

/// Resolves when a stop without drain is asked for (a drain under way is
/// cut short).
async fn stop_now(
    stop: &mut watch::Receiver<Option<StopMode>>,
    closing: &mut Option<watch::Receiver<bool>>,
) {
    let own = async {
        let _ = stop.wait_for(|m| *m == Some(StopMode::Now)).await;
    };
    tokio::select! {
        _ = own => {}
        _ = shutting_down(closing) => {}
    }
}

/// Waits until no request is in flight to the instance, at most `limit`.
async fn drain(member: &dyn Membership, upstream: &str, addr: SocketAddr, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    loop {
        let n = member.in_flight(upstream, addr);
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(
    setup: Setup,
    status: Arc<Mutex<Status>>,
    state_tx: watch::Sender<State>,
    mut stop: watch::Receiver<Option<StopMode>>,
) {
    let Setup {
        svc,
        slot,
        mut port,
        member,
        log,
        mut closing,
        ports,
    } = setup;
    let set_state = |s: State| {
        lock(&status).state = s;
        state_tx.send_replace(s);
    };
    let name = format!("{}[{slot}]", svc.name);
    let mut backoff = RestartBackoff::new(svc.backoff.clone());
    let mut exits: VecDeque<Instant> = VecDeque::new();
    loop {
        if stop.borrow().is_some() || closing.as_ref().is_some_and(|c| *c.borrow()) {
            break;
        }
        // The port changes when a hung process is replaced on a spare one.
        let upstream_addr = match (&member, &svc.upstream, port) {
            (Some(m), Some(up), Some(p)) => {
                Some((m.clone(), up.clone(), SocketAddr::from(([127, 0, 0, 1], p))))
            }
            _ => None,
        };
        let ready = |r: bool| {
            if let Some((m, up, addr)) = &upstream_addr {
                m.set(up, *addr, r);
            }
        };
        set_state(State::Starting);
        let started = Instant::now();
        let mut hung = false;
        let cgroup = make_cgroup(&svc, slot);
        let spawned = command(&svc, slot, port, cgroup.as_deref()).spawn();
        lock(&status).cgroup = cgroup;
        let (outcome, success) = match spawned {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                {
                    let mut st = lock(&status);
                    st.pid = Some(pid);
                    st.started_at = Some(started);
                }
                // Killed with its group should centinela die; until the
                // group is gone (the end of this block, or of the task
                // that kills a hung one).
                let listed = crate::reaper::Listed::new(pid);
                info!(instance = %name, pid, port = port.unwrap_or(0), "Instance started");
                let pidfd = sys::watch_exit(pid);
                let out = child.stdout.take().map(|s| pump(s, log.clone(), None));
                let err = child
                    .stderr
                    .take()
                    .map(|s| pump(s, log.clone(), Some(status.clone())));
                enum Ended {
                    Exited(std::io::Result<std::process::ExitStatus>),
                    Stop(StopMode),
                    Hung(String),
                }
                let ended = tokio::select! {
                    () = exited(&mut child, pidfd.as_ref()) => {
                        // Exited, not yet reaped: the group goes first.
                        sys::kill_group(pid, libc::SIGKILL);
                        Ended::Exited(child.wait().await)
                    }
                    m = stop_asked(&mut stop, &mut closing) => Ended::Stop(m),
                    why = probes(&svc, port, &set_state, &ready) => Ended::Hung(why),
                };
                // Out of rotation before anything is stopped; a hung
                // instance's requests in flight are ended too.
                match (&ended, &upstream_addr) {
                    (Ended::Hung(_), Some((m, up, addr))) => m.fail(up, *addr),
                    _ => ready(false),
                }
                match ended {
                    Ended::Exited(r) => {
                        flush([out, err]).await;
                        match r {
                            Ok(s) => (describe(s), s.success()),
                            Err(e) => (format!("lost: {e}"), false),
                        }
                    }
                    Ended::Stop(mode) => {
                        if let (StopMode::Drain, Some((m, up, addr))) = (mode, &upstream_addr) {
                            set_state(State::Draining);
                            let t = Instant::now();
                            let left = tokio::select! {
                                n = drain(&**m, up, *addr, svc.stop.drain) => n,
                                _ = stop_now(&mut stop, &mut closing) => m.in_flight(up, *addr),
                            };
                            if left > 0 {
                                warn!(instance = %name, pid, in_flight = left, drain_secs = svc.stop.drain.as_secs_f64(), "Drain time is up; stopping with requests in flight");
                            } else {
                                info!(instance = %name, pid, drain_ms = t.elapsed().as_millis() as u64, "Instance drained");
                            }
                        }
                        stop_group(&mut child, pid, &svc, svc.stop.timeout).await;
                        flush([out, err]).await;
                        close_cgroup(&status).await;
                        info!(instance = %name, pid, "Instance stopped");
                        break;
                    }
                    Ended::Hung(why) => {
                        hung = true;
                        let grace = svc.stop.liveness_grace;
                        // A process that ignores its liveness probe is not
                        // trusted to drain: the stop signal, SIGKILL after
                        // `liveness_grace`. Its replacement starts at once
                        // on a spare port when there is one.
                        match port.and_then(|_| ports.take(&svc, None)) {
                            Some(spare) => {
                                warn!(instance = %name, pid, reason = %why, port = port.unwrap_or(0), new_port = spare, "Instance is not alive; replacing it on a spare port while it is killed");
                                let (svc, ports, old) = (svc.clone(), ports.clone(), port);
                                port = Some(spare);
                                let cgroup = {
                                    let mut st = lock(&status);
                                    st.port = port;
                                    st.sample_cgroup();
                                    st.cgroup_seen = None;
                                    st.cgroup.take()
                                };
                                tokio::spawn(async move {
                                    stop_group(&mut child, pid, &svc, grace).await;
                                    drop(listed);
                                    flush([out, err]).await;
                                    if let Some(cg) = cgroup {
                                        let _ =
                                            tokio::task::spawn_blocking(move || cg.remove()).await;
                                    }
                                    if let Some(p) = old {
                                        ports.release(p);
                                    }
                                });
                            }
                            None => {
                                warn!(instance = %name, pid, reason = %why, "Instance is not alive; killing it");
                                stop_group(&mut child, pid, &svc, grace).await;
                                flush([out, err]).await;
                            }
                        }
                        (format!("killed ({why})"), false)
                    }
                }
            }
            Err(e) => (format!("spawn failed: {e}"), false),
        };
        let outcome = match (close_cgroup(&status).await, svc.limits.memory) {
            (true, Some(m)) => format!(
                "OOM-killed (memory limit {})",
                crate::cgroup::format_bytes(m)
            ),
            _ => outcome,
        };
        let uptime = started.elapsed();
        {
            let mut st = lock(&status);
            st.pid = None;
            st.cpu_percent = None;
            st.rss_kib = None;
            st.last_exit = Some(outcome.clone());
        }
        let restart = match svc.restart {
            Restart::Always => true,
            Restart::OnFailure => !success,
            Restart::Never => false,
        };
        if !restart {
            info!(instance = %name, exit = %outcome, "Instance exited; not restarted (restart policy)");
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
                set_state(State::Failed);
                break;
            }
        }
        let delay = backoff.on_exit(uptime);
        let crash_looping = backoff.quick_exits >= CRASH_LOOP_AFTER;
        // A hung process is already out and being killed: its replacement
        // starts at once, unless hangs come as fast as a crash loop.
        let delay = if hung && !crash_looping {
            Duration::ZERO
        } else {
            delay
        };
        let was = {
            let mut st = lock(&status);
            st.restarts += 1;
            if st.delays.len() == 16 {
                st.delays.pop_front();
            }
            st.delays.push_back(delay);
            st.state
        };
        set_state(if crash_looping {
            State::CrashLooping
        } else {
            State::Restarting
        });
        if crash_looping && was != State::CrashLooping {
            let tail: Vec<String> = lock(&status).stderr_tail.iter().cloned().collect();
            warn!(instance = %name, exit = %outcome, quick_exits = backoff.quick_exits, stderr_tail = ?tail, "Instance is crash-looping");
        } else {
            info!(instance = %name, exit = %outcome, uptime_secs = uptime.as_secs_f64(), delay_ms = delay.as_millis() as u64, "Instance exited; restarting");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_asked(&mut stop, &mut closing) => break,
        }
    }
    {
        let mut st = lock(&status);
        st.pid = None;
        st.cpu_percent = None;
        st.rss_kib = None;
    }
    // Its process group is gone.
    if let Some(p) = port {
        ports.release(p);
    }
    if *state_tx.borrow() != State::Failed {
        set_state(State::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for p in pieces {
            lines.feed(p, &mut |l| out.push(l));
        }
        lines.finish(&mut |l| out.push(l));
        out
    }

    #[test]
    fn output_is_read_as_bytes_whatever_it_holds() {
        assert_eq!(split(&[b"a\nb", b"c\r\nd"]), ["a", "bc", "d"]);
        // Invalid UTF-8 is replaced, and reading goes on.
        assert_eq!(
            split(&[b"GET /\xff\xfe HTTP/1.1\n", b"next\n"]),
            ["GET /\u{fffd}\u{fffd} HTTP/1.1", "next"]
        );
        // An endless line is cut at 16 KiB, its rest dropped.
        let long = vec![b'x'; 100 * 1024];
        let out = split(&[&long, &long, b"tail\nafter\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE + TRUNCATED.len());
        assert!(out[0].ends_with(TRUNCATED));
        assert_eq!(out[1], "after");
        // Exactly at the cap, ended by a newline: kept whole.
        let exact = [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat();
        assert_eq!(split(&[&exact]), ["y".repeat(MAX_LINE)]);
    }

    #[tokio::test]
    async fn the_pump_keeps_reading_past_invalid_bytes_and_long_lines() {
        let (mut w, r) = tokio::io::duplex(64);
        let dir = std::env::temp_dir().join(format!("centinela-pump-{}", std::process::id()));
        let log = Arc::new(Mutex::new(
            RotatingFile::open(&dir, "p", 1 << 30, 1).unwrap(),
        ));
        let task = pump(r, Some(log), None);
        use tokio::io::AsyncWriteExt;
        w.write_all(b"\xc3(\n").await.unwrap();
        w.write_all(&vec![b'z'; 40 * 1024]).await.unwrap();
        w.write_all(b"\nlast\n").await.unwrap();
        drop(w);
        task.await.unwrap();
        let text = std::fs::read_to_string(dir.join("p.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{:?}", &text[..80.min(text.len())]);
        assert_eq!(lines[0], "\u{fffd}(");
        assert!(lines[1].ends_with(TRUNCATED));
        assert_eq!(lines[2], "last");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
