use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Demo products-catalogue API (SQLite-backed).
#[derive(Parser)]
#[command(name = "products-api", version)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:8001. `PORT` in the environment
    /// is used when this is not given (listening on 127.0.0.1).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// SQLite database file; created if missing. Data survives restarts.
    #[arg(long, default_value = "products.db")]
    db: PathBuf,
    /// Fraction of requests (0.0-1.0) answered with 500, /health excepted.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay added before each answer, /health excepted.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(0.0..=1.0).contains(&cli.fail_rate) {
        eprintln!(
            "products-api: --fail-rate must be between 0 and 1, got {}",
            cli.fail_rate
        );
        return ExitCode::from(2);
    }
    let listen = match cli.listen {
        Some(a) => a,
        None => match std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(p) => SocketAddr::from(([127, 0, 0, 1], p)),
            None => {
                eprintln!("products-api: give --listen ADDR or set PORT");
                return ExitCode::from(2);
            }
        },
    };
    let opts = products_api::Options {
        db: cli.db,
        fail_rate: cli.fail_rate,
        latency: std::time::Duration::from_millis(cli.latency_ms),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("products-api: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(products_api::run(listen, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("products-api: {e}");
            ExitCode::FAILURE
        }
    }
}
