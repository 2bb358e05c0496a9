//! centinela's supervisor (issue #3, in progress): runs each service's
//! instances, restarts crashes with exponential backoff, marks crash loops,
//! gives up when told to, stops whole process groups, and rotates logs.
//!
//! [`Supervisor`] runs every configured service; ready instances are
//! reported so that the gateway adds them to their upstream. Rolling
//! restarts, reloads of services and the control commands are still to come.
#![deny(unsafe_code)]

pub mod backoff;
pub mod instance;
pub mod logs;
pub mod probe;
mod sys;

pub use instance::{Instance, OnReady, State, Status};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use centinela_config::Service;
use serde_json::json;

/// Told when a supervised instance joins (`true`) or leaves its upstream.
pub type OnMember = Arc<dyn Fn(&str, SocketAddr, bool) + Send + Sync>;

/// Every service's instances.
pub struct Supervisor {
    instances: Vec<Instance>,
    view: View,
}

/// One instance in a [`View`]: its service, index and live status.
type Entry = (Arc<Service>, u32, Arc<Mutex<Status>>);

/// A cheap, clonable view of every instance's status.
#[derive(Clone)]
pub struct View(Arc<Vec<Entry>>);

impl Supervisor {
    /// Starts `instances` processes of every service.
    pub fn start(services: &[Service], on_member: Option<OnMember>) -> Supervisor {
        let mut instances = Vec::new();
        let mut view = Vec::new();
        for svc in services {
            let svc = Arc::new(svc.clone());
            for i in 0..svc.instances {
                let on_ready: Option<OnReady> = match (&on_member, &svc.upstream) {
                    (Some(f), Some(up)) => {
                        let (f, up) = (f.clone(), up.clone());
                        Some(Arc::new(move |port: u16, ready: bool| {
                            f(&up, SocketAddr::from(([127, 0, 0, 1], port)), ready)
                        }))
                    }
                    _ => None,
                };
                let inst = Instance::spawn_with(svc.clone(), i, on_ready);
                view.push((svc.clone(), i, inst.status_handle()));
                instances.push(inst);
            }
        }
        Supervisor {
            instances,
            view: View(Arc::new(view)),
        }
    }

    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// Stops every instance (concurrently) and waits until all are gone.
    pub async fn stop(self) {
        let mut tasks = Vec::new();
        for inst in self.instances {
            tasks.push(tokio::spawn(inst.stop()));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl View {
    /// `{"services":[{"name":..,"instances":[{state, pid, port, ...}]}]}`
    pub fn to_json(&self) -> serde_json::Value {
        let mut services: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
        for (svc, i, st) in self.0.iter() {
            let st = st.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let inst = json!({
                "index": i,
                "state": st.state.name(),
                "pid": st.pid,
                "port": st.port,
                "uptime_secs": st.pid.and(st.started_at).map(|t| t.elapsed().as_secs_f64()),
                "restarts": st.restarts,
                "last_exit": st.last_exit,
                "stderr_tail": st.stderr_tail,
                "rss_kib": st.pid.and_then(rss_kib),
            });
            match services.iter_mut().find(|(n, _)| *n == svc.name) {
                Some((_, v)) => v.push(inst),
                None => services.push((svc.name.clone(), vec![inst])),
            }
        }
        json!({
            "services": services
                .into_iter()
                .map(|(name, instances)| json!({"name": name, "instances": instances}))
                .collect::<Vec<_>>()
        })
    }
}
