//! `[runtime]`: threads, shutdown, logs, where state is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::Sink;
use crate::read::Obj;

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
    /// W3C `traceparent` passed upstream, a new one for requests without a
    /// valid one; its trace id in the access log.
    pub trace_context: bool,
    /// Where centinela keeps its state (alert state, silences, history):
    /// `centinela-data` beside the config file unless set.
    pub state_dir: PathBuf,
}

pub(crate) fn runtime(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>, base_dir: &Path) -> Runtime {
    let default_state = base_dir.join("centinela-data");
    match top.sub(sink, "runtime") {
        Some(mut r) => {
            let worker_threads = r.int(sink, "worker_threads", 0, 0, 1024) as usize;
            let shutdown_timeout = r.duration(sink, "shutdown_timeout", Duration::from_secs(30));
            let log_format = match r.str(sink, "log_format") {
                Some((s, _)) if s == "text" => LogFormat::Text,
                Some((s, _)) if s == "json" => LogFormat::Json,
                Some((s, span)) => {
                    sink.error(
                        &span,
                        "runtime.log_format",
                        format!("unknown log format {s:?}; expected \"text\" or \"json\""),
                    );
                    LogFormat::Text
                }
                None => LogFormat::Text,
            };
            let access_log = r.bool(sink, "access_log", true);
            let trace_context = r.bool(sink, "trace_context", true);
            let state_dir = match r.str(sink, "state_dir") {
                Some((d, span)) if d.is_empty() => {
                    sink.error(&span, "runtime.state_dir", "must not be empty");
                    default_state
                }
                Some((d, _)) => base_dir.join(d),
                None => default_state,
            };
            r.finish(sink);
            Runtime {
                worker_threads,
                shutdown_timeout,
                log_format,
                access_log,
                trace_context,
                state_dir,
            }
        }
        None => Runtime {
            worker_threads: 0,
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            access_log: true,
            trace_context: true,
            state_dir: default_state,
        },
    }
}
