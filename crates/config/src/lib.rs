//! centinela's configuration.
//!
//! The pipeline is: TOML text → spanned tree (`toml::de::DeTable`) → a walk
//! that checks every key and value and collects *all* problems with
//! `file:line:column` → the typed [`Config`], which cannot hold an invalid
//! value. Config is loaded from a string so tests need no files.
#![forbid(unsafe_code)]

//! One module per section of the file, each reading like its table in
//! `docs/config.md`: the types of the section, how it is read, its defaults.
mod admin;
pub mod alert;
pub mod backup;
pub mod cidr;
mod client_ip;
pub mod cron;
mod diag;
pub mod ip_lists;
pub mod jwt;
mod listener;
pub mod notify;
pub mod probe;
mod rate_limit;
mod read;
mod route;
mod runtime;
mod secret;
mod service;
pub mod slo;
mod tls;
pub mod units;
mod upstream;
pub mod waf;

use std::path::Path;

pub use admin::Admin;
pub use alert::{Alert, Alerting};
pub use cidr::Cidr;
pub use client_ip::ClientIp;
pub use diag::{ConfigError, Diagnostic, Location};
pub use ip_lists::IpList;
pub use jwt::{Jwt, JwtKeys};
pub use listener::{CertFiles, Listener, PathNormalization, ServerSettings, HSTS_DEFAULT};
pub use notify::Notifier;
pub use probe::UptimeProbe;
pub use rate_limit::{RateKey, RateLimit};
pub use route::{Cors, IpRule, Route, SECURITY_HEADERS};
pub use runtime::{LogFormat, Runtime};
pub use secret::Secret;
pub use service::{
    GiveUp, Logs, Probe, ProbeKind, Restart, Scale, ScaleSchedule, ScaleTarget, Service,
    ServiceBackoff, ServiceLimits, Signal, Stop,
};
pub use slo::Slo;
pub use upstream::{
    default_breaker, default_limits, default_outlier, default_retry, default_timeouts, Balance,
    Breaker, HashKey, Health, Limits, Outlier, Retry, RetryOn, Server, Timeouts, Upstream,
    UpstreamTls,
};

use toml::de::DeTable;
use toml::Spanned;

use read::Obj;

#[derive(Clone, Debug)]
pub struct Config {
    pub admin: Admin,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    /// Programs run by the supervisor.
    pub services: Vec<Service>,
    pub runtime: Runtime,
    /// The rules written in the file, then the built-in ones.
    pub alerts: Vec<Alert>,
    pub alerting: Alerting,
    pub notifiers: Vec<Notifier>,
    /// `[[probe]]`: uptime probes.
    pub probes: Vec<UptimeProbe>,
    /// `[[slo]]`: objectives with error budgets.
    pub slos: Vec<Slo>,
    /// `[repo.NAME]`: where backups are kept.
    pub repos: Vec<backup::Repo>,
    /// `[backup.NAME]`: what is backed up.
    pub backups: Vec<backup::Backup>,
    /// `[[rate_limit]]`.
    pub rate_limits: Vec<RateLimit>,
    /// `[ip_lists.NAME]`.
    pub ip_lists: Vec<IpList>,
    /// `[client_ip]`.
    pub client_ip: ClientIp,
    /// `[jwt.NAME]`.
    pub jwts: Vec<Jwt>,
    /// `[waf]`.
    pub waf: Option<waf::Waf>,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Reads every section, then checks the references between them.
fn build(sink: &mut diag::Sink<'_>, root: &Spanned<DeTable<'_>>, base_dir: &Path) -> Config {
    let mut top = Obj {
        table: root.get_ref(),
        path: String::new(),
        known: Vec::new(),
    };
    let admin = admin::admin(sink, &mut top, base_dir);
    let (listeners, listener_spans) = listener::listeners(sink, &mut top, base_dir);
    let (routes, route_refs) = route::routes(sink, &mut top);
    // Services first: an upstream fed by a service needs no static servers.
    let mut services = Vec::new();
    if let Some(svcs) = top.sub(sink, "service") {
        for (k, v) in svcs.table.iter() {
            if let Some(p) = service::service(sink, v, k.get_ref(), base_dir) {
                services.push(p);
            }
        }
    }
    let fed: Vec<String> = services
        .iter()
        .filter_map(|p| p.service.upstream.clone())
        .collect();

    let mut upstreams = Vec::new();
    // Every key under [upstream] is an upstream name, so none is "unknown".
    if let Some(ups) = top.sub(sink, "upstream") {
        for (k, v) in ups.table.iter() {
            let name: &str = k.get_ref().as_ref();
            let path = format!("upstream.{name}");
            if let Some(u) = upstream::upstream(
                sink,
                v,
                name,
                &path,
                fed.contains(&name.to_string()),
                base_dir,
            ) {
                upstreams.push(u);
            }
        }
    }
    let runtime = runtime::runtime(sink, &mut top, base_dir);
    let alerting = alert::alerting(sink, &mut top);
    let (mut alerts, alert_refs) = alert::alerts(sink, &mut top);
    let notifiers = notify::notifiers(sink, &mut top, base_dir);
    let probes = probe::probes(sink, &mut top, base_dir);
    let (slos, slo_refs) = slo::slos(sink, &mut top);
    let repos = backup::repos(sink, &mut top, base_dir);
    let (backups, backup_refs) = backup::backups(sink, &mut top, base_dir);
    let (rate_limits, _) = rate_limit::rate_limits(sink, &mut top);
    let ip_lists = ip_lists::ip_lists(sink, &mut top, base_dir);
    let client_ip = client_ip::client_ip(sink, &mut top);
    let jwts = jwt::jwts(sink, &mut top, base_dir);
    let waf = waf::waf(sink, &mut top, base_dir);
    top.finish(sink);
    backup::check(sink, &backup_refs, &repos);

    // Cross-references.
    let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
    service::cross_check(sink, &services, &upstream_names);
    listener::check(sink, &listeners, &listener_spans);
    route::check(
        sink,
        &routes,
        &route_refs,
        &upstreams,
        &listeners,
        route::Named {
            rate_limits: &rate_limits,
            ip_lists: &ip_lists,
            jwts: &jwts,
        },
    );
    let service_names: Vec<String> = services.iter().map(|p| p.service.name.clone()).collect();
    let notifier_names: Vec<String> = notifiers.iter().map(|n| n.name.clone()).collect();
    let probe_names: Vec<String> = probes.iter().map(|p| p.name.clone()).collect();
    let slo_names: Vec<String> = slos.iter().map(|s| s.name.clone()).collect();
    let backup_names: Vec<String> = backups.iter().map(|b| b.name.clone()).collect();
    slo::check(sink, &slos, &slo_refs, &upstream_names, &notifier_names);
    alert::check(
        sink,
        &alerts,
        &alert_refs,
        &alert::Known {
            upstreams: &upstream_names,
            services: &service_names,
            probes: &probe_names,
            slos: &slo_names,
            backups: &backup_names,
            notifiers: &notifier_names,
        },
    );
    if alerting.defaults && !notifiers.is_empty() {
        alerts.extend(alert::builtin(
            &upstream_names,
            &service_names,
            &probes,
            &backups,
        ));
    }
    // An SLO's burn-rate rules come with it, notifier or not: they show on
    // the dashboard and in /-/alerts.
    alerts.extend(slo::burn_alerts(&slos));
    Config {
        admin,
        listeners,
        routes,
        upstreams,
        services: services.into_iter().map(|p| p.service).collect(),
        runtime,
        alerts,
        alerting,
        notifiers,
        probes,
        slos,
        repos,
        backups,
        rate_limits,
        ip_lists,
        client_ip,
        jwts,
        waf,
    }
}

/// A config that passed validation, and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates config text. `file` names the source in diagnostics.
pub fn parse(src: &str, file: &str) -> Result<Loaded, ConfigError> {
    let mut sink = diag::Sink::new(file, src);
    let (root, syntax_errors) = toml::de::DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            sink.error(
                &span,
                "",
                format!("TOML syntax error: {}", e.message().trim()),
            );
        }
        let (errors, _) = sink.finish();
        return Err(ConfigError { errors });
    }
    // Relative paths in the file (service commands, workdirs, log dirs) are
    // relative to the file's directory.
    let base_dir = std::path::Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let config = build(&mut sink, &root, base_dir);
    let (errors, warnings) = sink.finish();
    if errors.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(ConfigError { errors })
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    parse(&src, &name)
}
