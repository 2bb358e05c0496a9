//! Observation: what centinela knows about itself and its services, and how
//! it tells.
//!
//! The data plane only feeds counters ([`metrics`]): atomics it holds a
//! handle to, never a lock or a map lookup on the request path. Everything
//! else reads them on its own schedule: `GET /metrics` writes them out
//! ([`expo`]) through the [`Collect`] trait that each part implements.
#![forbid(unsafe_code)]

pub mod alert;
pub mod clock;
pub mod dashboard;
pub mod expo;
pub mod figures;
pub mod history;
pub mod metrics;
pub mod notify;
pub mod observer;
pub mod probes;
pub mod process;
pub mod slo;
pub mod state;

pub use expo::{Exposition, Format, Kind};
pub use figures::{BackupFigures, Figures, ServerFigures, ServiceFigures, Source, UpstreamFigures};
pub use observer::Observer;

/// Something that writes its metrics into an exposition: the gateway, the
/// supervisor's view, the process itself.
pub trait Collect: Send + Sync {
    fn collect(&self, out: &mut Exposition);
}

/// Writes every collector into one exposition in `format`.
pub fn render(format: Format, collectors: &[&dyn Collect]) -> String {
    let mut out = Exposition::new(format);
    for c in collectors {
        c.collect(&mut out);
    }
    out.finish()
}
