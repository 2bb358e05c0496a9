//! The `centinela` command: CLI parsing, logging, signals and the run loop.
//! All data-plane logic lives in `centinela-gateway`.
#![deny(unsafe_code)]

pub mod cli;
mod limits;
mod memory;
pub mod sdnotify;
