//! `ferry-controller`: see the crate documentation of `ferry_controller`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

use ferry_controller::{Metrics, Readiness};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// ferry controller: keeps stateful containers protected by CheckpointPolicies.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FERRY_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init(),
    }
    // Several TLS backends are linked; kube and reqwest need one chosen.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::warn!("a rustls crypto provider was already installed");
    }

    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "no Kubernetes configuration (in-cluster or kubeconfig)");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let http = tokio::spawn(ferry_controller::http::serve(
        args.http_addr,
        metrics.clone(),
        readiness.clone(),
    ));
    let outcome = tokio::select! {
        result = ferry_controller::run(client, metrics, readiness) => result,
        served = http => match served {
            Ok(Err(err)) => Err(err),
            _ => Ok(()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "controller failed");
            ExitCode::FAILURE
        }
    }
}
