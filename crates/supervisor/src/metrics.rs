//! The supervisor's metrics: instances by state, restarts, CPU and memory
//! per service, read from the instances' status when `/metrics` is served.

use std::sync::Arc;

use centinela_observe::{Collect, Exposition, Kind};

use crate::instance::{State, Status};
use crate::{lock, Svc, View};

const STATES: [State; 7] = [
    State::Starting,
    State::Ready,
    State::Draining,
    State::Restarting,
    State::CrashLooping,
    State::Failed,
    State::Stopped,
];

/// One service's figures at one moment.
struct Figures {
    name: String,
    by_state: [u32; STATES.len()],
    restarts: u64,
    cpu_seconds: f64,
    throttled_seconds: f64,
    memory_bytes: u64,
    desired: u32,
    /// Scale events up and down, with `scale`.
    scale_events: Option<(u64, u64)>,
}

fn figures(svc: &Svc) -> Figures {
    let shown: Vec<Status> = lock(&svc.shown).iter().map(|s| lock(s).clone()).collect();
    let (mut restarts, mut cpu_seconds, mut throttled_seconds) = *lock(&svc.retired);
    let mut f = Figures {
        name: svc.name.clone(),
        by_state: [0; STATES.len()],
        restarts: 0,
        cpu_seconds: 0.0,
        throttled_seconds: 0.0,
        memory_bytes: 0,
        desired: 0,
        scale_events: None,
    };
    {
        let sc = lock(&svc.scaled);
        f.desired = sc.desired;
        f.scale_events = lock(&svc.spec)
            .scale
            .is_some()
            .then_some((sc.ups, sc.downs));
    }
    for st in &shown {
        if let Some(i) = STATES.iter().position(|s| *s == st.state) {
            f.by_state[i] += 1;
        }
        restarts += u64::from(st.restarts);
        cpu_seconds += st.cpu_seconds;
        throttled_seconds += st.throttled_seconds;
        if st.pid.is_some() {
            f.memory_bytes += st.rss_kib.unwrap_or(0) * 1024;
        }
    }
    f.restarts = restarts;
    f.cpu_seconds = cpu_seconds;
    f.throttled_seconds = throttled_seconds;
    f
}

impl Collect for View {
    fn collect(&self, out: &mut Exposition) {
        let services: Vec<Arc<Svc>> = lock(&self.0.services).clone();
        let all: Vec<Figures> = services.iter().map(|s| figures(s)).collect();
        out.family(
            "centinela_service_instances",
            "Instances of the service, by state.",
            Kind::Gauge,
        );
        for f in &all {
            for (i, state) in STATES.iter().enumerate() {
                out.gauge(
                    &[("service", &f.name), ("state", state.name())],
                    f64::from(f.by_state[i]),
                );
            }
        }
        out.family(
            "centinela_service_restarts",
            "Restarts of the service's instances after they exited or were killed.",
            Kind::Counter,
        );
        for f in &all {
            out.counter(&[("service", &f.name)], f.restarts);
        }
        out.family(
            "centinela_service_cpu_seconds",
            "CPU time used by the service's instances and their children.",
            Kind::Counter,
        );
        for f in &all {
            out.counter_f64(&[("service", &f.name)], f.cpu_seconds);
        }
        out.family(
            "centinela_service_cpu_throttled_seconds",
            "Time the service's instances waited because their CPU limit (limits.cpu) was used up.",
            Kind::Counter,
        );
        for f in &all {
            out.counter_f64(&[("service", &f.name)], f.throttled_seconds);
        }
        out.family(
            "centinela_service_desired_instances",
            "Instances the service should run: its `instances`, or what the autoscaler decided.",
            Kind::Gauge,
        );
        for f in &all {
            out.gauge(&[("service", &f.name)], f64::from(f.desired));
        }
        out.family(
            "centinela_service_scale_events",
            "Changes of the instance count by the autoscaler, by direction.",
            Kind::Counter,
        );
        for f in &all {
            if let Some((up, down)) = f.scale_events {
                out.counter(&[("service", &f.name), ("direction", "up")], up);
                out.counter(&[("service", &f.name), ("direction", "down")], down);
            }
        }
        out.family(
            "centinela_service_memory_bytes",
            "Resident memory of the service's running instances and their children.",
            Kind::Gauge,
        );
        for f in &all {
            out.gauge(&[("service", &f.name)], f.memory_bytes as f64);
        }
    }
}

/// Once a second, for alerts and history.
impl centinela_observe::Source for View {
    fn figures(&self, out: &mut centinela_observe::Figures) {
        let services: Vec<Arc<Svc>> = lock(&self.0.services).clone();
        for svc in &services {
            out.services.push(service_figures(&figures(svc)));
        }
    }
}

fn service_figures(f: &Figures) -> centinela_observe::ServiceFigures {
    let count = |s: State| {
        STATES
            .iter()
            .position(|x| *x == s)
            .map_or(0, |i| f.by_state[i])
    };
    centinela_observe::ServiceFigures {
        name: f.name.clone(),
        instances: f.by_state.iter().sum(),
        ready: count(State::Ready),
        crash_looping: count(State::CrashLooping) + count(State::Failed),
        restarts: f.restarts,
        cpu_seconds: f.cpu_seconds,
        memory_bytes: f.memory_bytes,
    }
}

impl View {
    /// The services section of `/-/health/detailed`. A service is healthy
    /// while none of its instances is crash-looping or given up on, and one
    /// is ready (or all were stopped on purpose).
    pub fn health(&self) -> (bool, serde_json::Value) {
        let services: Vec<Arc<Svc>> = lock(&self.0.services).clone();
        let mut all_ok = true;
        let list: Vec<serde_json::Value> = services
            .iter()
            .map(|svc| {
                let raw = figures(svc);
                let f = service_figures(&raw);
                let stopped_at = STATES.iter().position(|x| *x == State::Stopped);
                let stopped =
                    f.instances > 0 && stopped_at.is_some_and(|i| raw.by_state[i] == f.instances);
                let ok = f.crash_looping == 0 && (f.ready > 0 || stopped);
                all_ok &= ok;
                let by_state: serde_json::Map<String, serde_json::Value> = STATES
                    .iter()
                    .zip(raw.by_state)
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, n)| (s.name().to_string(), serde_json::json!(n)))
                    .collect();
                serde_json::json!({
                    "name": f.name,
                    "healthy": ok,
                    "ready": f.ready,
                    "instances": by_state,
                    "restarts": f.restarts,
                })
            })
            .collect();
        (all_ok, serde_json::Value::Array(list))
    }
}
