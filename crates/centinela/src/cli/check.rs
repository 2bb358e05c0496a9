//! `centinela check`: validate a config file.

use std::path::Path;
use std::process::ExitCode;

use super::load;

pub(super) fn check(path: &Path) -> ExitCode {
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
            if !c.alerts.is_empty() || !c.notifiers.is_empty() {
                println!(
                    "{} alert rule(s), {} notifier(s), state in {}",
                    c.alerts.len(),
                    c.notifiers.len(),
                    c.runtime.state_dir.display()
                );
            }
            let builtin: Vec<_> = c.alerts.iter().filter(|a| a.builtin).collect();
            if !builtin.is_empty() {
                println!(
                    "built-in alert rules ([alerting] defaults, and each [[slo]]'s burn rates):"
                );
                for a in builtin {
                    println!("  {}", centinela_config::alert::describe(a));
                }
            }
            if c.notifiers.is_empty() && !c.alerts.is_empty() {
                println!("no notifier: alerts are evaluated and shown, but nobody is told; the built-in rules are off until a [notify.NAME] exists");
            }
            // Limits are a protection, not a precondition: said, not refused.
            if let Some(s) = c.services.iter().find(|s| s.limits.needs_cgroup()) {
                match centinela_supervisor::cgroup::usable() {
                    Ok(v) => println!("service limits: enforced through cgroup {v}"),
                    Err(e) => eprintln!(
                        "warning: service.{}.limits: {e}; the services start without their memory, cpu and pids limits",
                        s.name
                    ),
                }
            }
            // Backups: where they go must take them.
            let mut bad = false;
            for b in &c.backups {
                let when = match &b.when {
                    centinela_config::backup::When::Cron(c) => {
                        format!("schedule {:?}", c.to_string())
                    }
                    centinela_config::backup::When::Every(d) => {
                        format!("every {}", centinela_config::units::format_duration(*d))
                    }
                };
                use centinela_config::backup::{Source, Wal};
                let wal = match &b.source {
                    Source::Postgres {
                        wal: Wal::Archive, ..
                    } => ", WAL archived by wal-push (archive_command)".to_string(),
                    Source::Postgres {
                        wal: Wal::Stream, ..
                    } => format!(
                        ", WAL streamed by the supervised service {} (replication slot {})",
                        centinela_backup::stream::service_name(&b.name),
                        centinela_backup::stream::slot(&b.name)
                    ),
                    Source::Postgres { wal: Wal::Off, .. } => {
                        ", no WAL (restores to a base backup only)".to_string()
                    }
                    _ => String::new(),
                };
                println!(
                    "backup {} ({}): {when}, to {}{wal}",
                    b.name,
                    b.source.kind(),
                    b.repos.join(", ")
                );
            }
            for r in &c.repos {
                if let Err(e) = centinela_backup::ops::writable(r) {
                    eprintln!("{}: repo.{}: {e}", r.at, r.name);
                    bad = true;
                }
            }
            // PostgreSQL: the server answers, pg_basebackup matches it,
            // and WAL is archived through this backup's wal-push.
            for b in &c.backups {
                let centinela_config::backup::Source::Postgres {
                    connect,
                    password,
                    wal,
                } = &b.source
                else {
                    continue;
                };
                let line = (*wal == centinela_config::backup::Wal::Archive)
                    .then(|| super::backup::archive_command(&b.name, path));
                for p in centinela_backup::postgres::check(
                    connect,
                    password.as_ref().map(|p| p.expose()),
                    line.as_deref(),
                    *wal == centinela_config::backup::Wal::Stream,
                ) {
                    eprintln!("{}: backup.{}: {p}", b.at, b.name);
                    bad = true;
                }
            }
            if bad {
                return ExitCode::from(super::EXIT_CONFIG);
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
