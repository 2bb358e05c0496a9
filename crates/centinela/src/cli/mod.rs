//! The `centinela` command line: one module per subcommand.
//! `run` serves; the others read the config or talk to a running
//! centinela through its admin API (`client`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use centinela_config::Loaded;
use clap::{Parser, Subcommand};

mod alerts;
mod audit;
mod backup;
mod check;
mod client;
mod control;
mod logs;
mod progress;
mod receive;
mod run;
mod status;

use control::Control;

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
    /// List alerts and their states; `alerts silence NAME --for 2h`, `alerts unsilence NAME`.
    Alerts(alerts::Alerts),
    /// Rolling restart of a service: one instance at a time, each replacement
    /// ready before the old instance is drained and stopped. Starts a stopped
    /// service. Exits non-zero if it did not finish.
    Restart(Control),
    /// Drain and stop every instance of a service (it stays stopped).
    Stop(Control),
    /// Start a stopped service and wait until its instances are ready.
    Start(Control),
    /// Run, list and verify the backups of the config (`[backup.NAME]`).
    Backup(backup::BackupCmd),
    /// Restore a backup's snapshot into a directory.
    Restore(backup::RestoreCmd),
    /// Run a backup's restore_test now: restore, checks, RTO and RPO.
    RestoreTest(backup::RestoreTestCmd),
    /// PostgreSQL's archive_command: store a WAL file in every repo of the backup.
    WalPush(backup::WalPushCmd),
    /// PostgreSQL's restore_command: fetch an archived WAL file.
    WalFetch(backup::WalFetchCmd),
    /// The audit log of admin actions: `audit verify` checks its hash chain.
    Audit(audit::Audit),
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
        Command::Check { config } => check::check(&config),
        Command::Run { config } => run::run(&config),
        Command::Logs {
            service,
            config,
            follow,
            lines,
        } => logs::logs(&service, &config, follow, lines),
        Command::Status {
            admin,
            config,
            json,
        } => status::status(admin, &config, json),
        Command::Alerts(a) => alerts::alerts(a),
        Command::Audit(a) => audit::audit(a),
        Command::Backup(b) => backup::backup(b),
        Command::Restore(r) => backup::restore(r),
        Command::RestoreTest(r) => backup::restore_test(r),
        Command::WalPush(c) => backup::wal_push(c),
        Command::WalFetch(c) => backup::wal_fetch(c),
        Command::Restart(c) => control::control("restart", c),
        Command::Stop(c) => control::control("stop", c),
        Command::Start(c) => control::control("start", c),
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

pub(crate) fn load(path: &Path) -> Result<Loaded, ExitCode> {
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
