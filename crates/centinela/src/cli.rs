use std::path::{Path, PathBuf};
use std::process::ExitCode;

use centinela_config::{Loaded, LogFormat};
use std::sync::Arc;

use centinela_gateway::Gateway;
use centinela_supervisor::Supervisor;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// Exit code for an invalid configuration or command line.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "centinela",
    version,
    about = "Reverse proxy and load balancer in one binary, configured by one TOML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. SIGHUP reloads the config; SIGTERM/SIGINT drain and exit.
    Run {
        #[arg(long, short, default_value = "centinela.toml")]
        config: PathBuf,
    },
    /// Validate a config file, print every error with file:line:column, exit 2 if invalid.
    Check {
        #[arg(long, short, default_value = "centinela.toml")]
        config: PathBuf,
    },
    /// Show every supervised instance: state, pid, port, uptime, restarts, last exit, RSS.
    Status {
        /// Admin address of the running centinela (default: [admin] listen of --config).
        #[arg(long)]
        admin: Option<String>,
        #[arg(long, short, default_value = "centinela.toml")]
        config: PathBuf,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a service's instance logs (the last lines of each; -f follows).
    Logs {
        service: String,
        #[arg(long, short, default_value = "centinela.toml")]
        config: PathBuf,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// Lines per instance to show first.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
    },
    /// Rolling restart of a service: one instance at a time, each replacement
    /// ready before the old instance is drained and stopped. Starts a stopped
    /// service. Exits non-zero if it did not finish.
    Restart(Control),
    /// Drain and stop every instance of a service (it stays stopped).
    Stop(Control),
    /// Start a stopped service and wait until its instances are ready.
    Start(Control),
    /// Print a systemd unit (Type=notify, watchdog, Restart=always) for centinela.
    SystemdUnit {
        #[arg(long, short, default_value = "/etc/centinela/centinela.toml")]
        config: PathBuf,
        /// Path of the centinela binary (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

/// Arguments of the service control commands.
#[derive(clap::Args)]
struct Control {
    service: String,
    /// Admin address of the running centinela (default: [admin] listen of --config).
    #[arg(long)]
    admin: Option<String>,
    #[arg(long, short, default_value = "centinela.toml")]
    config: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Logs {
            service,
            config,
            follow,
            lines,
        } => logs(&service, &config, follow, lines),
        Command::Status {
            admin,
            config,
            json,
        } => status(admin, &config, json),
        Command::Restart(c) => control("restart", c),
        Command::Stop(c) => control("stop", c),
        Command::Start(c) => control("start", c),
        Command::SystemdUnit { config, binary } => {
            let binary = binary
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/centinela"));
            print!(
                "{}",
                crate::sdnotify::unit_file(
                    &binary.display().to_string(),
                    &config.display().to_string()
                )
            );
            ExitCode::SUCCESS
        }
    }
}

fn load(path: &Path) -> Result<Loaded, ExitCode> {
    match centinela_config::load(path) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("warning: {w}");
            }
            Ok(l)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(l) => {
            let c = &l.config;
            println!(
                "{}: OK ({} listener(s), {} route(s), {} upstream(s), {} server(s), {} service(s) with {} instance(s))",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len(),
                c.upstreams.iter().map(|u| u.servers.len()).sum::<usize>(),
                c.services.len(),
                c.services.iter().map(|s| s.instances).sum::<u32>()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// A plain HTTP/1.0 request to the admin API: the status code and body.
fn admin_request(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Option<std::time::Duration>,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    let _ = s.set_read_timeout(timeout);
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nX-Centinela: 1\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("malformed answer from the admin API")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed status line from the admin API")?;
    Ok((code, body.to_string()))
}

/// A GET to the admin API; the body of a 200 answer.
fn admin_get(addr: &str, path: &str) -> Result<String, String> {
    match admin_request(addr, "GET", path, Some(std::time::Duration::from_secs(5)))? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("admin API answered {code}: {body}")),
    }
}

/// The admin address: `--admin`, else `[admin] listen` of the config file.
fn admin_addr(admin: Option<String>, config: &Path) -> Result<String, ExitCode> {
    match admin {
        Some(a) => Ok(a),
        None => load(config).map(|l| l.config.admin.listen.to_string()),
    }
}

/// `centinela restart|stop|start SERVICE`.
fn control(action: &str, c: Control) -> ExitCode {
    let addr = match admin_addr(c.admin, &c.config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let path = format!("/-/services/{}/{action}", c.service);
    // A rolling restart takes as long as it takes: no read timeout.
    match admin_request(&addr, "POST", &path, None) {
        Ok((code, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let text = v["result"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(body.as_str());
            if code == 200 {
                println!("{text}");
                ExitCode::SUCCESS
            } else {
                eprintln!("centinela {action}: {text}");
                if code == 404 {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("centinela {action}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(admin: Option<String>, config: &Path, json: bool) -> ExitCode {
    let addr = match admin_addr(admin, config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let body = match admin_get(&addr, "/-/services") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("centinela status: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("centinela status: bad JSON from the admin API: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The gateway's view of each instance, by address.
    let upstreams: serde_json::Value = admin_get(&addr, "/-/upstreams")
        .ok()
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let health = |upstream: Option<&str>, port: Option<u64>| -> String {
        let (Some(up), Some(port)) = (upstream, port) else {
            return "-".into();
        };
        let addr = format!("127.0.0.1:{port}");
        let server = upstreams["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["name"] == up)
            .flat_map(|u| u["servers"].as_array().into_iter().flatten())
            .find(|s| s["address"] == addr.as_str());
        match server {
            None => "out".into(),
            Some(s) if s["ejected"] == true => "ejected".into(),
            Some(s) if s["healthy"] != true => "down".into(),
            Some(s) if s["breaker"] != "closed" => {
                format!("breaker {}", s["breaker"].as_str().unwrap_or("?"))
            }
            Some(_) => "up".into(),
        }
    };
    println!(
        "{:<16} {:>3} {:<14} {:>8} {:>6} {:>9} {:>8} {:>6} {:>8} {:<8}  LAST EXIT",
        "SERVICE", "#", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "CPU%", "RSS MiB", "HEALTH"
    );
    for svc in v["services"].as_array().into_iter().flatten() {
        for i in svc["instances"].as_array().into_iter().flatten() {
            let dash = || "-".to_string();
            println!(
                "{:<16} {:>3} {:<14} {:>8} {:>6} {:>9} {:>8} {:>6} {:>8} {:<8}  {}",
                svc["name"].as_str().unwrap_or("?"),
                i["index"],
                i["state"].as_str().unwrap_or("?"),
                i["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(dash),
                i["port"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(dash),
                i["uptime_secs"]
                    .as_f64()
                    .map(|u| format!("{u:.0}s"))
                    .unwrap_or_else(dash),
                i["restarts"].as_u64().unwrap_or(0),
                i["cpu_percent"]
                    .as_f64()
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(dash),
                i["rss_kib"]
                    .as_u64()
                    .map(|r| format!("{:.1}", r as f64 / 1024.0))
                    .unwrap_or_else(dash),
                if i["pid"].is_null() {
                    dash()
                } else {
                    health(svc["upstream"].as_str(), i["port"].as_u64())
                },
                i["last_exit"].as_str().unwrap_or("-"),
            );
        }
    }
    ExitCode::SUCCESS
}

fn logs(service: &str, config: &Path, follow: bool, lines: usize) -> ExitCode {
    use std::io::{Read, Seek, SeekFrom};
    let loaded = match load(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(svc) = loaded.config.services.iter().find(|s| s.name == service) else {
        let known: Vec<&str> = loaded
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        eprintln!(
            "centinela logs: no service {service:?} in {} (services: {})",
            config.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some(l) = &svc.logs else {
        eprintln!(
            "centinela logs: service {service:?} has no `logs` setting; its output is not kept"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let files: Vec<(u32, PathBuf)> = (0..svc.instances)
        .map(|i| (i, l.dir.join(format!("{}-{i}.log", svc.name))))
        .collect();
    let mut offsets = vec![0u64; files.len()];
    for ((i, f), off) in files.iter().zip(offsets.iter_mut()) {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        *off = text.len() as u64;
        let all: Vec<&str> = text.lines().collect();
        for line in &all[all.len().saturating_sub(lines)..] {
            println!("{service}[{i}] {line}");
        }
    }
    if !follow {
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        for ((i, f), off) in files.iter().zip(offsets.iter_mut()) {
            let Ok(mut file) = std::fs::File::open(f) else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *off {
                *off = 0; // rotated
            }
            if len > *off && file.seek(SeekFrom::Start(*off)).is_ok() {
                let mut new = String::new();
                if file.read_to_string(&mut new).is_ok() {
                    *off += new.len() as u64;
                    for line in new.lines() {
                        println!("{service}[{i}] {line}");
                    }
                }
            }
        }
    }
}

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

fn run(path: &Path) -> ExitCode {
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
    let services = cfg.services.clone();
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
    gw.add_status("services", Arc::new(move || view.to_json()));
    gw.add_action("services", service_action(supervisor.clone()));
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
                        let services = l.config.services.clone();
                        if let Err(e) = gw.reload(l.config).await {
                            error!(error = %e, "Reload failed; keeping the running configuration");
                            continue;
                        }
                        // Rolling restarts take a while: signals keep being
                        // served meanwhile; one task applies service changes,
                        // one reload after the other, the newest last.
                        let _ = services_tx.send(services);
                    }
                    Err(e) => {
                        for d in &e.errors {
                            error!(error = %d, "Invalid configuration");
                        }
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
}

/// `POST /-/services/NAME/{restart,stop,start}`. The operation runs in its
/// own task: a client that hangs up does not cut a rolling restart short.
fn service_action(sup: Arc<Supervisor>) -> centinela_gateway::admin::ActionFn {
    use centinela_supervisor::OpError;
    use http::StatusCode;
    Arc::new(move |rest: String| {
        let sup = sup.clone();
        Box::pin(async move {
            let Some((name, op)) = rest.split_once('/') else {
                return (
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "expected /-/services/NAME/restart, stop or start"}),
                );
            };
            let (name, op) = (name.to_string(), op.to_string());
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
        })
    })
}
