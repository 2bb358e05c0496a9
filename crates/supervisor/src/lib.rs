//! centinela's supervisor: runs each service's instances, restarts crashes
//! with exponential backoff, marks crash loops, gives up when told to, stops
//! whole process groups, rotates logs, and changes running services without
//! dropping a request: rolling restarts, scaling, stop and start.
//!
//! [`Supervisor`] owns every service. Instances take and leave traffic
//! through a [`Membership`] (the gateway's upstreams). Operations on one
//! service are serialised; a rolling restart replaces one instance at a
//! time: start the replacement (on a spare port of the pool when there is
//! one, else on the same port once the old instance is gone), wait until it
//! is ready, take the old one out of rotation, drain it, stop it.
#![deny(unsafe_code)]

pub mod backoff;
pub mod cgroup;
pub mod instance;
pub mod logs;
mod metrics;
pub mod ports;
pub mod probe;
mod reaper;
pub mod scale;
pub mod stats;
mod sys;

pub use instance::{Instance, Membership, Setup, SharedLog, State, Status};
pub use ports::Ports;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use centinela_config::Service;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why an operation on a service did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// No service of that name is configured.
    NotFound(String),
    /// The operation started but did not finish; the text says where.
    Failed(String),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::NotFound(n) => write!(f, "no service {n:?} is configured"),
            OpError::Failed(why) => f.write_str(why),
        }
    }
}

/// Every service's instances.
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    member: Option<Arc<dyn Membership>>,
    services: Mutex<Vec<Arc<Svc>>>,
    /// Reloads are applied one after the other, in order.
    apply: tokio::sync::Mutex<()>,
    closing: watch::Sender<bool>,
}

/// One service.
struct Svc {
    name: String,
    group: tokio::sync::Mutex<Group>,
    /// Instances shown on the status page: the running ones, replacements
    /// being started and old ones draining, or the last ones when stopped.
    shown: Mutex<Vec<Arc<Mutex<Status>>>>,
    /// A copy of the group's settings, readable while an operation runs.
    spec: Mutex<Arc<Service>>,
    /// Restarts and CPU seconds of instances no longer shown, so that the
    /// service's totals never go down.
    retired: Mutex<(u64, f64, f64)>,
    /// `scale`: the decisions' state, what was decided last, and how many
    /// times it went up and down.
    autoscaler: Mutex<Option<scale::Autoscaler>>,
    scaled: Mutex<Scaled>,
}

#[derive(Default)]
struct Scaled {
    /// The instance count the service should run (with `scale`, set by
    /// the autoscaler; else `instances`).
    desired: u32,
    last: Option<(std::time::SystemTime, scale::Decision)>,
    ups: u64,
    downs: u64,
}

impl Svc {
    /// Adds what a hidden instance used to the service's totals.
    fn keep_totals(&self, st: &Status) {
        let mut r = lock(&self.retired);
        r.0 += u64::from(st.restarts);
        r.1 += st.cpu_seconds;
        r.2 += st.throttled_seconds;
    }

    fn set_spec(&self, g: &mut Group, spec: Arc<Service>) {
        *lock(&self.spec) = spec.clone();
        let mut a = lock(&self.autoscaler);
        if a.as_ref().map(|a| Some(a.config())) != Some(spec.scale.as_ref()) {
            *a = spec.scale.clone().map(scale::Autoscaler::new);
        }
        // Without `scale`, `instances`; with it, the count decided so far
        // within the new bounds.
        g.desired = spec
            .scale
            .as_ref()
            .map(|sc| g.desired.unwrap_or(spec.instances).clamp(sc.min, sc.max));
        lock(&self.scaled).desired = g.want_of(&spec);
        g.spec = spec;
    }
}

struct Group {
    spec: Arc<Service>,
    /// The running instances; `slots[i]` is instance `i`. Empty when stopped.
    slots: Vec<Instance>,
    stopped: bool,
    logs: HashMap<u32, SharedLog>,
    /// Which ports of the pool are held; shared with the instances, which
    /// give theirs back once their process group is gone.
    ports: Arc<Ports>,
    /// With `scale`: the count the autoscaler decided.
    desired: Option<u32>,
}

impl Group {
    /// How many instances to run.
    fn want(&self) -> u32 {
        self.want_of(&self.spec)
    }

    fn want_of(&self, spec: &Service) -> u32 {
        self.desired.unwrap_or(spec.instances)
    }

    /// Drains and stops every instance at once; the service stays stopped.
    async fn stop_all(&mut self) {
        let stops: Vec<_> = self.slots.drain(..).map(|i| i.drain_and_stop()).collect();
        futures_join(stops).await;
        self.stopped = true;
    }
}

/// A cheap, clonable view of every instance's status.
#[derive(Clone)]
pub struct View(Arc<Inner>);

impl Supervisor {
    /// Kills what a dead centinela left behind, then starts `instances`
    /// processes of every service. Must be called inside a tokio runtime.
    pub fn start(services: &[Service], member: Option<Arc<dyn Membership>>) -> Supervisor {
        let swept = stats::sweep_orphans();
        if !swept.is_empty() {
            warn!(
                killed = swept.len(),
                "Killed processes left behind by a previous centinela"
            );
        }
        let inner = Arc::new(Inner {
            member,
            services: Mutex::new(Vec::new()),
            apply: tokio::sync::Mutex::new(()),
            closing: watch::Sender::new(false),
        });
        for spec in services {
            let svc = inner.add(spec.clone());
            // Nothing else can hold the lock of a service just added.
            if let Ok(mut g) = svc.group.try_lock() {
                inner.scale_up(&svc, &mut g);
            };
        }
        tokio::spawn(sample_stats(Arc::downgrade(&inner)));
        tokio::spawn(autoscale(Arc::downgrade(&inner)));
        Supervisor { inner }
    }

    pub fn view(&self) -> View {
        View(self.inner.clone())
    }

    /// Rolling restart of one service, one instance at a time; starts it if
    /// it was stopped. Returns once every instance has been replaced.
    pub async fn restart(&self, name: &str) -> Result<String, OpError> {
        let svc = self.inner.find(name)?;
        let mut g = svc.group.lock().await;
        if g.stopped {
            return self.inner.start_stopped(&svc, &mut g).await;
        }
        let spec = g.spec.clone();
        let n = g.slots.len();
        self.inner.roll(&svc, &mut g, spec).await?;
        Ok(format!("{name}: {n} instance(s) replaced one at a time"))
    }

    /// Drains and stops every instance of a service; it stays stopped until
    /// `start` or `restart`.
    pub async fn stop_service(&self, name: &str) -> Result<String, OpError> {
        let svc = self.inner.find(name)?;
        let mut g = svc.group.lock().await;
        if g.stopped {
            return Ok(format!("{name}: already stopped"));
        }
        let n = g.slots.len();
        g.stop_all().await;
        info!(service = name, "Service stopped");
        Ok(format!("{name}: {n} instance(s) drained and stopped"))
    }

    /// Starts a stopped service and waits until its instances are ready.
    pub async fn start_service(&self, name: &str) -> Result<String, OpError> {
        let svc = self.inner.find(name)?;
        let mut g = svc.group.lock().await;
        if !g.stopped {
            return Ok(format!("{name}: already running"));
        }
        self.inner.start_stopped(&svc, &mut g).await
    }

    /// Applies a reloaded configuration: new services start, removed ones
    /// stop, a change of `instances` alone scales, any other change rolls
    /// the instances onto the new settings. One line per service changed.
    pub async fn apply(&self, services: &[Service]) -> Vec<Result<String, OpError>> {
        let inner = &self.inner;
        let _order = inner.apply.lock().await;
        let mut out = Vec::new();
        let current: Vec<Arc<Svc>> = lock(&inner.services).clone();
        for svc in &current {
            if services.iter().all(|s| s.name != svc.name) {
                let mut g = svc.group.lock().await;
                g.stop_all().await;
                lock(&inner.services).retain(|s| !Arc::ptr_eq(s, svc));
                info!(service = %svc.name, "Service removed by reload; its instances are stopped");
                out.push(Ok(format!("{}: removed", svc.name)));
            }
        }
        for spec in services {
            let existing = lock(&inner.services)
                .iter()
                .find(|s| s.name == spec.name)
                .cloned();
            let Some(svc) = existing else {
                let svc = inner.add(spec.clone());
                let mut g = svc.group.lock().await;
                let new = inner.scale_up(&svc, &mut g);
                let r = inner.wait_all_ready(&g, new).await;
                info!(service = %spec.name, instances = spec.instances, "Service added by reload");
                out.push(r.map(|()| format!("{}: added", spec.name)));
                continue;
            };
            let mut g = svc.group.lock().await;
            if *g.spec == *spec {
                continue;
            }
            if g.spec.logs != spec.logs {
                g.logs.clear();
            }
            let new = Arc::new(spec.clone());
            if g.stopped {
                svc.set_spec(&mut g, new);
                out.push(Ok(format!(
                    "{}: stopped; the new settings apply when it starts",
                    spec.name
                )));
                continue;
            }
            let from = g.slots.len();
            let r = if g.spec.same_but_instances(spec) {
                svc.set_spec(&mut g, new);
                inner.scale(&svc, &mut g).await.map(|()| {
                    format!(
                        "{}: scaled from {from} to {} instance(s)",
                        spec.name, spec.instances
                    )
                })
            } else {
                inner.roll(&svc, &mut g, new).await.map(|()| {
                    format!(
                        "{}: rolled onto the new settings, {from} -> {} instance(s)",
                        spec.name, spec.instances
                    )
                })
            };
            out.push(r);
        }
        out
    }

    /// Stops every instance at once (the gateway has drained already) and
    /// waits until all are gone. Operations under way are cut short.
    pub async fn stop(&self) {
        self.inner.closing.send_replace(true);
        let services: Vec<Arc<Svc>> = lock(&self.inner.services).clone();
        let mut stops = Vec::new();
        for svc in &services {
            let mut g = svc.group.lock().await;
            stops.extend(g.slots.drain(..).map(|i| i.stop()));
        }
        futures_join(stops).await;
    }
}

/// Runs futures concurrently and waits for all of them.
async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(fs: Vec<F>) {
    let tasks: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    for t in tasks {
        let _ = t.await;
    }
}

impl Inner {
    fn find(&self, name: &str) -> Result<Arc<Svc>, OpError> {
        lock(&self.services)
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| OpError::NotFound(name.to_string()))
    }

    fn add(&self, spec: Service) -> Arc<Svc> {
        let spec = Arc::new(spec);
        let desired = spec
            .scale
            .as_ref()
            .map(|sc| spec.instances.clamp(sc.min, sc.max));
        let svc = Arc::new(Svc {
            name: spec.name.clone(),
            spec: Mutex::new(spec.clone()),
            group: tokio::sync::Mutex::new(Group {
                spec: spec.clone(),
                slots: Vec::new(),
                stopped: false,
                logs: HashMap::new(),
                ports: Arc::default(),
                desired,
            }),
            shown: Mutex::new(Vec::new()),
            retired: Mutex::new((0, 0.0, 0.0)),
            autoscaler: Mutex::new(spec.scale.clone().map(scale::Autoscaler::new)),
            scaled: Mutex::new(Scaled {
                desired: desired.unwrap_or(spec.instances),
                ..Scaled::default()
            }),
        });
        lock(&self.services).push(svc.clone());
        svc
    }

    fn closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Starts instance `slot` of `spec` on `port` (held in the port book
    /// by the caller) and shows it.
    fn launch(
        &self,
        svc: &Svc,
        g: &mut Group,
        spec: &Arc<Service>,
        slot: u32,
        port: Option<u16>,
    ) -> Instance {
        let log = match g.logs.get(&slot) {
            Some(l) => Some(l.clone()),
            None => {
                let l = spec
                    .logs
                    .as_ref()
                    .and_then(|l| instance::open_log(&spec.name, slot, l));
                if let Some(l) = &l {
                    g.logs.insert(slot, l.clone());
                }
                l
            }
        };
        let inst = Instance::start(Setup {
            svc: spec.clone(),
            slot,
            port,
            member: self.member.clone(),
            log,
            closing: Some(self.closing.subscribe()),
            ports: g.ports.clone(),
        });
        lock(&svc.shown).push(inst.status_handle());
        inst
    }

    /// Forgets a finished instance: hides it, keeps its totals. (It gave
    /// its port back itself.)
    fn retire(&self, svc: &Svc, status: &Arc<Mutex<Status>>) {
        lock(&svc.shown).retain(|s| !Arc::ptr_eq(s, status));
        svc.keep_totals(&lock(status));
    }

    /// Starts the slots missing up to `instances`, each on its own port
    /// (`first + slot` when free), without waiting.
    fn scale_up(&self, svc: &Svc, g: &mut Group) -> std::ops::Range<usize> {
        let spec = g.spec.clone();
        let from = g.slots.len();
        while g.slots.len() < g.want() as usize && !self.closing() {
            let slot = g.slots.len() as u32;
            let port = g.ports.take(&spec, spec.port(slot));
            let inst = self.launch(svc, g, &spec, slot, port);
            g.slots.push(inst);
        }
        from..g.slots.len()
    }

    /// Waits until the instances in `slots` (just started) are ready.
    async fn wait_all_ready(
        &self,
        g: &Group,
        slots: std::ops::Range<usize>,
    ) -> Result<(), OpError> {
        let mut errors = Vec::new();
        for inst in &g.slots[slots] {
            if let Err(e) = inst.wait_ready(g.spec.ready_timeout).await {
                errors.push(format!("{}[{}]: {e}", g.spec.name, inst.status().slot));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(OpError::Failed(errors.join("; ")))
        }
    }

    /// Drains and stops the slots beyond `want`, highest first.
    async fn shrink(&self, svc: &Svc, g: &mut Group, want: usize) {
        while g.slots.len() > want {
            let Some(old) = g.slots.pop() else { break };
            let status = old.status_handle();
            old.drain_and_stop().await;
            self.retire(svc, &status);
        }
    }

    /// Scales to `g.want()`: new slots start and must become ready; slots
    /// beyond the count are drained and stopped, highest first.
    async fn scale(&self, svc: &Svc, g: &mut Group) -> Result<(), OpError> {
        self.shrink(svc, g, g.want() as usize).await;
        let new = self.scale_up(svc, g);
        self.wait_all_ready(g, new).await
    }

    async fn start_stopped(&self, svc: &Svc, g: &mut Group) -> Result<String, OpError> {
        for st in std::mem::take(&mut *lock(&svc.shown)) {
            svc.keep_totals(&lock(&st));
        }
        g.stopped = false;
        let new = self.scale_up(svc, g);
        self.wait_all_ready(g, new).await?;
        info!(service = %svc.name, "Service started");
        Ok(format!(
            "{}: {} instance(s) started",
            svc.name,
            g.slots.len()
        ))
    }

    /// Replaces every instance with one of `spec`, one at a time, then scales
    /// to `spec.instances`. Stops at the first replacement that does not
    /// become ready; the instances not yet replaced keep serving.
    async fn roll(&self, svc: &Svc, g: &mut Group, spec: Arc<Service>) -> Result<(), OpError> {
        // The new settings are what the service should run from now on, even
        // if this roll stops half way: a later restart tries them again.
        svc.set_spec(g, spec.clone());
        self.shrink(svc, g, g.want() as usize).await;
        let started = std::time::Instant::now();
        for slot in 0..g.slots.len() {
            if self.closing() {
                return Err(OpError::Failed("centinela is shutting down".into()));
            }
            let old_status = g.slots[slot].status_handle();
            let old_port = g.slots[slot].port();
            let fail = |e: String| {
                OpError::Failed(format!(
                    "rolling restart of {} stopped at instance {slot}: replacement {e}",
                    spec.name
                ))
            };
            match g.ports.take(&spec, None) {
                Some(port) => {
                    // Surge: the replacement runs beside the old instance
                    // until it is ready.
                    let new = self.launch(svc, g, &spec, slot as u32, Some(port));
                    if let Err(e) = new.wait_ready(spec.ready_timeout).await {
                        let st = new.status_handle();
                        new.stop().await;
                        self.retire(svc, &st);
                        warn!(service = %spec.name, slot, error = %e, "Rolling restart stopped: the replacement did not become ready; the old instance keeps serving");
                        return Err(fail(e));
                    }
                    let old = std::mem::replace(&mut g.slots[slot], new);
                    old.drain_and_stop().await;
                    self.retire(svc, &old_status);
                    info!(service = %spec.name, slot, old_port = ?old_port, new_port = port, "Instance replaced");
                }
                None => {
                    // No spare port (or no ports): the old instance leaves
                    // first, and the replacement takes its port.
                    let old = g.slots.remove(slot);
                    let old_spec = old.spec();
                    old.drain_and_stop().await;
                    self.retire(svc, &old_status);
                    let port = g.ports.take(&spec, old_port);
                    if spec.ports.is_some() && port.is_none() {
                        let back = g.ports.take(&old_spec, old_port);
                        let back = self.launch(svc, g, &old_spec, slot as u32, back);
                        g.slots.insert(slot, back);
                        return Err(fail(format!(
                            "has no free port in {:?}",
                            spec.ports.unwrap_or_default()
                        )));
                    }
                    let new = self.launch(svc, g, &spec, slot as u32, port);
                    if let Err(e) = new.wait_ready(spec.ready_timeout).await {
                        // Roll back this slot: the settings it ran before.
                        let st = new.status_handle();
                        new.stop().await;
                        self.retire(svc, &st);
                        let port = g.ports.take(&old_spec, old_port);
                        let back = self.launch(svc, g, &old_spec, slot as u32, port);
                        let back_ready = back.wait_ready(old_spec.ready_timeout).await;
                        g.slots.insert(slot, back);
                        warn!(service = %spec.name, slot, error = %e, rolled_back = back_ready.is_ok(), "Rolling restart stopped: the replacement did not become ready; the instance runs its previous settings again");
                        return Err(fail(e));
                    }
                    g.slots.insert(slot, new);
                    info!(service = %spec.name, slot, port = ?port, "Instance replaced in place");
                }
            }
        }
        let new = self.scale_up(svc, g);
        self.wait_all_ready(g, new).await?;
        info!(service = %spec.name, instances = g.slots.len(), secs = started.elapsed().as_secs_f64(), "Rolling restart finished");
        Ok(())
    }
}

/// Once a second, for every service with `scale`: the signal, the
/// autoscaler's decision, and the change carried out in a task of its own
/// (a service busy with an operation skips its tick).
async fn autoscale(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing() {
            return;
        }
        let services: Vec<Arc<Svc>> = lock(&inner.services).clone();
        for svc in services {
            if lock(&svc.autoscaler).is_none() {
                continue;
            }
            let Ok(g) = svc.group.try_lock() else {
                continue;
            };
            if g.stopped {
                continue;
            }
            let current = g.slots.len() as u32;
            let ready: Vec<Status> = g
                .slots
                .iter()
                .map(Instance::status)
                .filter(|st| st.state == State::Ready)
                .collect();
            let all_ready = ready.len() as u32 == current;
            let signal = scale_signal(&inner, &g.spec, &ready);
            drop(g);
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let decision = lock(&svc.autoscaler).as_mut().and_then(|a| {
                a.observe(
                    tokio::time::Instant::now(),
                    wall,
                    current,
                    all_ready,
                    signal,
                )
            });
            let Some(d) = decision else { continue };
            info!(service = %svc.name, direction = d.direction.name(), from = d.from, to = d.to, signal = ?signal, ready = ready.len(), reason = %d.reason, "Scaling");
            {
                let mut sc = lock(&svc.scaled);
                match d.direction {
                    scale::Direction::Up => sc.ups += 1,
                    scale::Direction::Down => sc.downs += 1,
                }
                sc.desired = d.to;
                sc.last = Some((std::time::SystemTime::now(), d.clone()));
            }
            let inner = inner.clone();
            tokio::spawn(async move {
                let mut g = svc.group.lock().await;
                if g.stopped {
                    return;
                }
                g.desired = Some(d.to);
                if let Err(e) = inner.scale(&svc, &mut g).await {
                    warn!(service = %svc.name, error = %e, "Scaling did not finish");
                }
            });
        }
    }
}

/// The autoscaler's signal: requests in flight through the gateway per
/// ready instance, or their mean CPU% (of `limits.cpu`, or of one core).
/// `None` without a ready instance.
fn scale_signal(inner: &Inner, spec: &Service, ready: &[Status]) -> Option<f64> {
    if ready.is_empty() {
        return None;
    }
    let n = ready.len() as f64;
    match spec.scale.as_ref()?.target {
        centinela_config::ScaleTarget::InFlight(_) => {
            let (member, upstream) = (inner.member.as_ref()?, spec.upstream.as_ref()?);
            let total: u32 = ready
                .iter()
                .filter_map(|st| st.port)
                .map(|p| {
                    member.in_flight(upstream, std::net::SocketAddr::from(([127, 0, 0, 1], p)))
                })
                .sum();
            Some(f64::from(total) / n)
        }
        centinela_config::ScaleTarget::Cpu(_) => {
            let cores = spec.limits.cpu.unwrap_or(1.0);
            let sum: f64 = ready.iter().map(|st| st.cpu_percent.unwrap_or(0.0)).sum();
            Some(sum / n / cores)
        }
    }
}

/// Refreshes CPU% and RSS of every shown instance every 2 s, while the
/// supervisor lives.
async fn sample_stats(inner: Weak<Inner>) {
    let mut sampler = stats::Sampler::default();
    loop {
        let shown: Vec<Arc<Mutex<Status>>> = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing() {
                return;
            }
            let services = lock(&inner.services).clone();
            services
                .iter()
                .flat_map(|s| lock(&s.shown).clone())
                .collect()
        };
        // An instance in a cgroup is measured by its cgroup; the others
        // by their process group, from /proc.
        let mut pids: Vec<u32> = Vec::new();
        for st in &shown {
            let mut st = lock(st);
            if st.cgroup.is_some() {
                st.sample_cgroup();
            } else if let Some(p) = st.pid {
                pids.push(p);
            }
        }
        if pids.is_empty() {
            // Nothing to measure: do not scan /proc.
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        // Reading /proc is blocking file I/O, though fast.
        let sampled = tokio::task::spawn_blocking(move || sampler.sample_owned(&pids)).await;
        let Ok((s, by_pid)) = sampled else { return };
        sampler = s;
        for st in &shown {
            let mut st = lock(st);
            if st.cgroup.is_some() {
                continue;
            }
            if let Some((cpu, rss, used)) = st.pid.and_then(|p| by_pid.get(&p)) {
                st.cpu_percent = *cpu;
                st.rss_kib = Some(*rss);
                st.cpu_seconds += used;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

impl stats::Sampler {
    fn sample_owned(mut self, pgids: &[u32]) -> (Self, stats::Sampled) {
        let r = self.sample(pgids);
        (self, r)
    }
}

impl View {
    /// `{"services":[{"name":..,"instances":[{state, pid, port, ...}]}]}`
    pub fn to_json(&self) -> serde_json::Value {
        let services: Vec<Arc<Svc>> = lock(&self.0.services).clone();
        let services: Vec<serde_json::Value> = services
            .iter()
            .map(|svc| {
                let mut all: Vec<Status> = lock(&svc.shown).iter().map(|s| lock(s).clone()).collect();
                all.sort_by_key(|s| (s.slot, s.started_at));
                let instances: Vec<serde_json::Value> = all
                    .iter()
                    .map(|st| {
                        json!({
                            "index": st.slot,
                            "state": st.state.name(),
                            "pid": st.pid,
                            "port": st.port,
                            "uptime_secs": st.pid.and(st.started_at).map(|t| t.elapsed().as_secs_f64()),
                            "restarts": st.restarts,
                            "last_exit": st.last_exit,
                            "stderr_tail": st.stderr_tail,
                            "cpu_percent": st.cpu_percent.map(|c| (c * 10.0).round() / 10.0),
                            "rss_kib": st.rss_kib,
                            "cgroup": st.cgroup.is_some(),
                            "cpu_throttled_seconds": (st.throttled_seconds * 1000.0).round() / 1000.0,
                            "cpu_throttled_periods": st.throttled_periods,
                        })
                    })
                    .collect();
                let spec = lock(&svc.spec).clone();
                let mut out = json!({"name": svc.name, "upstream": spec.upstream, "instances": instances});
                if let Some(sc) = &spec.scale {
                    let s = lock(&svc.scaled);
                    let floor = lock(&svc.autoscaler).as_ref().map(|a| {
                        a.floor(std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()))
                    });
                    out["scale"] = json!({
                        "desired": s.desired,
                        "min": floor.unwrap_or(sc.min),
                        "max": sc.max,
                        "ups": s.ups,
                        "downs": s.downs,
                        "last": s.last.as_ref().map(|(at, d)| json!({
                            "at": at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                            "direction": d.direction.name(),
                            "from": d.from,
                            "to": d.to,
                            "reason": d.reason,
                        })),
                    });
                }
                out
            })
            .collect();
        json!({ "services": services })
    }
}
