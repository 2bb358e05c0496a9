//! Which ports of a service's pool are held, and since when the others are
//! free. One book per service, shared by its instances: a rolling restart
//! and a hung instance's replacement both take a spare port from it, and an
//! instance gives its port back only once its process group is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use centinela_config::Service;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Ports(Mutex<Book>);

#[derive(Debug, Default)]
struct Book {
    held: HashSet<u16>,
    /// When each port was last given back: the one free the longest is
    /// taken first (never used ones before any).
    released: HashMap<u16, Instant>,
}

impl Ports {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `preferred` if it is in the pool and free, else the pool's
    /// port free the longest. `None` when every port is held (or the
    /// service has no pool).
    pub fn take(&self, spec: &Service, preferred: Option<u16>) -> Option<u16> {
        let mut b = self.book();
        let port = match preferred {
            Some(p) if !b.held.contains(&p) && spec.port_pool().any(|q| q == p) => Some(p),
            _ => spec
                .port_pool()
                .filter(|p| !b.held.contains(p))
                .min_by_key(|p| {
                    b.released
                        .get(p)
                        .map(|t| (1, *t))
                        .unwrap_or((0, Instant::now()))
                }),
        }?;
        b.held.insert(port);
        b.released.remove(&port);
        Some(port)
    }

    /// Marks `port` held, whether or not it is in the pool (an instance
    /// started on its own port outside of any pool).
    pub fn hold(&self, port: u16) {
        let mut b = self.book();
        b.held.insert(port);
        b.released.remove(&port);
    }

    /// Gives `port` back: its instance's process group is gone.
    pub fn release(&self, port: u16) {
        let mut b = self.book();
        if b.held.remove(&port) {
            b.released.insert(port, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ports: &str) -> Service {
        let toml = format!(
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[service.s]\ncommand = \"/bin/sh\"\n\
             args = [\"{{port}}\"]\ninstances = 1\nports = \"{ports}\"\n"
        );
        let loaded = centinela_config::parse(&toml, "t.toml").unwrap();
        loaded.config.services[0].clone()
    }

    #[test]
    fn a_port_is_lent_once_and_the_longest_free_goes_first() {
        let s = spec("9001-9003");
        let p = Ports::default();
        assert_eq!(p.take(&s, Some(9002)), Some(9002));
        assert_eq!(p.take(&s, Some(9002)), Some(9001), "held: another one");
        assert_eq!(p.take(&s, None), Some(9003));
        assert_eq!(p.take(&s, None), None, "all held");
        p.release(9003);
        p.release(9001);
        // 9003 has been free longer than 9001.
        assert_eq!(p.take(&s, None), Some(9003));
        assert_eq!(p.take(&s, Some(9999)), Some(9001), "not in the pool");
    }
}
