//! `ferry-test-app`: see the crate documentation of `ferry_test_app`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferry_test_app::App;

/// Stateful HTTP counter for checkpoint/restore tests.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// MiB of memory filled with a deterministic pattern (checked by /verify).
    #[arg(long, default_value_t = 0)]
    ballast_mib: u64,
    /// Seed of the ballast pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Counter period in milliseconds.
    #[arg(long, default_value_t = 100)]
    period_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let app = Arc::new(App::new(args.ballast_mib, args.seed));
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("ferry-test-app: binding {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "ferry-test-app: listening on {} with {} MiB ballast",
        listener.local_addr().unwrap_or(args.listen),
        args.ballast_mib
    );
    tokio::spawn(ferry_test_app::count(
        app.clone(),
        Duration::from_millis(args.period_ms.max(1)),
    ));
    match axum::serve(listener, ferry_test_app::router(app)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-test-app: serving: {err}");
            ExitCode::FAILURE
        }
    }
}
