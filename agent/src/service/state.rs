//! Strategy StateApi on this node: reading an application's state into
//! the store (a checkpoint), and writing a stored state into a replacement
//! pod (a restore).

use super::*;
use crate::state_api::{self, Endpoint};
use k8s_openapi::api::core::v1::Pod;

impl AgentService {
    fn state_client(&self) -> Result<&reqwest::Client, Status> {
        self.inner
            .state_client
            .get_or_init(|| state_api::client().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Status::internal(format!("HTTP client for state endpoints: {e}")))
    }

    /// Where the application's state is: the pod's IP from the API server,
    /// or, on agents without one, the request's address.
    fn endpoint(source: &pb::StateApi, pod: Option<&Pod>) -> Result<Endpoint, Status> {
        let address = match pod {
            Some(pod) => crate::scope::pod_ip(pod).ok_or_else(|| {
                Status::failed_precondition("the pod has no IP yet: its state cannot be read")
            })?,
            None => source.address.clone(),
        };
        Endpoint::from_proto(source, &address).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    #[allow(clippy::too_many_arguments)] // the parts of one Checkpoint request
    pub(super) async fn take_state(
        &self,
        policy: &str,
        container: pb::ContainerRef,
        source: &pb::StateApi,
        pod: Option<&Pod>,
        retention: Option<&pb::Retention>,
        peers: Vec<PeerTarget>,
        hash: ContentHash,
        started: Instant,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let endpoint = Self::endpoint(source, pod)?;
        let (state, call) = match state_api::read(self.state_client()?, &endpoint).await {
            Ok(read) => read,
            Err(err) => {
                self.count_checkpoint("state_api");
                tracing::warn!(namespace = %container.namespace, pod = %container.pod,
                    container = %container.container, error = %err, "reading the application's state failed");
                return Err(Status::failed_precondition(err.to_string()));
            }
        };
        let meta = self.new_archive(policy, &container, retention, true);
        let archive = match self
            .blocking(move |store| store.import_bytes(&state, meta, hash))
            .await
        {
            Ok(archive) => archive,
            Err(status) => {
                self.count_checkpoint("store");
                return Err(status);
            }
        };
        // Fencing stops the application when this node is cut off, as for
        // a CRIU checkpoint; its id comes from the pod's status.
        if let Some(pod) = pod {
            checkpoint::record_protected(
                &self.inner.protected,
                &archive,
                crate::scope::container_id(pod, &container.container),
            );
        }
        let checkpoint_millis = self.count_stored(&archive, started.elapsed());
        tracing::info!(
            archive = %archive.id, policy = %archive.policy, namespace = %archive.namespace, pod = %archive.pod,
            container = %archive.container, bytes = archive.size_bytes, url = %endpoint,
            get_ms = call.elapsed.as_millis() as u64, checkpoint_ms = checkpoint_millis, "state read and stored"
        );
        let replicas =
            convert::outcomes_to_proto(self.keep_and_replicate(&archive, &peers, None).await);
        Ok(Response::new(pb::CheckpointResponse {
            archive: Some(convert::archive_to_proto(&archive)),
            checkpoint_millis,
            replicas,
            criu_stats: None,
            state_api_call: Some(call.to_proto()),
        }))
    }

    pub(super) async fn write_state(
        &self,
        request: Request<pb::RestoreStateRequest>,
    ) -> Result<Response<pb::RestoreStateResponse>, Status> {
        let identity = authz::caller(&request)?;
        let request = request.into_inner();
        names::archive_id("archive_id", &request.archive_id)?;
        let container = pod_container_ref(request.container)?;
        let source = request
            .state_api
            .ok_or_else(|| Status::invalid_argument("state_api is required"))?;
        let refuse =
            |why: String| authz::refuse(&self.inner.metrics, "RestoreState", &identity, &why);
        let pod = match &self.inner.scope {
            Some(scope) => match scope.restore_target(&container).await {
                Ok(pod) => Some(pod),
                Err(Ok(reason)) => return Err(refuse(reason)),
                Err(Err(message)) => return Err(Status::unavailable(message)),
            },
            None => None,
        };
        let endpoint = Self::endpoint(&source, pod.as_ref())?;
        let id = request.archive_id.clone();
        let max = endpoint.max_bytes;
        let (meta, state) = self
            .blocking(move |store| store.read_small(&id, max))
            .await?;
        // A state goes back only into its own namespace.
        if meta.namespace != container.namespace {
            return Err(refuse(format!(
                "archive {} belongs to namespace {}, not {}: a state never crosses namespaces",
                meta.id, meta.namespace, container.namespace
            )));
        }
        let call = state_api::write(self.state_client()?, &endpoint, state)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        tracing::info!(archive = %meta.id, namespace = %container.namespace, pod = %container.pod,
            container = %container.container, url = %endpoint, bytes = call.bytes,
            put_ms = call.elapsed.as_millis() as u64, "state written into the replacement");
        Ok(Response::new(pb::RestoreStateResponse {
            call: Some(call.to_proto()),
        }))
    }
}
