//! `centinela run`: start the gateway and the supervisor, serve signals
//! (SIGHUP reloads, SIGTERM/SIGINT drain and exit).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use centinela_config::LogFormat;
use centinela_gateway::Gateway;
use centinela_observe::Observer;
use centinela_supervisor::Supervisor;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use super::load;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

pub(super) fn run(path: &Path) -> ExitCode {
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cfg = loaded.config;
    init_logging(cfg.runtime.log_format);
    match crate::limits::raise_nofile() {
        Ok((old, new)) if old != new => {
            tracing::info!(
                old,
                new,
                "Raised the open files limit (RLIMIT_NOFILE) to its hard limit"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Could not raise the open files limit"),
    }
    // One worker: a single-threaded event loop, like HAProxy's nbthread 1 or
    // one nginx worker, without work-stealing overhead. Otherwise the
    // multi-threaded scheduler; TOKIO_WORKER_THREADS is honoured by tokio
    // when the config leaves worker_threads at 0.
    let mut rt = if cfg.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cfg.runtime.worker_threads > 1 {
            b.worker_threads(cfg.runtime.worker_threads);
        }
        b
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("centinela: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(path.to_path_buf(), cfg))
}

async fn serve(path: PathBuf, cfg: centinela_config::Config) -> ExitCode {
    let (mut hup, mut term, mut int) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(h), Ok(t), Ok(i)) => (h, t, i),
        _ => {
            eprintln!("centinela: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    // wal = "stream" backups add their supervised pg_receivewal.
    let with_streams = |cfg: &centinela_config::Config| {
        let mut s = cfg.services.clone();
        s.extend(centinela_backup::stream::services(
            &cfg.backups,
            &cfg.runtime.state_dir,
        ));
        s
    };
    let services = with_streams(&cfg);
    // State first: an unusable state directory is an error at start; a
    // bad state file is moved aside and never stops the proxy.
    let (store, state) = match centinela_observe::state::Store::open(&cfg.runtime.state_dir) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "Cannot start");
            eprintln!("centinela: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The audit log of admin actions: a broken chain is reported, and
    // actions are then only logged (never a reason not to serve).
    let audit =
        match centinela_shield::audit::AuditLog::open(&cfg.runtime.state_dir.join("audit.log")) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                error!(error = %e, "Audit log unusable; admin actions are only logged");
                None
            }
        };
    let observe_cfg = cfg.clone();
    let gw = match Gateway::start(cfg).await {
        Ok(g) => Arc::new(g),
        Err(e) => {
            error!(error = %e, "Cannot start");
            eprintln!("centinela: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Supervised instances join their upstream once ready.
    let supervisor = Arc::new(Supervisor::start(
        &services,
        Some(Arc::new(Members(gw.clone()))),
    ));
    let view = supervisor.view();
    gw.add_collector(Arc::new(supervisor.view()));
    gw.add_status(
        "services",
        Arc::new(move |_: &str| (http::StatusCode::OK, view.to_json())),
    );
    gw.add_action(
        "services",
        service_action(supervisor.clone(), audit.clone()),
    );
    let observer = Observer::start(
        &observe_cfg,
        store,
        state,
        format!("http://{}", gw.admin_addr()),
    );
    // Backups on their schedules, beside the data plane.
    let backups = Arc::new(centinela_backup::Scheduler::start(
        &observe_cfg.backups,
        &observe_cfg.repos,
        &observe_cfg.runtime.state_dir,
    ));
    observer.add_source(gw.source());
    observer.add_source(Arc::new(supervisor.view()));
    observer.add_source(backups.clone());
    gw.add_collector(backups.clone());
    let b = backups.clone();
    gw.add_health("backups", Arc::new(move || b.health()));
    drop(observe_cfg);
    gw.add_collector(Arc::new(observer.clone()));
    let view = supervisor.view();
    gw.add_health("services", Arc::new(move || view.health()));
    let obs = observer.clone();
    gw.add_health("probes", Arc::new(move || obs.probe_health()));
    let obs = observer.clone();
    gw.add_health("alerts", Arc::new(move || obs.health()));
    let obs = observer.clone();
    gw.add_health("slos", Arc::new(move || (true, obs.slo_health())));
    let obs = observer.clone();
    gw.add_status(
        "alerts",
        Arc::new(move |_: &str| (http::StatusCode::OK, obs.to_json())),
    );
    let obs = observer.clone();
    gw.add_status("history", Arc::new(move |q: &str| obs.history(q)));
    gw.add_action("alerts", alerts_action(observer.clone(), audit.clone()));
    info!(config = %path.display(), pid = std::process::id(), services = services.len(), "centinela started");
    crate::sdnotify::notify("READY=1");
    let trim = tokio::spawn(crate::memory::trim_periodically(
        std::time::Duration::from_secs(10),
    ));
    let watchdog = crate::sdnotify::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                crate::sdnotify::notify("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        })
    });
    let (services_tx, mut services_rx) = tokio::sync::watch::channel(Vec::new());
    let sup = supervisor.clone();
    let applier = tokio::spawn(async move {
        while services_rx.changed().await.is_ok() {
            let services = services_rx.borrow_and_update().clone();
            for r in sup.apply(&services).await {
                match r {
                    Ok(done) => info!(change = %done, "Service change applied"),
                    Err(e) => error!(error = %e, "Service change failed"),
                }
            }
        }
    });
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!(config = %path.display(), "SIGHUP: reloading configuration");
                match centinela_config::load(&path) {
                    Ok(l) => {
                        for w in &l.warnings {
                            warn!(warning = %w, "Config warning");
                        }
                        let services = with_streams(&l.config);
                        let observe_cfg = l.config.clone();
                        if let Err(e) = gw.reload(l.config).await {
                            error!(error = %e, "Reload failed; keeping the running configuration");
                            record(&audit, "SIGHUP", "reload", &path.display().to_string(), &e.to_string());
                            continue;
                        }
                        record(&audit, "SIGHUP", "reload", &path.display().to_string(), "ok");
                        observer.reload(&observe_cfg);
                        backups.apply(&observe_cfg.backups, &observe_cfg.repos);
                        // Rolling restarts take a while: signals keep being
                        // served meanwhile; one task applies service changes,
                        // one reload after the other, the newest last.
                        let _ = services_tx.send(services);
                    }
                    Err(e) => {
                        for d in &e.errors {
                            error!(error = %d, "Invalid configuration");
                        }
                        record(&audit, "SIGHUP", "reload", &path.display().to_string(), "invalid configuration");
                        error!(errors = e.errors.len(), "Reload rejected; keeping the running configuration");
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    crate::sdnotify::notify("STOPPING=1");
    // A service change under way ends with the runtime.
    drop(applier);
    trim.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let timeout = gw.config().runtime.shutdown_timeout;
    info!(
        timeout_secs = timeout.as_secs_f64(),
        "Shutting down: draining in-flight requests"
    );
    if gw.shutdown(timeout).await {
        info!("Drained");
    } else {
        warn!("Shutdown timeout reached with requests still in flight");
    }
    supervisor.stop().await;
    let obs = observer.clone();
    let _ = tokio::task::spawn_blocking(move || obs.flush()).await;
    info!("Instances stopped, exiting");
    ExitCode::SUCCESS
}

/// The gateway's upstreams, as the supervisor sees them.
struct Members(Arc<Gateway>);

impl centinela_supervisor::Membership for Members {
    fn set(&self, upstream: &str, addr: std::net::SocketAddr, ready: bool) {
        self.0.set_member(upstream, addr, ready);
    }

    fn in_flight(&self, upstream: &str, addr: std::net::SocketAddr) -> u32 {
        self.0.member_in_flight(upstream, addr)
    }

    fn fail(&self, upstream: &str, addr: std::net::SocketAddr) {
        self.0.fail_member(upstream, addr);
    }
}

/// `POST /-/services/NAME/{restart,stop,start}`. The operation runs in its
/// own task: a client that hangs up does not cut a rolling restart short.
/// Appends an entry to the audit log, if it is usable.
fn record(
    audit: &Option<Arc<centinela_shield::audit::AuditLog>>,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
) {
    info!(actor, action, target, outcome, "Admin action");
    if let Some(a) = audit {
        if let Err(e) = a.record(actor, action, target, outcome) {
            error!(error = %e, "Audit log write failed");
        }
    }
}

fn service_action(
    sup: Arc<Supervisor>,
    audit: Option<Arc<centinela_shield::audit::AuditLog>>,
) -> centinela_gateway::admin::ActionFn {
    use http::StatusCode;
    Arc::new(move |rest: String, _body| {
        let sup = sup.clone();
        let audit = audit.clone();
        Box::pin(async move {
            let Some((name, op)) = rest.split_once('/') else {
                return (
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "expected /-/services/NAME/restart, stop or start"}),
                );
            };
            let (name, op) = (name.to_string(), op.to_string());
            let (status, answer) = service_op(sup, name.clone(), op.clone()).await;
            if matches!(op.as_str(), "restart" | "stop" | "start") {
                let outcome = answer["error"].as_str().unwrap_or("ok");
                record(&audit, "admin-api", &op, &name, outcome);
            }
            (status, answer)
        })
    })
}

/// Runs a service operation in its own task: a client that hangs up does
/// not cut a rolling restart short.
async fn service_op(
    sup: Arc<Supervisor>,
    name: String,
    op: String,
) -> (http::StatusCode, serde_json::Value) {
    use centinela_supervisor::OpError;
    use http::StatusCode;
    let task = tokio::spawn(async move {
        match op.as_str() {
            "restart" => Some(sup.restart(&name).await),
            "stop" => Some(sup.stop_service(&name).await),
            "start" => Some(sup.start_service(&name).await),
            _ => None,
        }
    });
    match task.await {
        Ok(Some(Ok(done))) => (StatusCode::OK, serde_json::json!({ "result": done })),
        Ok(Some(Err(e @ OpError::NotFound(_)))) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": e.to_string()}),
        ),
        Ok(Some(Err(e))) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": e.to_string()}),
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "unknown action; expected restart, stop or start"}),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": format!("the operation's task failed: {e}")}),
        ),
    }
}

/// `POST /-/alerts/silence/NAME` with `{"for": "2h", "comment": "…"}`,
/// `POST /-/alerts/unsilence/NAME`.
fn alerts_action(
    obs: Observer,
    audit: Option<Arc<centinela_shield::audit::AuditLog>>,
) -> centinela_gateway::admin::ActionFn {
    Arc::new(move |rest: String, body| {
        let obs = obs.clone();
        let audit = audit.clone();
        Box::pin(async move {
            let (status, answer) = alerts_op(&obs, &rest, &body);
            if let Some((op @ ("silence" | "unsilence"), name)) = rest.split_once('/') {
                let outcome = answer["error"].as_str().unwrap_or("ok");
                record(&audit, "admin-api", op, name, outcome);
            }
            (status, answer)
        })
    })
}

fn alerts_op(obs: &Observer, rest: &str, body: &[u8]) -> (http::StatusCode, serde_json::Value) {
    use http::StatusCode;
    use serde_json::json;
    let bad = |msg: String| (StatusCode::BAD_REQUEST, json!({ "error": msg }));
    match rest.split_once('/') {
        Some(("silence", name)) => {
            let v: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad(format!("the body is not JSON: {e}")),
            };
            let Some(text) = v["for"].as_str() else {
                return bad("`for` is required, e.g. {\"for\": \"2h\"}".into());
            };
            let dur = match centinela_config::units::parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => return bad("`for` must be longer than 0s".into()),
                Err(e) => return bad(format!("`for`: {e}")),
            };
            let comment = v["comment"].as_str().unwrap_or("");
            match obs.silence(name, dur, comment) {
                Ok(until) => (
                    StatusCode::OK,
                    json!({
                        "result": format!(
                            "{name} silenced until {}",
                            centinela_observe::notify::rfc3339(until)
                        )
                    }),
                ),
                Err(e) => (StatusCode::NOT_FOUND, json!({ "error": e.to_string() })),
            }
        }
        Some(("unsilence", name)) => match obs.unsilence(name) {
            Ok(()) => (
                StatusCode::OK,
                json!({ "result": format!("{name} unsilenced") }),
            ),
            Err(e) => (StatusCode::NOT_FOUND, json!({ "error": e.to_string() })),
        },
        _ => (
            StatusCode::NOT_FOUND,
            json!({"error": "expected /-/alerts/silence/NAME or /-/alerts/unsilence/NAME"}),
        ),
    }
}
