//! The typed configuration. A value of these types has passed validation:
//! addresses parse, weights are positive, routes point at known upstreams.

use std::net::SocketAddr;
use std::time::Duration;

use crate::units::StatusSet;

#[derive(Clone, Debug)]
pub struct Config {
    pub admin: Admin,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    /// Programs run by the supervisor.
    pub services: Vec<Service>,
    pub runtime: Runtime,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct Admin {
    /// `/-/health`, `/-/ready` and later metrics and control endpoints.
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    /// How long a client may take to send a request head; an idle
    /// keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// How request paths are normalized before routing and forwarding.
    pub path_normalization: PathNormalization,
    /// Open client connections at most; past it, accepts pause.
    pub max_connections: u32,
    /// How long a write to a client may wait for the client to read.
    pub write_timeout: Duration,
}

/// `[[listener]] path_normalization`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathNormalization {
    /// Dot segments removed (RFC 3986 §5.2.4), percent-encoded unreserved
    /// characters decoded; `%2F`, `%5C`, `\` and `%00` refused.
    Strict,
    /// Paths are routed and forwarded as sent.
    Off,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `None`: the route applies to every listener.
    pub listener: Option<String>,
    /// Exact host match, lower-cased, port ignored. `None`: any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub upstream: String,
    /// Protocols a client may switch to (`Upgrade`), lower-cased.
    pub upgrade: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    P2c,
    Random,
    Hash,
}

impl Balance {
    pub const NAMES: &'static [&'static str] =
        &["round_robin", "least_conn", "p2c", "random", "hash"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "p2c" => Balance::P2c,
            "random" => Balance::Random,
            "hash" => Balance::Hash,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    ClientIp,
}

impl HashKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        match s.split_once(':') {
            Some(("header", name)) if !name.is_empty() => match is_token(name) {
                true => Ok(HashKey::Header(name.to_ascii_lowercase())),
                false => Err(format!("{name:?} is not a valid header name")),
            },
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(format!(
                "invalid hash_key {s:?}: use \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
            )),
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2): header names, protocol names.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub servers: Vec<Server>,
    /// Active health checks; `None` when not configured.
    pub health: Option<Health>,
    pub outlier: Outlier,
    pub retry: Retry,
    pub breaker: Breaker,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// A server returning to rotation ramps its share up linearly over this.
    pub slow_start: Duration,
}

#[derive(Clone, Debug)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect_status: StatusSet,
    /// Host header sent with checks; default: the server address.
    pub host: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Outlier {
    /// 0 disables passive outlier detection.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    Connect,
    Reset,
    Timeout,
    Status(u16),
    /// Any 5xx status.
    Status5xx,
}

impl RetryOn {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "connect" => RetryOn::Connect,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            "5xx" => RetryOn::Status5xx,
            code => match code.parse::<u16>() {
                Ok(c) if (500..=599).contains(&c) || (400..=499).contains(&c) => RetryOn::Status(c),
                _ => return None,
            },
        })
    }
}

#[derive(Clone, Debug)]
pub struct Retry {
    /// Total tries per request, the first one included. 1 disables retries.
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries may be at most this percentage of requests over a 10 s window.
    pub budget_percent: u32,
    /// Retries always allowed per 10 s window, whatever the percentage says.
    pub budget_min: u32,
    pub on: Vec<RetryOn>,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub buffer_body: u64,
}

impl Retry {
    pub fn retries_status(&self, status: u16) -> bool {
        self.on.iter().any(|r| match r {
            RetryOn::Status(c) => *c == status,
            RetryOn::Status5xx => (500..=599).contains(&status),
            _ => false,
        })
    }

    pub fn retries(&self, kind: RetryOn) -> bool {
        self.on.contains(&kind)
    }
}

#[derive(Clone, Debug)]
pub struct Breaker {
    pub enabled: bool,
    pub error_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub half_open_requests: u32,
    /// A half-open probe with no outcome after this frees its slot.
    pub half_open_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_in_flight: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Time to receive response headers, per attempt.
    pub response: Duration,
    /// Idle keep-alive connections to the upstream are closed after this.
    pub idle: Duration,
    /// Overall deadline for a request, retries and backoff included.
    pub request: Duration,
    /// A request or response body that moves no byte for this long is
    /// cut, its slot released and its connections closed.
    pub body_idle: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this
    /// long is closed.
    pub tunnel_idle: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct Runtime {
    /// 0: one per core (or `TOKIO_WORKER_THREADS`).
    pub worker_threads: usize,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// One log line per request, at target `access`.
    pub access_log: bool,
}

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
