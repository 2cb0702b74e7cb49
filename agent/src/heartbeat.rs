//! The heartbeat: every interval the agent probes its peers, renews its
//! Lease with what it saw, and fences itself when it is cut off. This is the
//! I/O edge; the decisions are [`crate::peers::track`] and
//! [`crate::fencing::decide`].
//!
//! One heartbeat:
//! 1. every [`DISCOVER_EVERY`] heartbeats (and after a failed attempt) list
//!    the agent Leases: who the peers are, where their agents and kubelets
//!    listen, and whether their Leases are current. A periodic list rather
//!    than a watch: every peer renews every heartbeat, so a watch would
//!    deliver N events per heartbeat to each of N agents, while peers
//!    themselves come and go rarely;
//! 2. at the same time probe every peer: the agent's gRPC health service
//!    over a pooled mutual-TLS channel, and a TLS handshake with its kubelet,
//!    each within the probe deadline (half the interval);
//! 3. write the Lease with the new observations. Every heartbeat, so a flip
//!    (a peer that stops or starts answering) is published within the
//!    heartbeat that saw it, and a successful write is this agent's evidence
//!    of API contact at the same rate;
//! 4. tell the [`crate::watchdog`] the contact it had (also right after
//!    the probes); the watchdog fences when the timeout runs out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::agent::PeerObservations;
use ferry_api::names::AGENT_COMPONENT_LABEL;
use ferry_telemetry::error_chain;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::fencing::Contact;
use crate::lease::{FIELD_MANAGER, LeaseConfig, desired_lease, lease_name};
use crate::metrics::{Metrics, ProbeLabels, ResultLabels, TargetLabels};
use crate::peers::{self, Peer, PeersAnswered, ProbeResult, PublishedReach};
use crate::service::NodeFacts;
use crate::watchdog::{FenceInputs, Fencer, Watchdog};
use crate::{Error, lock};
use ferry_proto::tls::Credentials;
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_client::AgentClient;

/// Heartbeats between two lists of the agent Leases.
pub const DISCOVER_EVERY: u64 = 10;

/// Clock skew tolerated when judging whether a peer's Lease is current.
const SKEW: Duration = Duration::from_secs(2);

/// Settings of the heartbeat.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    pub interval: Duration,
    /// `None`: this agent never fences.
    pub fence_timeout: Option<Duration>,
}

impl HeartbeatConfig {
    /// Deadline of one probe, of a Lease list and of a Lease write: well
    /// under the interval, so a heartbeat fits in one.
    pub fn probe_timeout(&self) -> Duration {
        self.interval / 2
    }
}

/// Everything the heartbeat needs.
pub struct Heartbeat {
    pub client: Client,
    pub lease: LeaseConfig,
    pub facts: NodeFacts,
    pub tls: Credentials,
    pub config: HeartbeatConfig,
    pub metrics: Arc<Metrics>,
    /// Stops protected containers; the watchdog uses it.
    pub fencer: Arc<Fencer>,
    /// What peers are told this agent published of them.
    pub published: Arc<PublishedReach>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("lease", &self.lease)
            .field("node", &self.facts.node_name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a peer's agent answered to our heartbeat call.
#[derive(Clone, Copy, Debug, Default)]
struct PeerAnswer {
    /// When it last published that it reaches us.
    reach: Option<jiff::Timestamp>,
    /// When it last wrote its Lease.
    lease_write: Option<jiff::Timestamp>,
}

/// Probes peers: pooled gRPC channels to their agents, and a TLS client
/// for their kubelets.
struct Prober {
    /// This agent's node, which peers are asked about.
    node: String,
    tls: Credentials,
    timeout: Duration,
    /// One HTTP/2 connection per peer endpoint, reused by every probe;
    /// dropped after a failed probe so the next one connects afresh (a
    /// connection to a peer that vanished from the network may never fail
    /// by itself).
    channels: Mutex<HashMap<String, Channel>>,
    kubelet_tls: tokio_rustls::TlsConnector,
}

impl Prober {
    async fn probe(&self, peer: &Peer, metrics: &Metrics) -> ProbeResult {
        let agent = async {
            let started = Instant::now();
            let result = self.check_agent(&peer.node, &peer.endpoint).await;
            let answered = result.as_ref().map(|_| ()).map_err(Clone::clone);
            observe(metrics, peer, "agent", &answered, started);
            result
        };
        let kubelet = async {
            let endpoint = peer.kubelet_endpoint.as_deref()?;
            let started = Instant::now();
            let result = self.check_kubelet(endpoint).await;
            observe(metrics, peer, "kubelet", &result, started);
            Some(result)
        };
        let (agent, kubelet) = tokio::join!(agent, kubelet);
        let answer = agent.as_ref().ok().copied().unwrap_or_default();
        ProbeResult {
            node: peer.node.clone(),
            agent: agent.map(|_| ()),
            published_reach: answer.reach,
            last_lease_write: answer.lease_write,
            kubelet,
        }
    }

    /// The peer agent's `Heartbeat`: whether it answers, and when it last
    /// published that it reaches this agent. An agent from before that RPC
    /// answers UNIMPLEMENTED: reachable, but no contact the controller sees.
    async fn check_agent(&self, node: &str, endpoint: &str) -> Result<PeerAnswer, String> {
        let result = tokio::time::timeout(self.timeout, async {
            let cached = lock(&self.channels).get(endpoint).cloned();
            let channel = match cached {
                Some(channel) => channel,
                None => {
                    // Each probe has its own deadline; the keepalive only
                    // closes a connection that sat idle with a dead peer.
                    let channel = crate::replication::connect_channel(
                        &self.tls,
                        node,
                        endpoint,
                        self.timeout,
                        crate::replication::DEFAULT_STALL_TIMEOUT,
                    )
                    .await?;
                    lock(&self.channels).insert(endpoint.to_owned(), channel.clone());
                    channel
                }
            };
            let answer = AgentClient::new(channel)
                .heartbeat(pb::HeartbeatRequest {
                    node: self.node.clone(),
                })
                .await;
            let time = |micros: i64| {
                (micros > 0)
                    .then(|| jiff::Timestamp::from_microsecond(micros).ok())
                    .flatten()
            };
            match answer {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    Ok(PeerAnswer {
                        reach: time(answer.published_reach_unix_micros),
                        lease_write: time(answer.last_lease_write_unix_micros),
                    })
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    Ok(PeerAnswer::default())
                }
                Err(status) => Err(format!("{:?}: {}", status.code(), error_chain(&status))),
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        if result.is_err() {
            lock(&self.channels).remove(endpoint);
        }
        result
    }

    /// A TLS handshake with the peer's kubelet: no request, no credentials.
    /// A killed kubelet refuses the connection, a stopped or cut-off one
    /// lets it time out.
    async fn check_kubelet(&self, endpoint: &str) -> Result<(), String> {
        tokio::time::timeout(self.timeout, async {
            let host = endpoint
                .rsplit_once(':')
                .map_or(endpoint, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host}: {e}"))?;
            let tcp = tokio::net::TcpStream::connect(endpoint)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            self.kubelet_tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    /// Forgets channels of endpoints no peer advertises any more.
    fn retain(&self, peers: &BTreeMap<String, Peer>) {
        lock(&self.channels).retain(|endpoint, _| peers.values().any(|p| &p.endpoint == endpoint));
    }
}

fn observe(
    metrics: &Metrics,
    peer: &Peer,
    target: &'static str,
    result: &Result<(), String>,
    started: Instant,
) {
    match result {
        Ok(()) => metrics
            .peer_probe_duration
            .get_or_create(&TargetLabels { target })
            .observe(started.elapsed().as_secs_f64()),
        Err(_) => {
            metrics
                .peer_probe_failures
                .get_or_create(&ProbeLabels {
                    peer: peer.node.clone(),
                    target,
                })
                .inc();
        }
    }
}

/// The kubelet liveness probe does not verify the kubelet's certificate:
/// it proves only that something completes a TLS handshake on the kubelet's
/// port, and sends nothing over the connection, so there is nothing an
/// impostor could learn or change. Verifying would need every node's
/// kubelet CA, which peers do not have.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client of the kubelet liveness probe (see [`AnyServerCertificate`]).
fn kubelet_probe_tls() -> Result<tokio_rustls::TlsConnector, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            what: "kubelet probe configuration".into(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Result of one attempt at the API server within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Tells the watchdog about new contact; a change only, so a cut-off agent
/// does not wake it every heartbeat.
fn report(
    inputs: &watch::Sender<FenceInputs>,
    contact: Contact,
    live_peers: usize,
    answered: Option<PeersAnswered>,
) {
    inputs.send_if_modified(|current| {
        let next = FenceInputs {
            contact,
            live_peers,
            answered,
        };
        std::mem::replace(current, next) != next
    });
}

impl Heartbeat {
    /// Runs until the process ends.
    pub async fn run(self) -> Result<(), Error> {
        let timeout = self.config.probe_timeout();
        let prober = Prober {
            node: self.facts.node_name.clone(),
            tls: self.tls.clone(),
            timeout,
            channels: Mutex::default(),
            kubelet_tls: kubelet_probe_tls()?,
        };
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.lease.namespace);
        let name = lease_name(&self.facts.node_name);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let selector = format!("{}={}", AGENT_COMPONENT_LABEL.0, AGENT_COMPONENT_LABEL.1);
        // Served from the API server's watch cache: no etcd read.
        let list_params = ListParams::default().labels(&selector).match_any();
        let started = Instant::now();
        let mut contact = Contact {
            api: started,
            peer: started,
        };
        let mut peers = BTreeMap::<String, Peer>::new();
        let mut observations = PeerObservations::default();
        let mut list_due = true;
        let mut listed_once = false;
        let mut lease_ok = false;
        // Pods the watchdog fenced (UID → when), kept stopped and published
        // in the Lease, so the controller goes on with their failover when
        // the node is back and the kubelet cannot run them cold meanwhile.
        let fenced_pods = self.fencer.fenced.clone();
        let (fence_inputs, inputs) = watch::channel(FenceInputs {
            contact,
            // Peers not known yet count as one: a restarted agent must
            // still fence.
            live_peers: 1,
            answered: None,
        });
        tokio::spawn(
            Watchdog {
                fencer: self.fencer.clone(),
                interval: self.config.interval,
                timeout: self.config.fence_timeout,
            }
            .run(inputs),
        );
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for beat in 0u64.. {
            ticker.tick().await;
            let list = async {
                if list_due || beat % DISCOVER_EVERY == 0 {
                    Some(bounded(timeout, leases.list(&list_params)).await)
                } else {
                    None
                }
            };
            let probes = futures::future::join_all(
                peers.values().map(|peer| prober.probe(peer, &self.metrics)),
            );
            let (listed, results) = tokio::join!(list, probes);
            match listed {
                Some(Ok(list)) => {
                    // A read is no API contact: the controller sees only
                    // Lease writes (renewTime), and fencing must never come
                    // later than it expects.
                    list_due = false;
                    listed_once = true;
                    let found = peers::peers_from_leases(
                        &list.items,
                        &self.facts.node_name,
                        jiff::Timestamp::now(),
                        SKEW,
                    );
                    if found.keys().ne(peers.keys()) {
                        tracing::info!(peers = ?found.keys().collect::<Vec<_>>(), "peers changed");
                    }
                    peers = found;
                    prober.retain(&peers);
                }
                Some(Err(error)) => {
                    list_due = true;
                    tracing::debug!(%error, "listing the agent Leases failed");
                }
                None => {}
            }
            let live_results: Vec<ProbeResult> = results
                .iter()
                .filter(|r| peers.get(&r.node).is_some_and(|p| p.live))
                .cloned()
                .collect();
            let api_fresh = self
                .config
                .fence_timeout
                .unwrap_or(3 * self.config.interval);
            let (wall_now, mono_now) = (jiff::Timestamp::now(), Instant::now());
            if let Some(seen) = peers::peer_contact(&live_results, api_fresh, wall_now, mono_now) {
                contact.peer = contact.peer.max(seen);
            }
            let answered = peers::peers_answered(&live_results, wall_now, mono_now);
            // Peers not known yet (started while cut off from the API
            // server) count as one: a restarted agent must still fence.
            let live = peers
                .values()
                .filter(|p| p.live)
                .count()
                .max(usize::from(!listed_once));
            // At once, not after the Lease write: a probe that answered
            // just before the deadline must hold the watchdog back.
            report(&fence_inputs, contact, live, answered);
            let tracked = peers::track(&observations, &results, jiff::Timestamp::now());
            for flip in &tracked.flips {
                let error = tracked
                    .observations
                    .peers
                    .get(&flip.node)
                    .map(|p| match flip.target {
                        peers::Target::Agent => p.agent.error.as_str(),
                        peers::Target::Kubelet => p.kubelet.error.as_str(),
                    })
                    .unwrap_or_default();
                if flip.ok {
                    tracing::info!(peer = %flip.node, target = flip.target.as_str(), "peer answers again");
                } else {
                    tracing::warn!(peer = %flip.node, target = flip.target.as_str(), error, "peer stopped answering");
                }
            }
            observations = tracked.observations;
            self.metrics
                .peers_unreachable
                .set(i64::try_from(peers::unreachable_count(&observations)).unwrap_or(i64::MAX));

            let lease = desired_lease(
                &self.lease,
                &self.facts,
                &observations,
                &fenced_pods.held(),
                jiff::Timestamp::now(),
            );
            let write_sent = Instant::now();
            let write_sent_at = jiff::Timestamp::now();
            match bounded(timeout, leases.patch(&name, &params, &Patch::Apply(&lease))).await {
                Ok(_) => {
                    // The moment the renewTime was written, not the answer:
                    // the controller counts the fence timeout from there.
                    contact.api = write_sent;
                    self.published.published(&observations, write_sent_at);
                    self.count_write("ok");
                    if !lease_ok {
                        lease_ok = true;
                        tracing::info!(lease = %name, namespace = %self.lease.namespace, endpoint = %self.lease.endpoint, "lease renewed");
                    }
                }
                Err(error) => {
                    self.count_write("failed");
                    if lease_ok {
                        lease_ok = false;
                        tracing::warn!(lease = %name, namespace = %self.lease.namespace, %error, "renewing the lease failed");
                    }
                }
            }

            let now = Instant::now();
            self.metrics
                .api_silence
                .set(now.saturating_duration_since(contact.api).as_secs_f64());
            self.metrics
                .peer_silence
                .set(now.saturating_duration_since(contact.peer).as_secs_f64());
            report(&fence_inputs, contact, live, answered);
        }
        Ok(())
    }

    fn count_write(&self, result: &'static str) {
        self.metrics
            .lease_writes
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::tls::Identity;

    fn prober() -> Prober {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = Identity::agent("node-a")
            .certificate_params(Duration::from_secs(3600))
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = Credentials::new(
            cert.pem().as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        Prober {
            node: "node-a".into(),
            tls,
            timeout: Duration::from_millis(300),
            channels: Mutex::default(),
            kubelet_tls: kubelet_probe_tls().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_kubelet_that_refuses_or_stays_silent_fails_the_probe() {
        let prober = prober();
        // Nothing listens: refused at once.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = closed.local_addr().unwrap().to_string();
        drop(closed);
        let refused = prober.check_kubelet(&endpoint).await.unwrap_err();
        assert!(refused.starts_with("connecting"), "{refused}");
        // Accepts TCP but never answers the handshake (a stopped kubelet's
        // kernel still accepts): the deadline ends it.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = silent.local_addr().unwrap().to_string();
        let started = Instant::now();
        let timed_out = prober.check_kubelet(&endpoint).await.unwrap_err();
        assert!(timed_out.starts_with("no answer within"), "{timed_out}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The same for a silent agent, whose channel is then forgotten.
        let started = Instant::now();
        let failed = prober.check_agent("node-b", &endpoint).await.unwrap_err();
        // The connect deadline (TCP and TLS) or the probe's, whichever
        // fires first.
        assert!(
            failed.starts_with("no answer within") || failed.contains("deadline has elapsed"),
            "{failed}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(lock(&prober.channels).is_empty());
        drop(silent);
    }
}
