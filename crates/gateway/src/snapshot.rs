//! The running configuration as the data plane sees it: route tables and
//! upstream groups, swapped atomically on reload. Server state (health,
//! ejections, breakers), retry budgets and connection pools survive reloads
//! through the [`Registry`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use centinela_config::Config;
use centinela_observe::metrics::RequestStats;
use centinela_shield::iptree::IpSet;
use centinela_shield::Shield;

use crate::balance::budget::RetryBudget;
use crate::balance::server::Server;
use crate::balance::upstream::Group;
use crate::http::client::Tls;
use crate::route::RouteTable;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub groups: Vec<Arc<Group>>,
    pub routes: HashMap<String, RouteTable>,
    /// The shield of this config (IP lists, rate limits), for metrics.
    pub shield: Option<Arc<Shield>>,
    /// `[client_ip] trusted_proxies`.
    pub trusted: Arc<IpSet>,
    /// `[waf]`, compiled.
    pub waf: Option<Arc<crate::waf::WafStage>>,
}

impl Snapshot {
    pub fn group(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.iter().find(|g| &*g.name == name)
    }

    /// Routes whose upstream has no available server (for `/-/ready`).
    pub fn unready_routes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (listener, table) in &self.routes {
            for r in table.routes() {
                if !self.groups[r.group].has_available() {
                    out.push(format!(
                        "{listener} {}{} -> {}",
                        r.host.as_deref().unwrap_or(""),
                        r.prefix,
                        r.upstream
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

/// State kept across reloads.
#[derive(Default)]
pub struct Registry {
    servers: HashMap<(String, SocketAddr), Arc<Server>>,
    budgets: HashMap<String, Arc<RetryBudget>>,
    /// Response counters by (listener, upstream); `""` for no upstream.
    stats: HashMap<(String, String), Arc<RequestStats>>,
    /// `[upstream.X] tls`, built by `set_tls`.
    tls: HashMap<String, Arc<Tls>>,
    /// Rate-limit counts and IP lists, built by `set_shield`.
    shield: Option<Arc<Shield>>,
    trusted: Arc<IpSet>,
    /// `[waf]`, built by `set_waf`.
    waf: Option<Arc<crate::waf::WafStage>>,
}

impl Registry {
    /// Reads the TLS settings of every upstream with `tls` (CA, client
    /// certificate). Called on start and on every reload, before `build`:
    /// an error changes nothing.
    pub fn set_tls(&mut self, config: &Config) -> Result<(), String> {
        let mut tls = HashMap::new();
        for up in &config.upstreams {
            if let Some(t) = &up.tls {
                let cfg = centinela_tls::upstream_config(&t.settings)
                    .map_err(|e| format!("upstream {}: {e}", up.name))?;
                let name = match &t.server_name {
                    Some(n) => Some(
                        rustls_pki_types::ServerName::try_from(n.clone())
                            .map_err(|_| format!("upstream {}: bad server_name {n:?}", up.name))?,
                    ),
                    None => None,
                };
                tls.insert(
                    up.name.clone(),
                    Arc::new(Tls {
                        connector: tokio_rustls::TlsConnector::from(cfg),
                        name,
                    }),
                );
            }
        }
        self.tls = tls;
        Ok(())
    }

    /// Builds the shield of a new config (on start and reload): limits
    /// that did not change keep their counts.
    pub fn set_shield(&mut self, config: &Config) {
        self.shield = Some(Arc::new(Shield::build(config, self.shield.as_deref())));
        self.trusted = Arc::new(IpSet::new(&config.client_ip.trusted_proxies));
    }

    /// Loads and compiles `[waf]`'s rules (on start and every reload: the
    /// files may have changed though the config did not); an error
    /// changes nothing.
    pub fn set_waf(&mut self, config: &Config) -> Result<(), String> {
        self.waf = match &config.waf {
            None => None,
            Some(c) => Some(Arc::new(crate::waf::WafStage::build(c)?)),
        };
        Ok(())
    }

    pub fn build(&mut self, config: Config) -> Snapshot {
        let mut groups = Vec::new();
        let mut servers_keep = HashMap::new();
        let mut budgets_keep = HashMap::new();
        for up in &config.upstreams {
            let servers: Vec<Arc<Server>> =
                up.servers
                    .iter()
                    .map(|s| {
                        let key = (up.name.clone(), s.address);
                        let server = self.servers.get(&key).cloned().unwrap_or_else(|| {
                            Arc::new(Server::new(s.address, s.weight, &up.breaker))
                        });
                        server.set_weight(s.weight);
                        server.pool.set_tls(self.tls.get(&up.name).cloned());
                        servers_keep.insert(key, server.clone());
                        server
                    })
                    .collect();
            let budget = self.budgets.get(&up.name).cloned().unwrap_or_default();
            budgets_keep.insert(up.name.clone(), budget.clone());
            groups.push(Arc::new(Group::new(up.clone(), servers, budget)));
        }
        self.servers = servers_keep;
        self.budgets = budgets_keep;

        let index = |name: &str| {
            groups
                .iter()
                .position(|g: &Arc<Group>| &*g.name == name)
                .unwrap_or(0)
        };
        let mut stats_keep = HashMap::new();
        let routes = config
            .listeners
            .iter()
            .map(|l| {
                let stats = |group: Option<usize>| {
                    let up = group.map_or("", |g| &*groups[g].name);
                    let key = (l.name.clone(), up.to_string());
                    let s = self.stats.get(&key).cloned().unwrap_or_default();
                    stats_keep.insert(key, s.clone());
                    s
                };
                let guard = |r: &centinela_config::Route, i: usize| {
                    self.shield.as_ref().and_then(|s| s.guard(r, i))
                };
                (
                    l.name.clone(),
                    RouteTable::for_listener(l, &config.routes, index, groups.len(), stats, guard),
                )
            })
            .collect();
        self.stats = stats_keep;
        Snapshot {
            config: Arc::new(config),
            groups,
            routes,
            shield: self.shield.clone(),
            trusted: self.trusted.clone(),
            waf: self.waf.clone(),
        }
    }
}
