//! ferry's controller.
//!
//! Each CheckpointPolicy is reconciled as a pipeline: validate the spec,
//! compute the status it should have (a pure function of the object and the
//! clock), and write that status with server-side apply only when it differs
//! from what is stored, so the controller's own writes never re-trigger work.

pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod webhook;

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};

use ferry_api::CheckpointPolicy;
use ferry_telemetry::Readiness;

pub use crate::metrics::Metrics;

/// Everything that can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "CustomResourceDefinition {name} is not installed; install the chart (`helm install ferry charts/ferry`) or `kubectl apply -f charts/ferry/crds/`"
    )]
    CrdMissing { name: String },
    #[error(
        "CustomResourceDefinition {name} is not Established after {waited_secs}s: {conditions}"
    )]
    CrdNotEstablished {
        name: String,
        waited_secs: u64,
        conditions: String,
    },
    #[error(
        "CustomResourceDefinition {name} does not serve version {version}; upgrade the CRD from charts/ferry/crds/"
    )]
    CrdVersionNotServed { name: String, version: String },
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("serving /healthz, /readyz and /metrics: {0}")]
    Http(#[source] std::io::Error),
    #[error("CheckpointPolicy has no {0}; the API server always sets it")]
    MissingMetadata(&'static str),
}

/// Shared state of all reconciliations.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Checks the CRD, then runs the CheckpointPolicy controller until the
/// process receives SIGTERM or SIGINT.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<(), Error> {
    crd::ensure_installed(
        &client,
        ferry_api::CRD_NAME,
        std::time::Duration::from_secs(30),
    )
    .await?;
    let policies: Api<CheckpointPolicy> = Api::all(client.clone());
    let context = Arc::new(Context { client, metrics });

    let controller =
        Controller::new(policies, watcher::Config::default().any_semantic()).shutdown_on_signal();
    let store = controller.store();
    tokio::spawn(async move {
        // Store readiness wakes only the most recent waiter, and the
        // controller itself waits on it too: poll again now and then
        // instead of waiting once.
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_millis(250),
                store.wait_until_ready(),
            )
            .await
            {
                Ok(Ok(())) => {
                    readiness.set();
                    tracing::info!("CheckpointPolicy cache synced; ready");
                    return;
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "CheckpointPolicy cache writer dropped");
                    return;
                }
                Err(_elapsed) => {}
            }
        }
    });
    controller
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile loop");
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
