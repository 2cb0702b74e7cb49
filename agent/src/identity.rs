//! This agent's certificate: where it comes from and how it stays fresh.
//!
//! In a cluster the agent asks for its certificate through the Kubernetes
//! CertificateSigningRequest API, with the controller's signer name. The API
//! server records who asked (the agent's ServiceAccount, and the pod and node
//! its token is bound to), so only the agent pod running on a node can obtain
//! that node's identity; the controller checks that and signs. The private
//! key never leaves this process. Before a third of the certificate's life is
//! left, the agent asks again and swaps the new one in without a restart.
//!
//! Outside a cluster (the runc demo, tests) the certificate comes from files,
//! re-read periodically so a renewed Secret takes effect without a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::tls::{CertificateFacts, Credentials};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::Error;
use crate::metrics::{Metrics, ResultLabels};

/// Key usages the agent's certificate needs (mutual TLS both ways).
const USAGES: [&str; 3] = ["digital signature", "server auth", "client auth"];

/// The CertificateSigningRequest API's shortest allowed validity.
const MIN_VALIDITY: Duration = Duration::from_secs(600);

/// How the agent obtains its certificate from the cluster.
#[derive(Clone, Debug)]
pub struct CsrConfig {
    pub node: String,
    /// `spec.signerName` the controller serves, e.g. `ferry.dev/agent-ferry-system`.
    pub signer_name: String,
    /// PEM of the CA that signs (from a ConfigMap: no secret).
    pub ca_pem: Vec<u8>,
    /// Requested validity (`spec.expirationSeconds`).
    pub validity: Duration,
    /// Renew when this little is left; `None`: a third of the life.
    pub renew_before: Option<Duration>,
    /// Bound on waiting for the controller to sign one request; then the
    /// agent asks anew (long, so a controller that is away for a while
    /// does not leave a pile of requests behind).
    pub sign_timeout: Duration,
}

/// Asks for a certificate once: a fresh key, a CSR object, and the wait for
/// the controller's signature. Returns the certificate chain and key (PEM).
pub async fn request_certificate(
    client: &Client,
    config: &CsrConfig,
) -> Result<(String, String), Error> {
    let failed = |message: String| Error::Identity {
        node: config.node.clone(),
        message,
    };
    let key = rcgen::KeyPair::generate().map_err(|e| failed(format!("generating a key: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| failed(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("ferry-agent:{}", config.node),
    );
    let request = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| failed(format!("writing the CSR: {e}")))?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let prefix: String = config.node.chars().take(200).collect();
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("ferry-agent-{prefix}-")),
            labels: Some(
                [
                    ("app.kubernetes.io/name".to_owned(), "ferry".to_owned()),
                    ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: config.signer_name.clone(),
            usages: Some(USAGES.iter().map(|u| (*u).to_owned()).collect()),
            expiration_seconds: Some(
                i32::try_from(config.validity.max(MIN_VALIDITY).as_secs()).unwrap_or(i32::MAX),
            ),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| {
            failed(format!(
                "creating a CertificateSigningRequest for signer {}: {e}",
                config.signer_name
            ))
        })?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, signer = %config.signer_name, "asked for a certificate; waiting for the controller to sign");
    let started = tokio::time::Instant::now();
    let deadline = started + config.sign_timeout;
    let mut next_progress = started + Duration::from_secs(30);
    loop {
        let current = api
            .get(&name)
            .await
            .map_err(|e| failed(format!("reading CertificateSigningRequest {name}: {e}")))?;
        let status = current.status.unwrap_or_default();
        if let Some(refusal) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(failed(format!(
                "CertificateSigningRequest {name} was {}: {}",
                refusal.type_.to_lowercase(),
                refusal.message.clone().unwrap_or_default()
            )));
        }
        if let Some(certificate) = status.certificate.filter(|c| !c.0.is_empty()) {
            let chain = String::from_utf8(certificate.0).map_err(|_| {
                failed(format!(
                    "CertificateSigningRequest {name}: the certificate is not PEM"
                ))
            })?;
            return Ok((chain, key.serialize_pem()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failed(format!(
                "CertificateSigningRequest {name} was not signed within {:?}: is the ferry controller running?",
                config.sign_timeout
            )));
        }
        if tokio::time::Instant::now() >= next_progress {
            tracing::info!(csr = %name, waited = ?started.elapsed(), "still waiting for the controller to sign");
            next_progress += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The first certificate, retried until it comes (the agent serves nothing
/// without one).
pub async fn first_credentials(
    client: &Client,
    config: &CsrConfig,
    metrics: &Metrics,
) -> Credentials {
    let mut backoff = Duration::from_secs(1);
    loop {
        let attempt = async {
            let (chain, key) = request_certificate(client, config).await?;
            Credentials::new(&config.ca_pem, chain.as_bytes(), key.as_bytes()).map_err(Error::from)
        };
        match attempt.await {
            Ok(credentials) => {
                observe(metrics, &credentials.facts(), "ok");
                tracing::info!(identity = %credentials.identity(), serial = %credentials.facts().serial,
                    expires = %jiff::Timestamp::try_from(credentials.facts().not_after).unwrap_or_default(), "certificate issued");
                return credentials;
            }
            Err(err) => {
                metrics
                    .certificate_renewals
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::warn!(error = %err, retry_in = ?backoff, "no certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Renews the certificate before it runs out, for as long as the agent runs.
pub async fn keep_renewed(
    client: Client,
    config: CsrConfig,
    credentials: Credentials,
    metrics: Arc<Metrics>,
) {
    loop {
        let due = credentials.facts().renewal_due(config.renew_before);
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let mut backoff = Duration::from_secs(5);
        loop {
            let attempt = async {
                let (chain, key) = request_certificate(&client, &config).await?;
                credentials
                    .replace(chain.as_bytes(), key.as_bytes())
                    .map_err(Error::from)
            };
            match attempt.await {
                Ok(facts) => {
                    observe(&metrics, &facts, "ok");
                    tracing::info!(serial = %facts.serial, expires = %jiff::Timestamp::try_from(facts.not_after).unwrap_or_default(),
                        "certificate renewed; new connections present it");
                    break;
                }
                Err(err) => {
                    observe(&metrics, &credentials.facts(), "error");
                    let left = credentials
                        .facts()
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::warn!(error = %err, retry_in = ?backoff, expires_in = ?left, "renewing the certificate failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

/// Counts a certificate issued (or a failed attempt) and sets the expiry
/// gauge to the certificate presented now.
pub fn observe(metrics: &Metrics, facts: &CertificateFacts, result: &'static str) {
    metrics
        .certificate_renewals
        .get_or_create(&ResultLabels { result })
        .inc();
    metrics.certificate_expiry.set(facts.expires_unix_seconds());
}
