//! Runs a local control plane until interrupted: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok with simulated nodes.
//! Used by `hack/demo-kwok.sh`; handy for poking at the controller by hand.
//!
//! Usage: `local-control-plane [NODES] [KUBECONFIG_COPY]`. Prints
//! `KUBECONFIG=<path>` on stdout once everything is ready.

use std::process::ExitCode;

use ferry_testenv::{ControlPlane, Options};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let nodes = match args.next().map(|n| n.parse::<usize>()) {
        None => 2,
        Some(Ok(nodes)) => nodes,
        Some(Err(err)) => {
            eprintln!("local-control-plane: NODES must be a number: {err}");
            return ExitCode::FAILURE;
        }
    };
    let copy_to = args.next();
    let plane = match ControlPlane::start(Options::full(nodes)).await {
        Ok(plane) => plane,
        Err(err) => {
            eprintln!("local-control-plane: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut kubeconfig = plane.kubeconfig_path().to_owned();
    if let Some(copy_to) = copy_to {
        if let Err(err) = std::fs::copy(&kubeconfig, &copy_to) {
            eprintln!("local-control-plane: copying the kubeconfig to {copy_to}: {err}");
            return ExitCode::FAILURE;
        }
        kubeconfig = copy_to.into();
    }
    eprintln!(
        "local-control-plane: {} with {nodes} kwok nodes ready in {:.1}s; logs in {}",
        plane.server(),
        plane.startup_time().as_secs_f64(),
        plane.dir().join("logs").display()
    );
    #[allow(clippy::print_stdout)] // the one line callers read
    {
        println!("KUBECONFIG={}", kubeconfig.display());
    }
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                eprintln!("local-control-plane: installing a SIGTERM handler: {err}");
                return ExitCode::FAILURE;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("local-control-plane: stopping");
    drop(plane);
    ExitCode::SUCCESS
}
