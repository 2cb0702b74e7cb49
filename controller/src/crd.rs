//! Start-up check that the CheckpointPolicy CRD is installed and usable.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

use crate::Error;

/// Returns once the CRD `name` exists, is Established and serves
/// `v1alpha1`; waits up to `limit` for a freshly created CRD to settle.
pub async fn ensure_installed(client: &Client, name: &str, limit: Duration) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let crd = crds.get_opt(name).await.map_err(|source| Error::Kube {
            action: "reading",
            object: format!("CustomResourceDefinition {name}"),
            source,
        })?;
        let Some(crd) = crd else {
            return Err(Error::CrdMissing {
                name: name.to_owned(),
            });
        };
        let served = crd
            .spec
            .versions
            .iter()
            .any(|v| v.name == "v1alpha1" && v.served);
        if !served {
            return Err(Error::CrdVersionNotServed {
                name: name.to_owned(),
                version: "v1alpha1".into(),
            });
        }
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            tracing::info!(crd = name, "CustomResourceDefinition is Established");
            return Ok(());
        }
        if started.elapsed() >= limit {
            let conditions = conditions
                .iter()
                .map(|c| {
                    format!(
                        "{}={} ({})",
                        c.type_,
                        c.status,
                        c.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::CrdNotEstablished {
                name: name.to_owned(),
                waited_secs: limit.as_secs(),
                conditions: if conditions.is_empty() {
                    "no conditions yet".into()
                } else {
                    conditions
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
