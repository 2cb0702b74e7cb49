//! The kubelet runtime: checkpoints through the kubelet's checkpoint API.
//!
//! `POST https://<node>:10250/checkpoint/{namespace}/{pod}/{container}?timeout=N`
//! asks the kubelet to have the container runtime (CRIU underneath) write a
//! checkpoint archive into its checkpoint directory (`<root-dir>/checkpoints`,
//! by default `/var/lib/kubelet/checkpoints`); the answer names the file:
//! `{"items":["/var/lib/kubelet/checkpoints/checkpoint-<pod>_<namespace>-<container>-<timestamp>.tar"]}`.
//!
//! The agent authenticates with its own ServiceAccount token (re-read on
//! every call: projected tokens rotate) and needs RBAC `create` on
//! `nodes/checkpoint` (the kubelet authorizes through a SubjectAccessReview on
//! subresource `checkpoint` of `nodes`). TLS is always verified against a CA
//! file; the expected certificate name can differ from the dialled address.
//!
//! The path the kubelet answers with is checked before anyone opens it: a
//! regular file directly inside the configured checkpoint directory, also
//! after resolving symbolic links. The agent must mount the kubelet's
//! checkpoint directory at the same path the kubelet uses.

use std::{
    fmt, io,
    net::IpAddr,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{StatusCode, Url};
use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::ring,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use serde::Deserialize;
use tracing::Instrument;

use crate::{Error, names};
use ferry_telemetry::error_chain;

/// The kubelet's authenticated HTTPS port.
pub const DEFAULT_PORT: u16 = 10250;
/// Where the ServiceAccount token is mounted in every pod.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA of the ServiceAccount mount.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// `<kubelet --root-dir>/checkpoints` with the default root dir.
pub const DEFAULT_CHECKPOINT_DIR: &str = "/var/lib/kubelet/checkpoints";

/// Most of a kubelet answer that is read; the rest is dropped.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most of a kubelet error text that goes into an error message.
const MAX_ERROR_TEXT: usize = 2048;
/// Longest checkpoint timeout passed on to the kubelet.
const MAX_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to the checkpoint timeout for the whole HTTP exchange: the kubelet
/// answers only after the runtime finished or gave up.
const RESPONSE_GRACE: Duration = Duration::from_secs(30);

/// How to reach the kubelet of this agent's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    /// The node's name, for messages and traces.
    pub node_name: String,
    /// Host name or IP address the kubelet listens on (IPv6 with or without brackets).
    pub address: String,
    /// Usually [`DEFAULT_PORT`].
    pub port: u16,
    /// ServiceAccount token file, read on every call.
    pub token_path: PathBuf,
    /// PEM file with the CA(s) that signed the kubelet's serving certificate.
    /// The ServiceAccount `ca.crt` fits when kubelets use `serverTLSBootstrap`
    /// (certificates signed by the cluster CA); a self-signed kubelet
    /// certificate needs its own CA file here.
    pub ca_path: PathBuf,
    /// Name the serving certificate must be valid for, when it differs from
    /// `address` (e.g. issued for the node name while dialling its IP).
    pub tls_server_name: Option<String>,
    /// The kubelet's checkpoint directory, mounted into the agent at the same path.
    pub checkpoint_dir: PathBuf,
}

impl KubeletConfig {
    /// The defaults for a kubelet at `address` on node `node_name`.
    pub fn new(node_name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            address: address.into(),
            port: DEFAULT_PORT,
            token_path: DEFAULT_TOKEN_PATH.into(),
            ca_path: DEFAULT_CA_PATH.into(),
            tls_server_name: None,
            checkpoint_dir: DEFAULT_CHECKPOINT_DIR.into(),
        }
    }
}

/// An archive the kubelet wrote; validated, not yet imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletCheckpoint {
    /// Inside the checkpoint directory; a regular file, no symbolic link.
    pub path: PathBuf,
    pub size_bytes: u64,
    /// The kubelet call, from request to answer.
    pub elapsed: Duration,
}

/// Client of one kubelet's checkpoint API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KubeletClient {
    config: Arc<KubeletConfig>,
    http: reqwest::Client,
    base: Url,
    /// `https://address:port`, for messages.
    endpoint: String,
    /// The name the serving certificate is checked against, for messages.
    server_name: String,
}

impl KubeletClient {
    /// Checks the configuration and loads the CA file; no request is made.
    pub fn new(config: KubeletConfig) -> Result<Self, Error> {
        names::dns_subdomain("kubelet node name", &config.node_name)?;
        let host = parse_host(&config.address)?;
        if config.port == 0 {
            return Err(invalid("kubelet port", "0 is not a port".into()));
        }
        if !config.checkpoint_dir.is_absolute() {
            return Err(invalid(
                "kubelet checkpoint directory",
                format!(
                    "{} is not an absolute path",
                    config.checkpoint_dir.display()
                ),
            ));
        }
        let server_name_text = match &config.tls_server_name {
            Some(name) => name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            None => config
                .address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        };
        let server_name = ServerName::try_from(server_name_text.clone()).map_err(|e| {
            invalid(
                "kubelet TLS server name",
                format!("{}: {e}", shown(&server_name_text)),
            )
        })?;

        let endpoint = format!("https://{}:{}", host, config.port);
        let base = Url::parse(&format!("{endpoint}/")).map_err(|e| {
            invalid(
                "kubelet address",
                format!("{}: {e}", shown(&config.address)),
            )
        })?;

        let roots = load_roots(&config.ca_path)?;
        let provider = Arc::new(ring::default_provider());
        let build_error = |message: String| Error::Kubelet {
            container: "any container".into(),
            node: config.node_name.clone(),
            message,
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| {
                build_error(format!(
                    "cannot use the CA file {}: {e}",
                    config.ca_path.display()
                ))
            })?;
        let verifier = Arc::new(FixedNameVerifier {
            inner: webpki,
            name: server_name,
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| build_error(format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ferry-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                build_error(format!(
                    "cannot build the HTTPS client: {}",
                    error_chain(&e)
                ))
            })?;

        Ok(Self {
            config: Arc::new(config),
            http,
            base,
            endpoint,
            server_name: server_name_text,
        })
    }

    pub fn config(&self) -> &KubeletConfig {
        &self.config
    }

    /// Has the kubelet checkpoint `namespace/pod/container` and returns the
    /// validated archive it wrote. `timeout` goes to the kubelet as whole
    /// seconds (at least 1); the HTTP exchange may take 30 s longer.
    pub async fn checkpoint(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<KubeletCheckpoint, Error> {
        names::dns_label("namespace", namespace)?;
        names::dns_subdomain("pod", pod)?;
        names::dns_label("container", container)?;
        let target = Target {
            namespace,
            pod,
            container,
        };
        let span = tracing::info_span!(
            "kubelet_checkpoint",
            node = %self.config.node_name,
            namespace,
            pod,
            container,
            status = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        async {
            let result = self.checkpoint_traced(&target, timeout).await;
            match &result {
                Ok(checkpoint) => tracing::info!(
                    path = %checkpoint.path.display(),
                    size_bytes = checkpoint.size_bytes,
                    "kubelet wrote a checkpoint archive"
                ),
                Err(error) => tracing::warn!(%error, "kubelet checkpoint failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn checkpoint_traced(
        &self,
        target: &Target<'_>,
        timeout: Duration,
    ) -> Result<KubeletCheckpoint, Error> {
        let fail = |message: String| Error::Kubelet {
            container: target.to_string(),
            node: self.config.node_name.clone(),
            message,
        };
        let token = self.read_token().await.map_err(fail)?;
        let seconds = timeout
            .as_secs()
            .saturating_add(u64::from(timeout.subsec_nanos() > 0));
        let seconds = seconds.clamp(1, MAX_TIMEOUT_SECONDS);
        let url = self.url(target, seconds).map_err(fail)?;

        let started = Instant::now();
        let sent = self
            .http
            .post(url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(Duration::from_secs(seconds) + RESPONSE_GRACE)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                record_elapsed(started.elapsed());
                return Err(fail(self.transport_failure(&error, seconds)));
            }
        };
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        let body = read_limited(response).await;
        let elapsed = started.elapsed();
        record_elapsed(elapsed);
        let (body, truncated) = body.map_err(|error| {
            fail(format!(
                "reading the kubelet's answer (HTTP {status}) from {} failed: {}",
                self.endpoint,
                error_chain(&error)
            ))
        })?;

        if status != StatusCode::OK {
            return Err(fail(self.status_failure(status, &body, truncated)));
        }
        let item = parse_answer(&body, truncated).map_err(fail)?;
        let path = PathBuf::from(&item);
        let meta = checked_archive(&self.config.checkpoint_dir, &path, &item)
            .await
            .map_err(|error| {
                let mut message = format!(
                    "the kubelet returned archive path {}; refused: {error}",
                    shown(&item)
                );
                if error.kind() == io::ErrorKind::NotFound {
                    message.push_str(&format!(
                        " (is the kubelet's checkpoint directory mounted into the agent at {}?)",
                        self.config.checkpoint_dir.display()
                    ));
                }
                fail(message)
            })?;
        Ok(KubeletCheckpoint {
            path,
            size_bytes: meta.len(),
            elapsed,
        })
    }

    /// Opens an archive the kubelet wrote, after the same checks as
    /// [`KubeletClient::checkpoint`] and without following a symbolic link.
    pub async fn open_kubelet_copy(&self, path: &Path) -> Result<tokio::fs::File, Error> {
        const ACTION: &str = "open the kubelet's checkpoint archive";
        let text = path.to_string_lossy();
        checked_archive(&self.config.checkpoint_dir, path, &text)
            .await
            .map_err(|e| Error::io(ACTION, path, e))?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .await
            .map_err(|e| Error::io(ACTION, path, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| Error::io(ACTION, path, e))?;
        if !meta.is_file() {
            return Err(Error::io(
                ACTION,
                path,
                refused("is not a regular file".into()),
            ));
        }
        Ok(file)
    }

    /// Deletes the kubelet's archive once it was imported. Only a regular
    /// file directly inside the checkpoint directory is deleted; an archive
    /// that is already gone is not an error.
    pub async fn remove_kubelet_copy(&self, path: &Path) -> Result<(), Error> {
        const ACTION: &str = "remove the kubelet's checkpoint archive";
        let text = path.to_string_lossy();
        match checked_archive(&self.config.checkpoint_dir, path, &text).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), node = %self.config.node_name, "kubelet archive already gone");
                return Ok(());
            }
            Err(e) => return Err(Error::io(ACTION, path, e)),
        }
        match tokio::fs::remove_file(path).await {
            Ok(()) => {
                tracing::debug!(path = %path.display(), node = %self.config.node_name, "removed the kubelet's archive");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(ACTION, path, e)),
        }
    }

    async fn read_token(&self) -> Result<String, String> {
        let path = &self.config.token_path;
        let raw = tokio::fs::read(path).await.map_err(|e| {
            format!(
                "cannot read the ServiceAccount token {}: {e} (is the token volume mounted?)",
                path.display()
            )
        })?;
        std::str::from_utf8(&raw)
            .ok()
            .map(str::trim)
            .filter(|token| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "the ServiceAccount token file {} is empty or does not hold a bearer token",
                    path.display()
                )
            })
    }

    fn url(&self, target: &Target<'_>, timeout_seconds: u64) -> Result<Url, String> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| format!("cannot build a request URL from {}", self.endpoint))?
            .clear()
            .extend(["checkpoint", target.namespace, target.pod, target.container]);
        url.query_pairs_mut()
            .append_pair("timeout", &timeout_seconds.to_string());
        Ok(url)
    }

    fn transport_failure(&self, error: &reqwest::Error, timeout_seconds: u64) -> String {
        let chain = error_chain(error);
        if error.is_timeout() {
            return format!(
                "no answer from the kubelet at {} within {} s (checkpoint timeout {timeout_seconds} s): {chain}",
                self.endpoint,
                timeout_seconds + RESPONSE_GRACE.as_secs()
            );
        }
        let mut message = format!("kubelet unreachable at {}: {chain}", self.endpoint);
        if is_tls_error(error) {
            message.push_str(&format!(
                "; the kubelet's serving certificate failed TLS verification: check that {} holds the CA \
                 that signed it and that it is valid for {:?} (configure the TLS server name if it is \
                 issued for another name of the node)",
                self.config.ca_path.display(),
                self.server_name
            ));
        }
        message
    }

    fn status_failure(&self, status: StatusCode, body: &[u8], truncated: bool) -> String {
        let said = error_text(body, truncated);
        match status {
            StatusCode::UNAUTHORIZED => format!(
                "HTTP 401: the kubelet rejected the agent's ServiceAccount token from {} (expired or \
                 invalid token, or the kubelet does not accept bearer tokens: \
                 authentication.webhook.enabled); kubelet said: {said}",
                self.config.token_path.display()
            ),
            StatusCode::FORBIDDEN => format!(
                "HTTP 403: the agent's ServiceAccount lacks RBAC `create` on `nodes/checkpoint`; kubelet said: {said}"
            ),
            StatusCode::NOT_FOUND => format!(
                "HTTP 404: feature gate ContainerCheckpoint off or container not found; kubelet said: {said}"
            ),
            StatusCode::INTERNAL_SERVER_ERROR => {
                format!(
                    "HTTP 500: the container runtime (CRIU) failed to checkpoint; kubelet said: {said}"
                )
            }
            other => format!(
                "unexpected HTTP {other} from the kubelet at {}; kubelet said: {said}",
                self.endpoint
            ),
        }
    }
}

/// `namespace/pod/container` as messages show it.
struct Target<'a> {
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// Verifies the server certificate fully, but for a configured name rather
/// than the dialled address (what `ServerName` does in Go's `tls.Config`).
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The documented success body.
#[derive(Deserialize)]
struct CheckpointAnswer {
    items: Vec<String>,
}

fn parse_answer(body: &[u8], truncated: bool) -> Result<String, String> {
    const EXPECTED: &str = r#"the documented {"items":["<archive path>"]}"#;
    if truncated {
        return Err(format!(
            "the kubelet answered 200 with more than {MAX_BODY_BYTES} bytes, not {EXPECTED}"
        ));
    }
    let answer: CheckpointAnswer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the kubelet answered 200 with a malformed body, not {EXPECTED} ({e}); body: {}",
            error_text(body, false)
        )
    })?;
    let mut items = answer.items.into_iter();
    match (items.next(), items.next()) {
        (Some(item), None) => Ok(item),
        (None, _) => Err("the kubelet answered 200 but named no archive (empty `items`)".into()),
        (Some(_), Some(_)) => {
            Err("the kubelet answered 200 with several archive paths; expected exactly one".into())
        }
    }
}

/// Checks that `path` is a regular file directly inside `dir`, also after
/// resolving symbolic links. A missing file is reported as `NotFound`.
async fn checked_archive(dir: &Path, path: &Path, text: &str) -> io::Result<std::fs::Metadata> {
    if text.contains('\0') {
        return Err(refused("contains a NUL byte".into()));
    }
    if !path.is_absolute() {
        return Err(refused("is not an absolute path".into()));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refused("contains `..` or `.`".into()));
    }
    if path.parent() != Some(dir) || path.file_name().is_none() {
        return Err(refused(format!(
            "is not a file directly inside the kubelet checkpoint directory {}",
            dir.display()
        )));
    }
    let meta = tokio::fs::symlink_metadata(path).await?;
    if meta.file_type().is_symlink() {
        return Err(refused("is a symbolic link".into()));
    }
    if !meta.is_file() {
        return Err(refused("is not a regular file".into()));
    }
    let real_dir = tokio::fs::canonicalize(dir).await?;
    let real = tokio::fs::canonicalize(path).await?;
    if real.parent() != Some(real_dir.as_path()) {
        return Err(refused(format!(
            "resolves to {}, outside the kubelet checkpoint directory {}",
            real.display(),
            real_dir.display()
        )));
    }
    Ok(meta)
}

fn refused(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, reason)
}

fn invalid(field: &'static str, reason: String) -> Error {
    Error::InvalidName { field, reason }
}

/// An IP address or DNS name, formatted for a URL.
fn parse_host(address: &str) -> Result<String, Error> {
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip.to_string()),
        Ok(IpAddr::V6(ip)) => Ok(format!("[{ip}]")),
        Err(_) => {
            let valid =
                ServerName::try_from(bare).is_ok_and(|name| matches!(name, ServerName::DnsName(_)));
            if !valid || bare.len() > names::MAX_NAME_LEN {
                return Err(invalid(
                    "kubelet address",
                    format!(
                        "{} is neither an IP address nor a host name",
                        shown(address)
                    ),
                ));
            }
            Ok(bare.to_ascii_lowercase())
        }
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    const ACTION: &str = "load the kubelet CA file";
    let pem = std::fs::read(path).map_err(|e| Error::io(ACTION, path, e))?;
    let bad = |reason: String| {
        Error::io(
            ACTION,
            path,
            io::Error::new(io::ErrorKind::InvalidData, reason),
        )
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            bad(format!(
                "holds a certificate that cannot be a trust anchor: {e}"
            ))
        })?;
    }
    Ok(roots)
}

async fn read_limited(mut response: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The kubelet's text, printable and bounded.
fn error_text(body: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut shown: String = text.chars().take(MAX_ERROR_TEXT).collect();
    if truncated || shown.len() < text.len() {
        shown.push_str(" …(truncated)");
    }
    shown
}

/// Shortened, escaped form of untrusted text for messages.
fn shown(value: &str) -> String {
    let mut short: String = value.chars().take(200).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    format!("{short:?}")
}

fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        // io::Error hides a custom inner error from `source()`; connectors nest them.
        let mut inner = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref);
        while let Some(wrapped) = inner {
            if wrapped.is::<rustls::Error>() {
                return true;
            }
            inner = wrapped
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref);
        }
        current = e.source();
    }
    false
}

fn record_elapsed(elapsed: Duration) {
    let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    tracing::Span::current().record("elapsed_ms", millis);
}
