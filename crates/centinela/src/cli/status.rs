//! `centinela status`: every supervised instance and the gateway's view of it.

use std::path::Path;
use std::process::ExitCode;

use super::client::{admin_addr, admin_get};

/// Prints the table, or the admin API's JSON with `--json`.
pub(super) fn status(admin: Option<String>, config: &Path, json: bool) -> ExitCode {
    let addr = match admin_addr(admin, config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let body = match admin_get(&addr, "/-/services") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("centinela status: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("centinela status: bad JSON from the admin API: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The gateway's view of each instance, by address.
    let upstreams: serde_json::Value = admin_get(&addr, "/-/upstreams")
        .ok()
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let health = |upstream: Option<&str>, port: Option<u64>| -> String {
        let (Some(up), Some(port)) = (upstream, port) else {
            return "-".into();
        };
        let addr = format!("127.0.0.1:{port}");
        let server = upstreams["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["name"] == up)
            .flat_map(|u| u["servers"].as_array().into_iter().flatten())
            .find(|s| s["address"] == addr.as_str());
        match server {
            None => "out".into(),
            Some(s) if s["ejected"] == true => "ejected".into(),
            Some(s) if s["healthy"] != true => "down".into(),
            Some(s) if s["breaker"] != "closed" => {
                format!("breaker {}", s["breaker"].as_str().unwrap_or("?"))
            }
            Some(_) => "up".into(),
        }
    };
    println!(
        "{:<16} {:>3} {:<14} {:>8} {:>6} {:>9} {:>8} {:>6} {:>8} {:<8}",
        "SERVICE", "#", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "CPU%", "RSS MiB", "HEALTH"
    );
    for svc in v["services"].as_array().into_iter().flatten() {
        for i in svc["instances"].as_array().into_iter().flatten() {
            let dash = || "-".to_string();
            println!(
                "{:<16} {:>3} {:<14} {:>8} {:>6} {:>9} {:>8} {:>6} {:>8} {:<8}",
                svc["name"].as_str().unwrap_or("?"),
                i["index"],
                i["state"].as_str().unwrap_or("?"),
                i["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(dash),
                i["port"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(dash),
                i["uptime_secs"]
                    .as_f64()
                    .map(|u| format!("{u:.0}s"))
                    .unwrap_or_else(dash),
                i["restarts"].as_u64().unwrap_or(0),
                i["cpu_percent"]
                    .as_f64()
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(dash),
                i["rss_kib"]
                    .as_u64()
                    .map(|r| format!("{:.1}", r as f64 / 1024.0))
                    .unwrap_or_else(dash),
                if i["pid"].is_null() {
                    dash()
                } else {
                    health(svc["upstream"].as_str(), i["port"].as_u64())
                },
            );
            // Under its row, as `systemctl status` shows the main process's.
            if let Some(exit) = i["last_exit"].as_str() {
                println!("{:<20} last exit: {exit}", "");
            }
        }
        let sc = &svc["scale"];
        if sc.is_object() {
            println!(
                "{:<20} scale: {} wanted ({}–{}), {} up, {} down{}",
                "",
                sc["desired"],
                sc["min"],
                sc["max"],
                sc["ups"],
                sc["downs"],
                match sc["last"].as_object() {
                    Some(l) => format!(
                        "; last: {} {} -> {}: {}",
                        l["direction"].as_str().unwrap_or("?"),
                        l["from"],
                        l["to"],
                        l["reason"].as_str().unwrap_or("")
                    ),
                    None => String::new(),
                }
            );
        }
    }
    ExitCode::SUCCESS
}
