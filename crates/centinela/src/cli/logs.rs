//! `centinela logs SERVICE`: the last lines of each instance's log, `-f` follows.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{load, EXIT_CONFIG};

pub(super) fn logs(service: &str, config: &Path, follow: bool, lines: usize) -> ExitCode {
    use std::io::{Read, Seek, SeekFrom};
    let loaded = match load(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(svc) = loaded.config.services.iter().find(|s| s.name == service) else {
        let known: Vec<&str> = loaded
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        eprintln!(
            "centinela logs: no service {service:?} in {} (services: {})",
            config.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some(l) = &svc.logs else {
        eprintln!(
            "centinela logs: service {service:?} has no `logs` setting; its output is not kept"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let files: Vec<(u32, PathBuf)> = (0..svc.instances)
        .map(|i| (i, l.dir.join(format!("{}-{i}.log", svc.name))))
        .collect();
    let mut offsets = vec![0u64; files.len()];
    for ((i, f), off) in files.iter().zip(offsets.iter_mut()) {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        *off = text.len() as u64;
        let all: Vec<&str> = text.lines().collect();
        for line in &all[all.len().saturating_sub(lines)..] {
            println!("{service}[{i}] {line}");
        }
    }
    if !follow {
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        for ((i, f), off) in files.iter().zip(offsets.iter_mut()) {
            let Ok(mut file) = std::fs::File::open(f) else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *off {
                *off = 0; // rotated
            }
            if len > *off && file.seek(SeekFrom::Start(*off)).is_ok() {
                let mut new = String::new();
                if file.read_to_string(&mut new).is_ok() {
                    *off += new.len() as u64;
                    for line in new.lines() {
                        println!("{service}[{i}] {line}");
                    }
                }
            }
        }
    }
}
