//! centinela's data plane. See `docs/ARCHITECTURE.md` for the path of a
//! request; [`Gateway`] is the entry point: start, reload, shut down.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod balance;
pub mod error;
pub mod http;
mod jwks;
mod listener;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod snapshot;
pub mod tls;
pub mod waf;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use centinela_config::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::balance::server::Server;
use crate::proxy::Shared;
use crate::snapshot::Registry;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WAF: {0}")]
    Waf(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: String,
        source: std::io::Error,
    },
}

struct RunningListener {
    configured: SocketAddr,
    bound: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    /// The config as last loaded, without supervised members.
    base: Mutex<Config>,
    /// Ready supervised instances per upstream, added to its servers.
    members: Mutex<HashMap<String, BTreeSet<SocketAddr>>>,
    member_changes: Mutex<()>,
    registry: Mutex<Registry>,
    listeners: Mutex<HashMap<String, RunningListener>>,
    health_tasks: Mutex<Vec<JoinHandle<()>>>,
    admin_addr: SocketAddr,
    admin_task: JoinHandle<()>,
    /// Closes idle pooled connections past their upstream's idle timeout.
    reaper: JoinHandle<()>,
    /// The listeners' certificates, and the task that watches their files.
    certs: Arc<tls::Certs>,
    cert_watch: JoinHandle<()>,
    /// One task per `[jwt.NAME] jwks_url`.
    jwks_tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How often idle pooled connections are looked at.
const REAP_EVERY: Duration = Duration::from_secs(5);

async fn reap_idle_connections(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let snap = shared.snapshot.load_full();
        for g in &snap.groups {
            for s in &g.servers {
                s.pool.reap();
            }
        }
        // IP list files that changed, rate-limit keys whose window ended:
        // file reads and map walks, off the runtime's threads.
        if let Some(shield) = snap.shield.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                shield.look();
                shield.sweep(std::time::Instant::now());
            })
            .await;
        }
    }
}

/// Adds `f` under `name` to one of the admin API's lists (replacing one of
/// the same name), swapping the list whole.
fn register<T: Clone>(list: &ArcSwap<Vec<(String, T)>>, name: &str, f: T) {
    let mut v: Vec<(String, T)> = (**list.load()).clone();
    v.retain(|(n, _)| n != name);
    v.push((name.to_string(), f));
    list.store(Arc::new(v));
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr,
            what: what.to_string(),
            source,
        })
}

impl Gateway {
    /// Binds the admin address and every listener, starts health checks and
    /// serves. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let mut registry = Registry::default();
        registry.set_tls(&config).map_err(StartError::Tls)?;
        registry.set_shield(&config);
        registry.set_waf(&config).map_err(StartError::Waf)?;
        let tls_stats = Arc::new(tls::Stats::default());
        let certs = Arc::new(tls::Certs::new(tls_stats.clone()).map_err(StartError::Tls)?);
        let built = certs.build(&config.listeners).map_err(StartError::Tls)?;
        let admin_listener = bind(config.admin.listen, "admin").await?;
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push((
                l.clone(),
                bind(l.listen, &format!("listener {}", l.name)).await?,
            ));
        }
        let base = config.clone();
        let snapshot = registry.build(config);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            status: ArcSwap::from_pointee(Vec::new()),
            actions: ArcSwap::from_pointee(Vec::new()),
            collectors: ArcSwap::from_pointee(Vec::new()),
            health: ArcSwap::from_pointee(Vec::new()),
            draining: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
            tls: tls_stats,
            https_port: Default::default(),
        });
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: shared.snapshot.load().config.admin.listen,
                what: "admin".into(),
                source,
            })?;
        let admin_task = tokio::spawn(admin::serve(admin_listener, shared.clone()));
        let reaper = tokio::spawn(reap_idle_connections(shared.clone()));
        let cert_watch = tokio::spawn(tls::watch(certs.clone()));
        let slots = certs.apply(built, &config_listeners(&shared));
        info!(addr = %admin_addr, "Admin API listening");
        let gw = Gateway {
            shared,
            base: Mutex::new(base),
            members: Mutex::new(HashMap::new()),
            member_changes: Mutex::new(()),
            registry: Mutex::new(registry),
            listeners: Mutex::new(HashMap::new()),
            health_tasks: Mutex::new(Vec::new()),
            admin_addr,
            admin_task,
            reaper,
            certs,
            cert_watch,
            jwks_tasks: Mutex::new(Vec::new()),
        };
        gw.restart_jwks();
        for (l, tcp) in bound {
            let slot = slots.get(&l.name).cloned().unwrap_or_default();
            gw.spawn_listener(&l, tcp, slot);
        }
        gw.set_https_port();
        gw.restart_health_checks();
        Ok(gw)
    }

    fn spawn_listener(
        &self,
        l: &centinela_config::Listener,
        tcp: TcpListener,
        tls: Arc<listener::Tls>,
    ) {
        let (name, configured) = (l.name.clone(), l.listen);
        let bound = tcp.local_addr().unwrap_or(configured);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(listener::serve(
            tcp,
            name.as_str().into(),
            self.shared.clone(),
            l.max_connections,
            tls,
            l.proxy_protocol,
            async {
                let _ = rx.await;
            },
        ));
        let https = if l.tls.is_some() { " (TLS)" } else { "" };
        info!(listener = %name, addr = %bound, "Listening{https}");
        lock(&self.listeners).insert(
            name,
            RunningListener {
                configured,
                bound,
                stop: tx,
                task,
            },
        );
    }

    /// (Re)starts the fetchers of the JWK sets the config names.
    fn restart_jwks(&self) {
        let mut tasks = lock(&self.jwks_tasks);
        for t in tasks.drain(..) {
            t.abort();
        }
        if let Some(shield) = self.shared.snapshot.load().shield.clone() {
            for (auth, url, every) in shield.jwks_urls() {
                tasks.push(tokio::spawn(jwks::run(auth, url, every)));
            }
        }
    }

    fn restart_health_checks(&self) {
        let mut tasks = lock(&self.health_tasks);
        for t in tasks.drain(..) {
            t.abort();
        }
        let snap = self.shared.snapshot.load();
        for g in &snap.groups {
            if let Some(h) = &g.cfg.health {
                for s in &g.servers {
                    tasks.push(tokio::spawn(balance::health::run(
                        g.name.clone(),
                        s.clone(),
                        h.clone(),
                    )));
                }
            }
        }
    }

    /// Where `redirect_https` sends clients when the listener names no
    /// port: the first TLS listener's bound port.
    fn set_https_port(&self) {
        let snap = self.shared.snapshot.load();
        let port = snap
            .config
            .listeners
            .iter()
            .find(|l| l.tls.is_some())
            .and_then(|l| self.listener_addr(&l.name))
            .map_or(0, |a| a.port());
        self.shared
            .https_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.listeners).get(name).map(|l| l.bound)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn config(&self) -> Arc<Config> {
        self.shared.snapshot.load().config.clone()
    }

    /// Applies a validated config atomically. Requests in flight finish on the
    /// config they started with; server state carries over.
    pub async fn reload(&self, config: Config) -> Result<(), StartError> {
        let old = self.config();
        // Certificates first: one that cannot be used changes nothing.
        let built = self
            .certs
            .build(&config.listeners)
            .map_err(StartError::Tls)?;
        {
            let mut registry = lock(&self.registry);
            registry.set_tls(&config).map_err(StartError::Tls)?;
            // Rules that do not load keep the running set (and the rest
            // of the old config with them).
            registry.set_waf(&config).map_err(StartError::Waf)?;
            registry.set_shield(&config);
        }
        if old.admin.listen != config.admin.listen {
            warn!(old = %old.admin.listen, new = %config.admin.listen, "Changing [admin] listen needs a restart; keeping the old address");
        }
        // Bind new or moved listeners first, so a bind error changes nothing.
        let mut to_start = Vec::new();
        {
            let running = lock(&self.listeners);
            for l in &config.listeners {
                match running.get(&l.name) {
                    Some(r) if r.configured == l.listen => {}
                    _ => to_start.push(l.clone()),
                }
            }
        }
        // Every new address is bound before anything is stopped: if one
        // cannot be, the running listeners are all left as they are.
        let mut bound = Vec::new();
        for l in to_start {
            let tcp = bind(l.listen, &format!("listener {}", l.name)).await?;
            bound.push((l, tcp));
        }
        for (l, _) in &bound {
            let moved = lock(&self.listeners).remove(&l.name);
            if let Some(r) = moved {
                let _ = r.stop.send(());
            }
        }
        *lock(&self.base) = config.clone();
        self.rebuild();
        let slots = self.certs.apply(built, &config.listeners);
        // Stop listeners that are gone.
        {
            let mut running = lock(&self.listeners);
            let gone: Vec<String> = running
                .keys()
                .filter(|n| config.listeners.iter().all(|l| &l.name != *n))
                .cloned()
                .collect();
            for n in gone {
                if let Some(r) = running.remove(&n) {
                    info!(listener = %n, "Listener removed by reload");
                    let _ = r.stop.send(());
                }
            }
        }
        for (l, tcp) in bound {
            let slot = slots.get(&l.name).cloned().unwrap_or_default();
            self.spawn_listener(&l, tcp, slot);
        }
        self.set_https_port();
        self.restart_jwks();
        info!(
            upstreams = config.upstreams.len(),
            routes = config.routes.len(),
            "Configuration reloaded"
        );
        Ok(())
    }

    /// Builds and swaps in a snapshot of the base config plus supervised
    /// members, then restarts health checks for the new server set.
    fn rebuild(&self) {
        // One rebuild at a time, from reading the members to storing the
        // snapshot: two concurrent ones must not store an older member set
        // last. (Lock order: registry, then base, then members.)
        let mut registry = lock(&self.registry);
        let mut config = lock(&self.base).clone();
        {
            let members = lock(&self.members);
            for up in &mut config.upstreams {
                for addr in members.get(&up.name).into_iter().flatten() {
                    if up.servers.iter().all(|s| s.address != *addr) {
                        up.servers.push(centinela_config::Server {
                            address: *addr,
                            weight: 1,
                        });
                    }
                }
            }
        }
        let snapshot = registry.build(config);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.restart_health_checks();
    }

    /// Adds (`ready`) or removes a supervised instance as a server of
    /// `upstream`. Requests in flight to a removed server finish.
    pub fn set_member(&self, upstream: &str, addr: SocketAddr, ready: bool) {
        // One change at a time: the server removed must be found in the
        // snapshot before this change, not one that another change built.
        let _one = lock(&self.member_changes);
        let changed = {
            let mut m = lock(&self.members);
            let set = m.entry(upstream.to_string()).or_default();
            if ready {
                set.insert(addr)
            } else {
                set.remove(&addr)
            }
        };
        if !changed {
            return;
        }
        if ready {
            info!(upstream, server = %addr, "Supervised server joined");
            self.rebuild();
            return;
        }
        info!(upstream, server = %addr, "Supervised server left");
        let old = self.server(upstream, addr);
        self.rebuild();
        // Unless it is also a configured server, requests that started
        // before must not pick it again; its in-flight count stays readable.
        if let Some(old) = old {
            if self.server(upstream, addr).is_none() {
                old.retire();
                let mut d = lock(&self.shared.draining);
                d.retain(|_, w| w.strong_count() > 0);
                d.insert((upstream.to_string(), addr), Arc::downgrade(&old));
            }
        }
    }

    /// Removes a supervised instance that stopped answering (its liveness
    /// probe failed) and ends the requests waiting on it at once: the
    /// idempotent ones are retried on another server, within the retry
    /// rules and budget; the others get 502.
    pub fn fail_member(&self, upstream: &str, addr: SocketAddr) {
        let server = self.server(upstream, addr);
        self.set_member(upstream, addr, false);
        let server = server.or_else(|| {
            lock(&self.shared.draining)
                .get(&(upstream.to_string(), addr))
                .and_then(Weak::upgrade)
        });
        if let Some(s) = server {
            let ended = s.pool.abort();
            warn!(upstream, server = %addr, connections_ended = ended, "Supervised server failed liveness; its requests in flight were ended");
        }
    }

    fn server(&self, upstream: &str, addr: SocketAddr) -> Option<Arc<Server>> {
        let snap = self.shared.snapshot.load();
        snap.group(upstream)?
            .servers
            .iter()
            .find(|s| s.addr == addr)
            .cloned()
    }

    /// Requests in flight to a server of `upstream`, or to one just removed
    /// from it: a supervised instance is stopped once this reaches 0.
    pub fn member_in_flight(&self, upstream: &str, addr: SocketAddr) -> u32 {
        let current = self.server(upstream, addr).map(|s| s.in_flight());
        let removed = || {
            lock(&self.shared.draining)
                .get(&(upstream.to_string(), addr))
                .and_then(Weak::upgrade)
                .map(|s| s.in_flight())
        };
        current.or_else(removed).unwrap_or(0)
    }

    /// Serves `GET /-/NAME` on the admin API with what `f(query)` returns.
    pub fn add_status(&self, name: &str, f: admin::StatusFn) {
        register(&self.shared.status, name, f);
    }

    /// Serves `POST /-/NAME/REST` on the admin API with `f(REST, body)`.
    pub fn add_action(&self, name: &str, f: admin::ActionFn) {
        register(&self.shared.actions, name, f);
    }

    /// Adds a section to `GET /-/health/detailed`: `f` says whether its
    /// part is healthy, with the JSON shown under `name`.
    pub fn add_health(&self, name: &str, f: admin::HealthFn) {
        register(&self.shared.health, name, f);
    }

    /// What the data plane reports to the observer once a second.
    pub fn source(&self) -> Arc<dyn centinela_observe::Source> {
        self.shared.clone()
    }

    /// Adds what `c` collects to `GET /metrics` on the admin API.
    pub fn add_collector(&self, c: Arc<dyn centinela_observe::Collect>) {
        let mut v: Vec<Arc<dyn centinela_observe::Collect>> =
            (**self.shared.collectors.load()).clone();
        v.push(c);
        self.shared.collectors.store(Arc::new(v));
    }

    /// Stops accepting, lets in-flight requests finish up to `timeout`.
    /// Returns true if everything drained in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let listeners: Vec<RunningListener> =
            lock(&self.listeners).drain().map(|(_, l)| l).collect();
        let mut tasks = Vec::new();
        for l in listeners {
            let _ = l.stop.send(());
            tasks.push(l.task);
        }
        let drained = tokio::time::timeout(timeout, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await
        .is_ok();
        for t in lock(&self.health_tasks).drain(..) {
            t.abort();
        }
        self.admin_task.abort();
        self.reaper.abort();
        self.cert_watch.abort();
        for t in lock(&self.jwks_tasks).drain(..) {
            t.abort();
        }
        // The last requests' access lines (a blocking write: off the
        // runtime's threads).
        let _ = tokio::task::spawn_blocking(access::flush).await;
        drained
    }
}

fn config_listeners(shared: &Shared) -> Vec<centinela_config::Listener> {
    shared.snapshot.load().config.listeners.clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
