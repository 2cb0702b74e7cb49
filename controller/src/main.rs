//! `ferry-controller`: see the crate documentation of `ferry_controller`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ferry_controller::{Error, Metrics};
use ferry_telemetry::{Endpoints, LogFormat, Readiness};

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
    ferry_telemetry::init_logging(args.log_format);
    // Several TLS backends are linked; kube needs one chosen.
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
    let endpoints = Endpoints {
        registry: metrics.registry.clone(),
        readiness: readiness.clone(),
        not_ready_message: "waiting for the CheckpointPolicy CRD and cache",
    };
    let outcome = tokio::select! {
        result = ferry_controller::run(client, metrics, readiness) => result,
        served = ferry_telemetry::serve(args.http_addr, endpoints) => served.map_err(Error::Http),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "controller failed");
            ExitCode::FAILURE
        }
    }
}
