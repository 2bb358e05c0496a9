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
    memory_bytes: u64,
}

fn figures(svc: &Svc) -> Figures {
    let shown: Vec<Status> = lock(&svc.shown).iter().map(|s| lock(s).clone()).collect();
    let (mut restarts, mut cpu_seconds) = *lock(&svc.retired);
    let mut f = Figures {
        name: svc.name.clone(),
        by_state: [0; STATES.len()],
        restarts: 0,
        cpu_seconds: 0.0,
        memory_bytes: 0,
    };
    for st in &shown {
        if let Some(i) = STATES.iter().position(|s| *s == st.state) {
            f.by_state[i] += 1;
        }
        restarts += u64::from(st.restarts);
        cpu_seconds += st.cpu_seconds;
        if st.pid.is_some() {
            f.memory_bytes += st.rss_kib.unwrap_or(0) * 1024;
        }
    }
    f.restarts = restarts;
    f.cpu_seconds = cpu_seconds;
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
            "centinela_service_memory_bytes",
            "Resident memory of the service's running instances and their children.",
            Kind::Gauge,
        );
        for f in &all {
            out.gauge(&[("service", &f.name)], f.memory_bytes as f64);
        }
    }
}
