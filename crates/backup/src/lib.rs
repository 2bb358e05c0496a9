//! Protecting data (issue #11, being built). So far: the repository
//! ([`repo`]: content-defined chunks, BLAKE3 names, zstd, age, crash-safe
//! writes, verify), `kind = "files"` backups and restores ([`files`]),
//! and which snapshots a retention policy keeps ([`retention`]); schedules
//! are read by `centinela_config::cron`. PostgreSQL, SQLite, S3, prune,
//! the CLI and restore tests come next.
#![forbid(unsafe_code)]

pub mod files;
pub mod ops;
pub mod repo;
pub mod retention;
