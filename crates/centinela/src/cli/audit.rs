//! `centinela audit verify`: walks the hash chain of the audit log in
//! `[runtime] state_dir` (or `--file`).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Audit {
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(clap::Subcommand)]
enum AuditCmd {
    /// Check that no line of the audit log was edited or removed.
    Verify {
        #[arg(long, short, default_value = "centinela.toml")]
        config: PathBuf,
        /// The log itself (default: STATE_DIR/audit.log of --config).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

pub fn audit(a: Audit) -> ExitCode {
    match a.cmd {
        AuditCmd::Verify { config, file } => {
            let path = match file {
                Some(f) => f,
                None => match super::load(&config) {
                    Ok(l) => l.config.runtime.state_dir.join("audit.log"),
                    Err(code) => return code,
                },
            };
            match centinela_shield::audit::verify(&path) {
                Ok(v) => {
                    println!(
                        "{}: {} entries, chain intact (last hash {})",
                        path.display(),
                        v.entries,
                        &v.last[..16]
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
