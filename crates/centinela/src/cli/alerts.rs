//! `centinela alerts`: list alerts; `alerts silence NAME --for 2h` and
//! `alerts unsilence NAME`, through the admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use super::client::{admin_addr, admin_get, admin_send};
use super::EXIT_CONFIG;

#[derive(clap::Args)]
pub(super) struct Alerts {
    #[command(subcommand)]
    action: Option<Action>,
    /// Admin address of the running centinela (default: [admin] listen of --config).
    #[arg(long, global = true)]
    admin: Option<String>,
    #[arg(long, short, global = true, default_value = "centinela.toml")]
    config: PathBuf,
    /// Print the admin API's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Stop notifications of an alert for a while (it is still evaluated).
    Silence {
        name: String,
        /// How long, e.g. 30m, 2h, 1d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why, shown beside the silence.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Remove an alert's silence.
    Unsilence { name: String },
    /// Receive alert webhooks and print each alert, one line each (for
    /// trying notifiers out: point a `[notify.NAME] webhook` at it).
    Receive {
        #[arg(long, default_value = "127.0.0.1:9902")]
        listen: String,
    },
}

pub(super) fn alerts(a: Alerts) -> ExitCode {
    // Every action but `receive` talks to a running centinela.
    let addr = || admin_addr(a.admin.clone(), &a.config);
    match a.action {
        Some(Action::Receive { listen }) => super::receive::receive(&listen),
        None => match addr() {
            Ok(addr) => list(&addr, a.json),
            Err(code) => code,
        },
        Some(Action::Silence {
            name,
            duration,
            comment,
        }) => {
            if let Err(e) = centinela_config::units::parse_duration(&duration) {
                eprintln!("centinela alerts silence: --for: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let body = serde_json::json!({"for": duration, "comment": comment}).to_string();
            match addr() {
                Ok(addr) => post(&addr, &format!("/-/alerts/silence/{name}"), &body),
                Err(code) => code,
            }
        }
        Some(Action::Unsilence { name }) => match addr() {
            Ok(addr) => post(&addr, &format!("/-/alerts/unsilence/{name}"), ""),
            Err(code) => code,
        },
    }
}

fn post(addr: &str, path: &str, body: &str) -> ExitCode {
    let timeout = Some(std::time::Duration::from_secs(5));
    match admin_send(addr, "POST", path, body, timeout) {
        Ok((code, text)) => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let msg = v["result"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(&text);
            if code == 200 {
                println!("{msg}");
                ExitCode::SUCCESS
            } else {
                eprintln!("centinela alerts: {msg}");
                if code == 404 || code == 400 {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("centinela alerts: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(addr: &str, json: bool) -> ExitCode {
    let body = match admin_get(addr, "/-/alerts") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("centinela alerts: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let alerts = v["alerts"].as_array().cloned().unwrap_or_default();
    if alerts.is_empty() {
        println!("No alert rules. Add [[alert]] rules, or a [notify.NAME] for the built-in ones.");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<32} {:<9} {:<7} {:<34} {:<10} SINCE",
        "ALERT", "STATE", "SEV", "SIGNAL", "VALUE"
    );
    for a in &alerts {
        let target = ["upstream", "service", "probe", "slo"]
            .iter()
            .find_map(|k| a[*k].as_str().map(|t| format!("{k}={t}")))
            .unwrap_or_default();
        let signal = format!(
            "{} {} {}",
            a["signal"].as_str().unwrap_or(""),
            target,
            a["threshold"].as_str().unwrap_or("")
        );
        let value = a["value"].as_f64().map_or("-".to_string(), |v| {
            format!("{}", (v * 1000.0).round() / 1000.0)
        });
        let since = a["fired_at"]
            .as_str()
            .or(a["active_since"].as_str())
            .or(a["resolved_at"].as_str())
            .unwrap_or("");
        let mut state = a["state"].as_str().unwrap_or("").to_string();
        if let Some(until) = a["silenced"]["until"].as_str() {
            state.push_str(&format!(" (silenced until {until}"));
            if let Some(c) = a["silenced"]["comment"].as_str().filter(|c| !c.is_empty()) {
                state.push_str(&format!(": {c}"));
            }
            state.push(')');
        }
        println!(
            "{:<32} {:<9} {:<7} {:<34} {:<10} {since}",
            a["name"].as_str().unwrap_or(""),
            state,
            a["severity"].as_str().unwrap_or(""),
            signal,
            value
        );
    }
    ExitCode::SUCCESS
}
