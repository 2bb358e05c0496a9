//! Protecting data (issue #11). Built so far: which snapshots a retention
//! policy keeps ([`retention`]); schedules are read by
//! `centinela_config::cron`. The repository, the backup kinds, restores
//! and restore tests come next.
#![forbid(unsafe_code)]

pub mod retention;
