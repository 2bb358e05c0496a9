//! `[service.NAME]`: programs run and kept alive by the supervisor.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use crate::diag::Sink;
use crate::read::{missing, string_items, type_name, Obj, SV};

/// When a crashed instance is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

/// A signal by name, with its Linux number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub number: i32,
}

impl Signal {
    pub const TERM: Signal = Signal {
        name: "SIGTERM",
        number: 15,
    };

    pub fn parse(s: &str) -> Option<Signal> {
        let name = s.strip_prefix("SIG").unwrap_or(s);
        let (name, number) = match name {
            "TERM" => ("SIGTERM", 15),
            "INT" => ("SIGINT", 2),
            "QUIT" => ("SIGQUIT", 3),
            "HUP" => ("SIGHUP", 1),
            "KILL" => ("SIGKILL", 9),
            "USR1" => ("SIGUSR1", 10),
            "USR2" => ("SIGUSR2", 12),
            "WINCH" => ("SIGWINCH", 28),
            _ => return None,
        };
        Some(Signal { name, number })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET path` on the instance's port; 2xx/3xx passes.
    Http(String),
    /// A TCP connect to the instance's port.
    Tcp,
    /// A command; exit code 0 passes.
    Exec(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that count (liveness: kill and restart).
    pub failures: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceBackoff {
    pub initial: Duration,
    pub max: Duration,
    /// Uptime after which the backoff starts again from `initial`.
    pub reset_after: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stop {
    pub signal: Signal,
    /// SIGKILL to the process group after this.
    pub timeout: Duration,
    /// On a rolling restart, scale-down or `centinela stop`, the instance
    /// first leaves its upstream; its requests in flight get this long to
    /// finish before the stop signal is sent.
    pub drain: Duration,
    /// SIGKILL this long after the stop signal when the instance failed its
    /// liveness probe: a process that does not answer is not trusted to
    /// drain, so it does not get the planned-stop `timeout`.
    pub liveness_grace: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Logs {
    pub dir: std::path::PathBuf,
    pub max_size: u64,
    pub keep: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GiveUp {
    pub restarts: u32,
    pub within: Duration,
}

/// `limits`: resources each instance may use. `memory`, `cpu` and `pids`
/// through a cgroup of its own (v2, else v1), `nofile` through setrlimit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceLimits {
    /// Bytes; past this the kernel's OOM killer ends the instance.
    pub memory: Option<u64>,
    /// Cores, as a CFS quota per 100 ms period.
    pub cpu: Option<f64>,
    /// Processes and threads, the instance's children included.
    pub pids: Option<u64>,
    /// Open file descriptors per process (soft and hard limit).
    pub nofile: Option<u64>,
}

impl ServiceLimits {
    /// Any limit that needs a cgroup.
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.cpu.is_some() || self.pids.is_some()
    }
}

/// `scale`: the instance count follows the load, between `min` and `max`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    pub target: ScaleTarget,
    /// Averaging windows of the signal for going up and for going down.
    pub up_after: Duration,
    pub down_after: Duration,
    /// No scaling down sooner than this after any scaling.
    pub cooldown: Duration,
    /// From each `cron` time on (UTC), `min` is that entry's, until the
    /// next entry fires.
    pub schedule: Vec<ScaleSchedule>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleTarget {
    /// Requests in flight through the gateway per ready instance.
    InFlight(f64),
    /// CPU% per instance: of its `limits.cpu`, or of one core.
    Cpu(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScaleSchedule {
    pub cron: crate::cron::Cron,
    pub min: u32,
}

/// A supervised program run as `instances` processes.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    /// Resolved path of the program.
    pub command: std::path::PathBuf,
    /// Arguments; `{port}` is replaced by the instance's port.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: std::path::PathBuf,
    pub instances: u32,
    /// First and last port of the pool. Instance `i` starts on `first + i`;
    /// ports beyond `instances` let a rolling restart start each replacement
    /// before stopping the instance it replaces.
    pub ports: Option<(u16, u16)>,
    /// Instances join this upstream as its servers once ready.
    pub upstream: Option<String>,
    pub restart: Restart,
    pub backoff: ServiceBackoff,
    pub stop: Stop,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
    pub logs: Option<Logs>,
    pub give_up: Option<GiveUp>,
    /// How long a rolling restart waits for a replacement to become ready.
    pub ready_timeout: Duration,
    pub limits: ServiceLimits,
    pub scale: Option<Scale>,
}

impl Service {
    /// The port instance `instance` starts on.
    pub fn port(&self, instance: u32) -> Option<u16> {
        self.ports.map(|(first, _)| first + instance as u16)
    }

    /// Every port of the pool.
    pub fn port_pool(&self) -> impl Iterator<Item = u16> {
        self.ports.into_iter().flat_map(|(a, b)| a..=b)
    }

    /// Equal in everything but the number of instances: a change of
    /// `instances` alone scales, anything else rolls the instances.
    pub fn same_but_instances(&self, other: &Service) -> bool {
        let mut o = other.clone();
        o.instances = self.instances;
        *self == o
    }
}

/// A parsed service plus the spans needed for cross-checks.
pub(crate) struct ParsedService {
    pub service: Service,
    pub upstream_span: Option<Range<usize>>,
    pub ports_span: Option<Range<usize>>,
}

fn string_list(sink: &mut Sink<'_>, v: &SV<'_>, path: &str) -> Vec<String> {
    string_items(sink, v, path)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

fn probe(
    sink: &mut Sink<'_>,
    o: &mut Obj<'_, '_>,
    key: &'static str,
    default_interval: Duration,
) -> Option<Probe> {
    let span = o
        .table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v.span())
        .unwrap_or(0..0);
    let mut p = o.sub(sink, key)?;
    let path = p.path.clone();
    let http = p.str(sink, "http");
    let tcp = p.bool(sink, "tcp", false);
    let exec = p
        .get("exec")
        .map(|v| (string_list(sink, v, &format!("{path}.exec")), v.span()));
    let interval = p.duration_min(
        sink,
        "interval",
        default_interval,
        Duration::from_millis(10),
    );
    let timeout = p.duration_min(
        sink,
        "timeout",
        Duration::from_secs(1),
        Duration::from_millis(1),
    );
    let failures = p.int(sink, "failures", 3, 1, 1000) as u32;
    let kinds = usize::from(http.is_some()) + usize::from(tcp) + usize::from(exec.is_some());
    let kind = match (http, tcp, exec) {
        _ if kinds > 1 => {
            sink.error(&span, &path, "give only one of http, tcp = true or exec");
            None
        }
        (Some((h, span)), _, _) => {
            if !h.starts_with('/') {
                sink.error(
                    &span,
                    &format!("{path}.http"),
                    "must be a path starting with '/'",
                );
            }
            Some(ProbeKind::Http(h))
        }
        (_, true, _) => Some(ProbeKind::Tcp),
        (_, _, Some((cmd, span))) => {
            if cmd.is_empty() {
                sink.error(&span, &format!("{path}.exec"), "needs at least the program");
            }
            Some(ProbeKind::Exec(cmd))
        }
        _ => {
            sink.error(
                &span,
                &path,
                "needs one of http = \"/path\", tcp = true or exec = [\"cmd\", ...]",
            );
            None
        }
    };
    p.finish(sink);
    kind.map(|kind| Probe {
        kind,
        interval,
        timeout,
        failures,
    })
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let parse = |x: &str| x.trim().parse::<u16>().ok().filter(|p| *p > 0);
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) if a <= b => Ok((a, b)),
        _ => Err(format!(
            "invalid port range {s:?}: expected \"FIRST-LAST\", e.g. \"8001-8004\", or one port"
        )),
    }
}

/// Finds a program: a path with a `/` is taken relative to `workdir`; a bare
/// name is looked up in `PATH`.
pub(crate) fn resolve_command(cmd: &str, workdir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if cmd.contains('/') {
        vec![workdir.join(cmd)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(cmd)).collect())
            .unwrap_or_default()
    };
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(c.clone());
            }
            if m.is_file() {
                return Err(format!("{} is not executable", c.display()));
            }
        }
    }
    if cmd.contains('/') {
        Err(format!(
            "command {cmd:?} not found (looked for {})",
            workdir.join(cmd).display()
        ))
    } else {
        Err(format!("command {cmd:?} not found in PATH"))
    }
}

pub(crate) fn service(
    sink: &mut Sink<'_>,
    v: &SV<'_>,
    name: &str,
    base_dir: &Path,
) -> Option<ParsedService> {
    let path = format!("service.{name}");
    let mut o = Obj::new(sink, v, &path)?;
    let workdir = match o.str(sink, "workdir") {
        Some((w, span)) => {
            let d = base_dir.join(w);
            if !d.is_dir() {
                sink.error(
                    &span,
                    &format!("{path}.workdir"),
                    format!("{} is not a directory", d.display()),
                );
            }
            d
        }
        None => base_dir.to_path_buf(),
    };
    let command = match o.str(sink, "command") {
        Some((c, span)) => match resolve_command(&c, &workdir) {
            Ok(p) => p,
            Err(e) => {
                sink.error(&span, &format!("{path}.command"), e);
                PathBuf::from(c)
            }
        },
        None => {
            missing(sink, &v.span(), &path, "command");
            PathBuf::new()
        }
    };
    let args = o
        .get("args")
        .map(|a| string_list(sink, a, &format!("{path}.args")))
        .unwrap_or_default();
    let env = match o.sub(sink, "env") {
        Some(mut e) => {
            let mut out = Vec::new();
            let ep = e.path.clone();
            for (k, val) in e.table.iter() {
                match val.get_ref() {
                    DeValue::String(s) => out.push((k.get_ref().to_string(), s.to_string())),
                    other => sink.error(
                        &val.span(),
                        &format!("{ep}.{}", k.get_ref()),
                        format!("expected a string, found {}", type_name(other)),
                    ),
                }
            }
            e.known.clear();
            out
        }
        None => Vec::new(),
    };
    let instances = o.int(sink, "instances", 1, 1, 1024) as u32;
    let (ports, ports_span) = match o.str(sink, "ports") {
        Some((p, span)) => match parse_ports(&p) {
            Ok((a, b)) => {
                let size = u32::from(b - a) + 1;
                if size < instances {
                    sink.error(
                        &span,
                        &format!("{path}.ports"),
                        format!("range {p:?} has {size} port(s) but instances = {instances}"),
                    );
                }
                (Some((a, b)), Some(span))
            }
            Err(e) => {
                sink.error(&span, &format!("{path}.ports"), e);
                (None, Some(span))
            }
        },
        None => (None, None),
    };
    if ports.is_none() && ports_span.is_none() && args.iter().any(|a| a.contains("{port}")) {
        sink.error(
            &v.span(),
            &format!("{path}.ports"),
            "args use {port} but no ports are set",
        );
    }
    let (upstream, upstream_span) = match o.str(sink, "upstream") {
        Some((u, span)) => (Some(u), Some(span)),
        None => (None, None),
    };
    if upstream.is_some() && ports.is_none() && ports_span.is_none() {
        sink.error(
            &v.span(),
            &format!("{path}.ports"),
            "a service that joins an upstream needs ports",
        );
    }
    let restart = match o.str(sink, "restart") {
        Some((r, span)) => match r.as_str() {
            "always" => Restart::Always,
            "on-failure" => Restart::OnFailure,
            "never" => Restart::Never,
            _ => {
                sink.error(
                    &span,
                    &format!("{path}.restart"),
                    format!("unknown restart policy {r:?}; expected always, on-failure or never"),
                );
                Restart::Always
            }
        },
        None => Restart::Always,
    };
    let backoff = match o.sub(sink, "backoff") {
        Some(mut b) => {
            let r = ServiceBackoff {
                initial: b.duration_min(
                    sink,
                    "initial",
                    Duration::from_millis(100),
                    Duration::from_millis(1),
                ),
                max: b.duration(sink, "max", Duration::from_secs(30)),
                reset_after: b.duration(sink, "reset_after", Duration::from_secs(60)),
            };
            b.finish(sink);
            r
        }
        None => ServiceBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        },
    };
    let stop = match o.sub(sink, "stop") {
        Some(mut s) => {
            let signal = match s.str(sink, "signal") {
                Some((sig, span)) => Signal::parse(&sig).unwrap_or_else(|| {
                    sink.error(
                        &span,
                        &format!("{path}.stop.signal"),
                        format!("unknown signal {sig:?}; expected e.g. SIGTERM, SIGINT, SIGQUIT"),
                    );
                    Signal::TERM
                }),
                None => Signal::TERM,
            };
            let timeout = s.duration(sink, "timeout", Duration::from_secs(10));
            let drain = s.duration(sink, "drain", Duration::from_secs(30));
            let liveness_grace = s.duration(sink, "liveness_grace", Duration::from_secs(1));
            s.finish(sink);
            Stop {
                signal,
                timeout,
                drain,
                liveness_grace,
            }
        }
        None => Stop {
            signal: Signal::TERM,
            timeout: Duration::from_secs(10),
            drain: Duration::from_secs(30),
            liveness_grace: Duration::from_secs(1),
        },
    };
    let liveness = probe(sink, &mut o, "liveness", Duration::from_secs(1));
    let readiness = probe(sink, &mut o, "readiness", Duration::from_millis(250));
    for (p, key) in [(&liveness, "liveness"), (&readiness, "readiness")] {
        if matches!(
            p,
            Some(Probe {
                kind: ProbeKind::Http(_) | ProbeKind::Tcp,
                ..
            })
        ) && ports.is_none()
        {
            sink.error(
                &v.span(),
                &format!("{path}.{key}"),
                "http and tcp probes need ports",
            );
        }
    }
    let logs = match o.sub(sink, "logs") {
        Some(mut l) => {
            let dir = l
                .str(sink, "dir")
                .map(|(d, _)| base_dir.join(d))
                .unwrap_or_else(|| base_dir.join("logs").join(name));
            let max_size = l.size(sink, "max_size", 10 * 1000 * 1000);
            let keep = l.int(sink, "keep", 5, 1, 1000) as u32;
            l.finish(sink);
            Some(Logs {
                dir,
                max_size,
                keep,
            })
        }
        None => None,
    };
    let give_up = match o.sub(sink, "give_up") {
        Some(mut g) => {
            let restarts = g.int(sink, "restarts", 10, 1, 1_000_000) as u32;
            let within = g.duration_min(
                sink,
                "within",
                Duration::from_secs(300),
                Duration::from_millis(1),
            );
            g.finish(sink);
            Some(GiveUp { restarts, within })
        }
        None => None,
    };
    let ready_timeout = o.duration_min(
        sink,
        "ready_timeout",
        Duration::from_secs(60),
        Duration::from_millis(10),
    );
    let limits = match o.sub(sink, "limits") {
        Some(mut l) => {
            let memory_span = l.get("memory").map(|v| v.span());
            let memory = memory_span.is_some().then(|| l.size(sink, "memory", 0));
            if let (Some(m), Some(span)) = (memory, &memory_span) {
                if m < 1024 * 1024 {
                    sink.error(span, &format!("{}.memory", l.path), "must be at least 1MiB");
                }
            }
            let cpu = l
                .get("cpu")
                .is_some()
                .then(|| l.float(sink, "cpu", 1.0, 0.0, 1024.0));
            let pids = l
                .get("pids")
                .is_some()
                .then(|| l.int(sink, "pids", 1, 1, 4_194_304));
            let nofile = l
                .get("nofile")
                .is_some()
                .then(|| l.int(sink, "nofile", 1024, 8, 1 << 30));
            l.finish(sink);
            ServiceLimits {
                memory,
                cpu,
                pids,
                nofile,
            }
        }
        None => ServiceLimits::default(),
    };
    let scale = scale(sink, &mut o, instances, ports, upstream.is_some());
    o.finish(sink);
    Some(ParsedService {
        service: Service {
            name: name.to_string(),
            command,
            args,
            env,
            workdir,
            instances,
            ports,
            upstream,
            restart,
            backoff,
            stop,
            liveness,
            readiness,
            logs,
            give_up,
            ready_timeout,
            limits,
            scale,
        },
        upstream_span,
        ports_span,
    })
}

fn scale(
    sink: &mut Sink<'_>,
    o: &mut Obj<'_, '_>,
    instances: u32,
    ports: Option<(u16, u16)>,
    has_upstream: bool,
) -> Option<Scale> {
    let span = o.get("scale").map(|v| v.span()).unwrap_or(0..0);
    let mut s = o.sub(sink, "scale")?;
    let path = s.path.clone();
    let min = s.int(sink, "min", u64::from(instances.max(1)), 1, 1024) as u32;
    let max = s.int(sink, "max", u64::from(min), 1, 1024) as u32;
    if max < min {
        sink.error(&span, &path, format!("max ({max}) is below min ({min})"));
    }
    let in_flight = s
        .get("target_in_flight")
        .is_some()
        .then(|| s.float(sink, "target_in_flight", 1.0, 0.0, 1e6));
    let cpu = s
        .get("target_cpu")
        .is_some()
        .then(|| s.float(sink, "target_cpu", 70.0, 0.0, 100.0));
    let target = match (in_flight, cpu) {
        (Some(t), None) => ScaleTarget::InFlight(t),
        (None, Some(c)) => ScaleTarget::Cpu(c),
        (Some(_), Some(_)) => {
            sink.error(&span, &path, "give one of target_in_flight and target_cpu");
            ScaleTarget::InFlight(1.0)
        }
        (None, None) => {
            sink.error(
                &span,
                &path,
                "needs target_in_flight = N or target_cpu = PERCENT",
            );
            ScaleTarget::InFlight(1.0)
        }
    };
    if matches!(target, ScaleTarget::InFlight(_)) && !has_upstream {
        sink.error(&span, &path, "target_in_flight needs the service's `upstream`: it counts the gateway's requests in flight to it");
    }
    let up_after = s.duration_min(
        sink,
        "up_after",
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    let down_after = s.duration_min(
        sink,
        "down_after",
        Duration::from_secs(120),
        Duration::from_secs(1),
    );
    let cooldown = s.duration(sink, "cooldown", Duration::from_secs(30));
    let mut schedule = Vec::new();
    if let Some(v) = s.get("schedule") {
        for (i, item) in crate::read::array_items(sink, v, &format!("{path}.schedule")) {
            let Some(mut e) = Obj::new(sink, item, &format!("{path}.schedule[{i}]")) else {
                continue;
            };
            let cron = match e.str(sink, "cron") {
                Some((text, cspan)) => match crate::cron::Cron::parse(&text) {
                    Ok(c) => Some(c),
                    Err(err) => {
                        sink.error(&cspan, &format!("{}.cron", e.path), err);
                        None
                    }
                },
                None => {
                    crate::read::missing(sink, &item.span(), &e.path, "cron");
                    None
                }
            };
            let emin = e.int(sink, "min", u64::from(min), 1, 1024) as u32;
            if emin > max {
                sink.error(
                    &item.span(),
                    &format!("{}.min", e.path),
                    format!("{emin} is above scale.max ({max})"),
                );
            }
            e.finish(sink);
            if let Some(cron) = cron {
                schedule.push(ScaleSchedule { cron, min: emin });
            }
        }
    }
    s.finish(sink);
    if let Some((a, b)) = ports {
        let pool = u32::from(b - a) + 1;
        if pool < max {
            sink.error(&span, &path, format!("max is {max} but the ports pool has {pool} port(s): give it at least max (one more lets rolling restarts surge)"));
        }
    }
    Some(Scale {
        min,
        max,
        target,
        up_after,
        down_after,
        cooldown,
        schedule,
    })
}

/// Checks across services: known upstreams, no port used twice.
pub(crate) fn cross_check(sink: &mut Sink<'_>, services: &[ParsedService], upstreams: &[String]) {
    let mut taken: HashMap<u16, &str> = HashMap::new();
    for p in services {
        let s = &p.service;
        if let (Some(u), Some(span)) = (&s.upstream, &p.upstream_span) {
            if !upstreams.contains(u) {
                sink.error(
                    span,
                    &format!("service.{}.upstream", s.name),
                    format!("upstream {u:?} is not defined; add [upstream.{u}]"),
                );
            }
        }
        if let (Some(_), Some(span)) = (s.ports, &p.ports_span) {
            for port in s.port_pool() {
                if let Some(other) = taken.insert(port, &s.name) {
                    sink.error(
                        span,
                        &format!("service.{}.ports", s.name),
                        format!("port {port} is also used by service {other:?}"),
                    );
                    break;
                }
            }
        }
    }
}
