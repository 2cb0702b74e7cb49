//! `ferry-controller`: see the crate documentation of `ferry_controller`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use ferry_api::CheckpointPolicy;
use ferry_controller::agents::AgentPool;
use ferry_controller::identity::CertificateAuthority;
use ferry_controller::identity::signer::SignerConfig;
use ferry_controller::leader::{LeaderElection, LeaderElectionConfig};
use ferry_controller::webhook::{WebhookState, WebhookTls};
use ferry_controller::{Config, Error, Metrics};
use ferry_proto::tls::{Credentials, TlsFiles};
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
    /// The ferry CA's certificate (PEM).
    #[arg(long, env = "FERRY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The CA's private key (PEM). With it the controller issues its own
    /// certificate, renews it, and signs the agents' certificate requests.
    #[arg(long, env = "FERRY_CA_KEY", requires = "tls_ca", conflicts_with_all = ["tls_cert", "tls_key"])]
    ca_key: Option<PathBuf>,
    /// Without `--ca-key`: the controller's certificate, whose URI SAN is
    /// `spiffe://ferry.dev/controller` (PEM, re-read every minute).
    #[arg(long, env = "FERRY_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Signer name of the agents' CertificateSigningRequests.
    #[arg(long, env = "FERRY_CSR_SIGNER_NAME", default_value = "ferry.dev/agent")]
    csr_signer_name: String,
    /// The agents' ServiceAccount (in `POD_NAMESPACE`): the only requester
    /// whose certificate requests are signed.
    #[arg(
        long,
        env = "FERRY_AGENT_SERVICE_ACCOUNT",
        default_value = "ferry-agent"
    )]
    agent_service_account: String,
    /// Validity of the controller's certificate, and the longest an agent's
    /// certificate may get.
    #[arg(long, env = "FERRY_CERTIFICATE_VALIDITY", default_value = "4h", value_parser = parse_duration)]
    certificate_validity: Duration,
    /// Renew the controller's certificate when this little of its life is
    /// left; default: a third of its life.
    #[arg(long, env = "FERRY_CERTIFICATE_RENEW_BEFORE", value_parser = parse_duration)]
    certificate_renew_before: Option<Duration>,
    /// Call agents without TLS. Only for tests with agents started the same
    /// way; production agents refuse such callers.
    #[arg(long, conflicts_with = "tls_ca")]
    insecure_agents: bool,
    /// Namespace of the agents' Leases (the chart's release namespace);
    /// empty: all namespaces.
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    agent_namespace: String,
    /// Name of this controller instance (its pod name).
    #[arg(long, env = "POD_NAME", default_value = "ferry-controller")]
    identity: String,
    /// Bound on one kubelet checkpoint call.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    checkpoint_timeout: Duration,
    /// Checkpoints in progress at once, overall.
    #[arg(long, default_value_t = 32)]
    max_concurrent_checkpoints: usize,
    /// Checkpoints in progress at once on one node.
    #[arg(long, default_value_t = 2)]
    max_checkpoints_per_node: usize,
    /// Failovers in progress at once across all policies; more failed pods
    /// wait (a lost zone is restored a few pods at a time).
    #[arg(long, default_value_t = 10)]
    max_concurrent_failovers: usize,
    /// Image of the warm standby pods kept on standby nodes (a pause image
    /// the nodes already hold; see `placement.warmStandbys`).
    #[arg(long, default_value = ferry_controller::warm::DEFAULT_IMAGE)]
    warm_standby_image: String,
    /// Elect a leader on a Lease, so several replicas can run and only one acts.
    #[arg(long)]
    leader_election: bool,
    /// How long the leader Lease stays valid after a renewal: a leader lost
    /// with its node is replaced after about this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    leader_lease_duration: Duration,
    /// How often the leader renews its Lease; it gives up leading when no
    /// renewal succeeded for two thirds of the Lease duration.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    leader_renew_interval: Duration,
    /// How often a standby replica reads the Lease, and how soon the leader
    /// retries a failed renewal.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    leader_retry_interval: Duration,
    /// PostgreSQL URL of the history database, e.g.
    /// `postgresql://ferry:<password>@db:5432/ferry?sslmode=require` (the
    /// chart reads it from a Secret). Every checkpoint, replication and
    /// failover is recorded there; off without it.
    #[arg(long, env = "FERRY_HISTORY_DATABASE_URL", hide_env_values = true)]
    history_database_url: Option<String>,
    /// CA certificate(s) (PEM) the history database's server certificate is
    /// verified against with `sslmode=prefer|require`; default: the system's.
    #[arg(long, env = "FERRY_HISTORY_CA_FILE")]
    history_ca_file: Option<PathBuf>,
    /// History rows kept while the database is away; more are dropped and
    /// counted (`ferry_controller_history_rows_total{result="dropped"}`).
    #[arg(long, default_value_t = 10_000)]
    history_buffer_rows: usize,
    /// Namespace of the leader-election Lease (default: the agent namespace).
    #[arg(long, env = "FERRY_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Address of the admission webhook (HTTPS); off when not given.
    #[arg(long, requires_all = ["webhook_cert", "webhook_key"])]
    webhook_addr: Option<SocketAddr>,
    /// The webhook's serving certificate (PEM).
    #[arg(long)]
    webhook_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    webhook_key: Option<PathBuf>,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    ferry_api::parse_duration("duration", value).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    ferry_telemetry::init_logging(args.log_format);
    // Several TLS backends are linked; kube, tonic and the webhook need one chosen.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::warn!("a rustls crypto provider was already installed");
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "controller failed");
            ExitCode::FAILURE
        }
    }
}

/// The controller's certificate, and the tasks that keep it (and, with the
/// CA key, the agents' certificates) coming.
fn credentials(
    args: &Args,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
) -> Result<Option<Credentials>, Error> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| ferry_proto::tls::TlsError::Read {
            path: path.clone(),
            source,
        })
    };
    match (&args.tls_ca, &args.ca_key, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(ca_key), _, _) => {
            let ca = Arc::new(CertificateAuthority::new(&read(ca)?, &read(ca_key)?)?);
            let credentials = ca.own_credentials(args.certificate_validity)?;
            metrics.certificate_renewed(&credentials.facts(), "ok");
            tokio::spawn(ferry_controller::identity::keep_own_renewed(
                ca.clone(),
                credentials.clone(),
                args.certificate_validity,
                args.certificate_renew_before,
                metrics.clone(),
            ));
            tokio::spawn(ferry_controller::identity::signer::run(
                client.clone(),
                ca,
                SignerConfig {
                    signer_name: args.csr_signer_name.clone(),
                    agent_namespace: args.agent_namespace.clone(),
                    agent_service_account: args.agent_service_account.clone(),
                    max_validity: args.certificate_validity,
                },
                metrics.clone(),
            ));
            Ok(Some(credentials))
        }
        (Some(ca), None, Some(cert), Some(key)) => {
            let files = TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            let credentials = Credentials::load(&files)?;
            metrics.certificate_renewed(&credentials.facts(), "ok");
            let metrics = metrics.clone();
            tokio::spawn(credentials.clone().keep_reloaded(
                files,
                Duration::from_secs(60),
                move |facts, ok| {
                    metrics.certificate_renewed(facts, if ok { "ok" } else { "error" })
                },
            ));
            Ok(Some(credentials))
        }
        _ if args.insecure_agents => Ok(None),
        _ => Err(Error::Tls(ferry_proto::tls::TlsError::Missing(
            "--tls-ca with --ca-key, or with --tls-cert and --tls-key (or --insecure-agents for tests)",
        ))),
    }
}

/// The history recorder, when a database is configured. A URL that cannot
/// be used stops the start-up; a database that is down, refuses the
/// credentials or is slow does not (its errors are logged, counted and
/// shown in every policy's HistoryRecorded condition), so that checkpoints
/// and failovers never wait for it.
fn history(args: &Args, metrics: &Metrics) -> Result<Option<ferry_history::Recorder>, Error> {
    let Some(url) = &args.history_database_url else {
        return Ok(None);
    };
    let database = ferry_history::Database::new(url, args.history_ca_file.as_deref())?;
    tracing::info!(%database, buffer_rows = args.history_buffer_rows, "recording history in PostgreSQL");
    Ok(Some(ferry_history::Recorder::start(
        database,
        ferry_history::RecorderOptions {
            capacity: args.history_buffer_rows,
            ..Default::default()
        },
        metrics.history.clone(),
    )))
}

async fn run(args: Args) -> Result<(), Error> {
    let client = kube::Client::try_default()
        .await
        .map_err(|source| Error::Kube {
            action: "loading the Kubernetes configuration (in-cluster or kubeconfig) for",
            object: "the controller".into(),
            source,
        })?;
    let metrics = Arc::new(Metrics::default());
    let tls = credentials(&args, &client, &metrics)?;
    let agents = Arc::new(AgentPool::new(tls, Duration::from_secs(5)));
    let readiness = Arc::new(Readiness::default());
    let endpoints = Endpoints {
        registry: metrics.registry.clone(),
        readiness: readiness.clone(),
        not_ready_message: "waiting for the CheckpointPolicy CRD and caches",
    };
    let http = tokio::spawn(ferry_telemetry::serve(args.http_addr, endpoints));

    // Every replica serves the webhook (the API server may call any of
    // them); only the leader reconciles.
    let mut webhook_policies = None;
    if let Some(addr) = args.webhook_addr {
        let (store, writer) = reflector::store();
        webhook_policies = Some(store.clone());
        let policies = watcher(
            kube::Api::<CheckpointPolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
        tokio::spawn(policies);
        let tls = WebhookTls {
            cert: args.webhook_cert.clone().unwrap_or_default(),
            key: args.webhook_key.clone().unwrap_or_default(),
        };
        let state = WebhookState::reading_fresh(store, metrics.webhook.clone(), client.clone());
        let listener = ferry_controller::webhook::WebhookListener::bind(addr, &tls).await?;
        tokio::spawn(async move {
            if let Err(err) =
                ferry_controller::webhook::serve_listener(listener, state, std::future::pending())
                    .await
            {
                tracing::error!(error = %err, "admission webhook stopped");
            }
        });
    }

    let config = Config {
        checkpoint_timeout: args.checkpoint_timeout,
        max_concurrent_checkpoints: args.max_concurrent_checkpoints,
        max_checkpoints_per_node: args.max_checkpoints_per_node,
        max_concurrent_failovers: args.max_concurrent_failovers.max(1),
        agent_namespace: Some(args.agent_namespace.clone()).filter(|n| !n.is_empty()),
        identity: args.identity.clone(),
        history: history(&args, &metrics)?,
        warm_standby_image: args.warm_standby_image.clone(),
    };
    if args.leader_election {
        // A replica standing by is ready once it can serve the webhook: a
        // Deployment rollout waits for the new replica to be Ready before it
        // stops the old leader, so readiness must not wait for leadership.
        let readiness = readiness.clone();
        tokio::spawn(async move {
            if let Some(store) = webhook_policies
                && store.wait_until_ready().await.is_err()
            {
                return;
            }
            readiness.set();
        });
    }
    // The caches fill while this replica stands by; it reconciles only
    // once it leads.
    let (leading_tx, leading) = tokio::sync::watch::channel(!args.leader_election);
    let controller =
        ferry_controller::run(client.clone(), config, agents, metrics, readiness, leading);
    tokio::pin!(controller);
    let mut http = http;
    if args.leader_election {
        let namespace = args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| args.agent_namespace.clone());
        let mut election_config =
            LeaderElectionConfig::new(namespace, "ferry-controller", args.identity.clone());
        election_config.lease_duration = args.leader_lease_duration;
        election_config.renew_interval = args.leader_renew_interval;
        election_config.retry_interval = args.leader_retry_interval;
        let election = LeaderElection::new(client.clone(), election_config)?;
        let leadership = tokio::select! {
            acquired = election.acquire() => acquired?,
            result = &mut controller => return result,
            served = &mut http => return Err(served_error(served)),
        };
        tracing::info!(identity = %args.identity, lease = %leadership.lease(), "became the leader");
        leading_tx.send_replace(true);
        let outcome = tokio::select! {
            result = &mut controller => result,
            lost = leadership.lost() => Err(Error::LostLeadership(lost.to_string())),
            served = &mut http => Err(served_error(served)),
        };
        if leadership.is_leader()
            && let Err(err) = leadership.release().await
        {
            tracing::warn!(error = %err, "releasing the leader Lease failed; a successor waits for it to expire");
        }
        outcome
    } else {
        tokio::select! {
            result = &mut controller => result,
            served = &mut http => Err(served_error(served)),
        }
    }
}

fn served_error(served: Result<Result<(), std::io::Error>, tokio::task::JoinError>) -> Error {
    match served {
        Ok(Err(err)) => Error::Http(err),
        Ok(Ok(())) => Error::Http(std::io::Error::other("the HTTP server stopped")),
        Err(join) => Error::Http(std::io::Error::other(join.to_string())),
    }
}
