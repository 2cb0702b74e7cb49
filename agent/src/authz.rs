//! Who may call what. Every connection carries the caller's identity from
//! its certificate ([`PeerInfo`]); a layer in front of the gRPC service
//! checks it against the method before the service sees the call, so a
//! method nobody listed is refused by default. Checks that depend on the
//! request's content (a heartbeat names its caller's node, a replica comes
//! from its announced source) live with the use case and use [`caller`].

use std::sync::Arc;
use std::task::{Context, Poll};

use ferry_proto::tls::{Identity, PeerInfo};
use tonic::Status;

use crate::metrics::{Metrics, RefusedLabels};

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callers {
    Controller,
    Agents,
    /// Any holder of a ferry certificate (health checks).
    Anyone,
}

const AGENT_SERVICE: &str = "/ferry.agent.v1.Agent/";
const HEALTH_SERVICE: &str = "/grpc.health.v1.Health/";

/// The callers of a gRPC path; `None` for paths ferry does not serve.
pub fn callers_of(path: &str) -> Option<Callers> {
    if path.starts_with(HEALTH_SERVICE) {
        return Some(Callers::Anyone);
    }
    match path.strip_prefix(AGENT_SERVICE)? {
        "Heartbeat" | "PushReplica" | "GetReplicaOffset" => Some(Callers::Agents),
        "Checkpoint" | "ExpectReplicas" | "DeleteArchives" | "PrepareRestore"
        | "ReleaseRestore" | "RunContainer" | "Restore" | "DeleteContainer" | "FencePod"
        | "RestoreState" => Some(Callers::Controller),
        _ => None,
    }
}

/// The short label of an identity in metrics and messages.
pub fn caller_label(identity: &Identity) -> String {
    match identity {
        Identity::Controller => "controller".to_owned(),
        Identity::Agent { node } => format!("agent/{node}"),
    }
}

/// Whether `identity` may call `path`; the error names both.
pub fn authorize(path: &str, identity: &Identity) -> Result<(), String> {
    let method = path.rsplit('/').next().unwrap_or(path);
    let allowed = match callers_of(path) {
        Some(Callers::Anyone) => true,
        Some(Callers::Controller) => *identity == Identity::Controller,
        Some(Callers::Agents) => matches!(identity, Identity::Agent { .. }),
        None => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("{identity} may not call {method}"))
    }
}

/// The caller of a request that came through [`Authorize`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|peer| peer.identity.clone())
        .ok_or_else(|| Status::unauthenticated("the connection carries no ferry identity"))
}

/// Refuses a call after the layer let it through, because of what it asks
/// for; counted like the layer's refusals.
pub fn refuse(metrics: &Metrics, method: &str, identity: &Identity, why: &str) -> Status {
    count(metrics, method, identity);
    tracing::warn!(caller = %caller_label(identity), method, reason = why, "refused a call");
    Status::permission_denied(format!("{identity} may not call {method}: {why}"))
}

fn count(metrics: &Metrics, method: &str, identity: &Identity) {
    metrics
        .rpc_refused
        .get_or_create(&RefusedLabels {
            method: method.to_owned(),
            caller: caller_label(identity),
        })
        .inc();
}

/// The tower layer that applies [`authorize`] to every call.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    metrics: Arc<Metrics>,
}

impl AuthorizeLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let verdict = match request.extensions().get::<PeerInfo>() {
            Some(peer) => authorize(&path, &peer.identity).map_err(|why| {
                count(&self.metrics, path.rsplit('/').next().unwrap_or(&path), &peer.identity);
                tracing::warn!(caller = %caller_label(&peer.identity), remote = %peer.remote, path, "refused a call");
                Status::permission_denied(why)
            }),
            None => Err(Status::unauthenticated(
                "the connection carries no ferry identity",
            )),
        };
        match verdict {
            Ok(()) => futures::future::Either::Left(self.inner.call(request)),
            Err(status) => {
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(method: &str) -> String {
        format!("{AGENT_SERVICE}{method}")
    }

    #[test]
    fn only_the_controller_may_ask_for_checkpoints_restores_and_deletions() {
        let stolen = Identity::agent("ferry-a");
        for method in [
            "Checkpoint",
            "ExpectReplicas",
            "DeleteArchives",
            "PrepareRestore",
            "ReleaseRestore",
            "RunContainer",
            "Restore",
            "DeleteContainer",
            "FencePod",
            "RestoreState",
        ] {
            assert_eq!(authorize(&path(method), &Identity::Controller), Ok(()));
            let refused = authorize(&path(method), &stolen).unwrap_err();
            assert_eq!(
                refused,
                format!("the agent of node ferry-a may not call {method}")
            );
        }
    }

    #[test]
    fn only_agents_push_replicas_and_heartbeats() {
        for method in ["Heartbeat", "PushReplica", "GetReplicaOffset"] {
            assert_eq!(authorize(&path(method), &Identity::agent("b")), Ok(()));
            assert!(authorize(&path(method), &Identity::Controller).is_err());
        }
    }

    #[test]
    fn unknown_and_removed_methods_are_refused_to_everyone() {
        for method in ["GetNodeInfo", "GetArchive", "ListArchives", "Replicate", ""] {
            assert!(
                authorize(&path(method), &Identity::Controller).is_err(),
                "{method}"
            );
            assert!(
                authorize(&path(method), &Identity::agent("a")).is_err(),
                "{method}"
            );
        }
        assert!(authorize("/other.Service/Checkpoint", &Identity::Controller).is_err());
        assert_eq!(
            authorize("/grpc.health.v1.Health/Check", &Identity::agent("a")),
            Ok(())
        );
    }
}
