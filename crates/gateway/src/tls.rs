//! TLS on the listeners: their rustls settings built from the config,
//! swapped in when the certificate files change (polled) or on a reload,
//! and the handshake counters.
//!
//! A certificate that fails to load keeps the one in use, with a warning
//! that says why; established connections keep their session either way.
//! Session resumption (tickets and the session cache) is shared by every
//! settings built, so a reload does not end it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use centinela_config::{Listener, ServerSettings};
use centinela_tls::server::{server_config, Resumption};
use tracing::{info, warn};

use crate::listener::Tls;

/// How often certificate files are looked at for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct Entry {
    settings: ServerSettings,
    stamps: Vec<Stamp>,
    slot: Arc<Tls>,
}

/// Every TLS listener's settings.
pub struct Certs {
    stats: Arc<Stats>,
    resumption: Resumption,
    entries: Mutex<HashMap<String, Entry>>,
    /// Every listener's slot, TLS or not, kept while the listener is in
    /// the config: a reload that adds or removes `tls` swaps its content.
    slots: Mutex<HashMap<String, Arc<Tls>>>,
}

/// Counts by listener, each as (succeeded, failed).
#[derive(Default)]
pub struct Counts(Mutex<BTreeMap<Arc<str>, [u64; 2]>>);

impl Counts {
    pub fn count(&self, listener: &Arc<str>, ok: bool) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(listener.clone()).or_default()[usize::from(!ok)] += 1;
    }

    pub fn get(&self) -> Vec<(Arc<str>, [u64; 2])> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// What the metrics show of TLS on the listeners.
#[derive(Default)]
pub struct Stats {
    /// Client handshakes.
    pub handshakes: Counts,
    /// Certificates reloaded because their files changed.
    pub reloads: Counts,
}

fn stamps(s: &ServerSettings) -> Vec<Stamp> {
    s.certs
        .iter()
        .flat_map(|c| [stamp(&c.cert), stamp(&c.key)])
        .collect()
}

/// The settings of every listener with `tls`, built before anything is
/// swapped: one that fails stops a start or a reload.
pub type Built = Vec<(
    String,
    ServerSettings,
    Vec<Stamp>,
    Arc<rustls::ServerConfig>,
)>;

impl Certs {
    pub fn new(stats: Arc<Stats>) -> Result<Certs, String> {
        Ok(Certs {
            stats,
            resumption: Resumption::new()?,
            entries: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every TLS listener's certificates and keys.
    pub fn build(&self, listeners: &[Listener]) -> Result<Built, String> {
        let mut out = Vec::new();
        for l in listeners {
            if let Some(s) = &l.tls {
                // Stamped before reading: a change while reading is seen
                // at the next look.
                let st = stamps(s);
                let cfg = server_config(s, &self.resumption)
                    .map_err(|e| format!("listener {}: {e}", l.name))?;
                out.push((l.name.clone(), s.clone(), st, cfg));
            }
        }
        Ok(out)
    }

    /// Swaps in what `build` made, and empties the slots of listeners
    /// without TLS now. The slot of each listener, for its accept loop.
    pub fn apply(&self, built: Built, listeners: &[Listener]) -> HashMap<String, Arc<Tls>> {
        let mut entries = self.entries();
        let mut all = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|n, _| listeners.iter().any(|l| &l.name == n));
        let mut slots = HashMap::new();
        let mut built: HashMap<String, _> = built
            .into_iter()
            .map(|(n, s, st, c)| (n, (s, st, c)))
            .collect();
        for l in listeners {
            let slot = all.entry(l.name.clone()).or_default().clone();
            match built.remove(&l.name) {
                Some((settings, stamps, cfg)) => {
                    slot.store(Some(cfg));
                    entries.insert(
                        l.name.clone(),
                        Entry {
                            settings,
                            stamps,
                            slot: slot.clone(),
                        },
                    );
                }
                None => {
                    slot.store(None);
                    entries.remove(&l.name);
                }
            }
            slots.insert(l.name.clone(), slot);
        }
        entries.retain(|n, _| listeners.iter().any(|l| &l.name == n));
        slots
    }

    /// Reloads the certificates of listeners whose files changed. A bad
    /// new certificate keeps the old one, with a warning; it is tried
    /// again when its files change again.
    pub fn look(&self) {
        let mut entries = self.entries();
        for (name, e) in entries.iter_mut() {
            let now = stamps(&e.settings);
            if now == e.stamps {
                continue;
            }
            e.stamps = now;
            match server_config(&e.settings, &self.resumption) {
                Ok(cfg) => {
                    e.slot.store(Some(cfg));
                    self.stats.reloads.count(&name.as_str().into(), true);
                    info!(listener = %name, "Certificate files changed: reloaded");
                }
                Err(error) => {
                    self.stats.reloads.count(&name.as_str().into(), false);
                    warn!(listener = %name, %error, "Certificate files changed but cannot be used; keeping the certificates in use")
                }
            }
        }
    }
}

/// Looks at the certificate files every [`WATCH_EVERY`].
pub async fn watch(certs: Arc<Certs>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let c = certs.clone();
        // Reading files and keys: off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || c.look()).await;
    }
}
