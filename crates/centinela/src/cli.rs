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
    /// Print a systemd unit (Type=notify, watchdog, Restart=always) for centinela.
    SystemdUnit {
        #[arg(long, short, default_value = "/etc/centinela/centinela.toml")]
        config: PathBuf,
        /// Path of the centinela binary (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
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
                "{}: OK ({} listener(s), {} route(s), {} upstream(s), {} server(s))",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len(),
                c.upstreams.iter().map(|u| u.servers.len()).sum::<usize>()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// A plain HTTP/1.0 GET to the admin API; the body of a 200 answer.
fn admin_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("malformed answer from the admin API")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "admin API answered: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

fn status(admin: Option<String>, config: &Path, json: bool) -> ExitCode {
    let addr = match admin {
        Some(a) => a,
        None => match load(config) {
            Ok(l) => l.config.admin.listen.to_string(),
            Err(code) => return code,
        },
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
    println!(
        "{:<16} {:>3} {:<14} {:>8} {:>6} {:>9} {:>8} {:>8}  LAST EXIT",
        "SERVICE", "#", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "RSS MiB"
    );
    for svc in v["services"].as_array().into_iter().flatten() {
        for i in svc["instances"].as_array().into_iter().flatten() {
            let dash = || "-".to_string();
            println!(
                "{:<16} {:>3} {:<14} {:>8} {:>6} {:>9} {:>8} {:>8}  {}",
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
                i["restarts"],
                i["rss_kib"]
                    .as_u64()
                    .map(|r| format!("{:.1}", r as f64 / 1024.0))
                    .unwrap_or_else(dash),
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
    let supervisor = {
        let g = gw.clone();
        let on_member: centinela_supervisor::OnMember =
            Arc::new(move |upstream: &str, addr, ready| g.set_member(upstream, addr, ready));
        Supervisor::start(&services, Some(on_member))
    };
    let view = supervisor.view();
    gw.add_status("services", Arc::new(move || view.to_json()));
    info!(config = %path.display(), pid = std::process::id(), services = services.len(), "centinela started");
    crate::sdnotify::notify("READY=1");
    let watchdog = crate::sdnotify::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                crate::sdnotify::notify("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        })
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
                        if format!("{:?}", l.config.services) != format!("{:?}", gw.config().services) {
                            warn!("Service changes are not applied by a reload yet; restart centinela to apply them");
                        }
                        if let Err(e) = gw.reload(l.config).await {
                            error!(error = %e, "Reload failed; keeping the running configuration");
                        }
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
