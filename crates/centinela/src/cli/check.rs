//! `centinela check`: validate a config file.

use std::path::Path;
use std::process::ExitCode;

use super::load;

pub(super) fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(l) => {
            let c = &l.config;
            println!(
                "{}: OK ({} listener(s), {} route(s), {} upstream(s), {} server(s), {} service(s) with {} instance(s))",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len(),
                c.upstreams.iter().map(|u| u.servers.len()).sum::<usize>(),
                c.services.len(),
                c.services.iter().map(|s| s.instances).sum::<u32>()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
