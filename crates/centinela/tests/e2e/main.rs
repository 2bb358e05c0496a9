//! End-to-end tests: real sockets on 127.0.0.1 with ephemeral ports, real
//! products-api processes or in-process servers, a real gateway.

mod access_log;
mod alerts;
mod backup;
mod backup_crash;
mod backup_s3;
mod backup_stream;
mod balancing;
mod dashboard;
mod gunicorn;
mod hardening;
mod health;
mod http1;
mod https;
mod jwt;
mod leaks;
mod lifecycle;
mod metrics;
mod proxy;
mod request_limits;
mod retries;
mod rolling;
mod runbook;
mod scaling;
mod shield;
mod slo;
mod tls;
mod trace;
mod util;
mod waf;
