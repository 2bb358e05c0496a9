//! The `centinela` command: CLI parsing, logging, signals and the run loop.
//! All data-plane logic lives in `centinela-gateway`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod sdnotify;
