//! `centinela restart|stop|start SERVICE`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::client::{admin_addr, admin_request};
use super::EXIT_CONFIG;

/// Arguments of the service control commands.
#[derive(clap::Args)]
pub(super) struct Control {
    service: String,
    /// Admin address of the running centinela (default: [admin] listen of --config).
    #[arg(long)]
    admin: Option<String>,
    #[arg(long, short, default_value = "centinela.toml")]
    config: PathBuf,
}

/// `centinela restart|stop|start SERVICE`.
pub(super) fn control(action: &str, c: Control) -> ExitCode {
    let addr = match admin_addr(c.admin, &c.config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let path = format!("/-/services/{}/{action}", c.service);
    // A rolling restart takes as long as it takes: no read timeout.
    match admin_request(&addr, "POST", &path, None) {
        Ok((code, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let text = v["result"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(body.as_str());
            if code == 200 {
                println!("{text}");
                ExitCode::SUCCESS
            } else {
                eprintln!("centinela {action}: {text}");
                if code == 404 {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("centinela {action}: {e}");
            ExitCode::FAILURE
        }
    }
}
