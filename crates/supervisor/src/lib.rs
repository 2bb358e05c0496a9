//! centinela's supervisor (issue #3, in progress): runs each service's
//! instances, restarts crashes with exponential backoff, marks crash loops,
//! gives up when told to, stops whole process groups, and rotates logs.
//!
//! Not yet wired into the `centinela` binary, the gateway (instances joining
//! their upstream once ready) or the admin API; probes and rolling restarts
//! are still to come.
#![deny(unsafe_code)]

pub mod backoff;
pub mod instance;
pub mod logs;
mod sys;

pub use instance::{Instance, State, Status};
