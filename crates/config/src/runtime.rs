//! `[runtime]`: threads, shutdown, logs.

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
}

pub(crate) fn runtime(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> Runtime {
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
            r.finish(sink);
            Runtime {
                worker_threads,
                shutdown_timeout,
                log_format,
                access_log,
            }
        }
        None => Runtime {
            worker_threads: 0,
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            access_log: true,
        },
    }
}
