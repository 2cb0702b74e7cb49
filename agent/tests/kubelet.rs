//! The kubelet checkpoint client against [`FakeKubelet`], a local HTTPS
//! server that answers `POST /checkpoint/{namespace}/{pod}/{container}` the
//! way the kubelet documents and implements it: bearer token check (401),
//! authorization (403), feature gate / unknown pod / unknown container (404),
//! runtime failure (500), and on success a real archive file in the
//! checkpoint directory plus `{"items":["<path>"]}`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use ferry_agent::{
    Error,
    kubelet::{KubeletClient, KubeletConfig},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

const NAMESPACE: &str = "default";
const POD: &str = "counter-7d9c";
const CONTAINER: &str = "app";
const NODE: &str = "node-a";
const TIMEOUT: Duration = Duration::from_millis(6500);

/// How the fake kubelet answers the next checkpoint requests.
#[derive(Debug, Clone)]
enum Behaviour {
    /// Checkpoint: write an archive, answer with its path.
    Checkpoint,
    /// The caller's RBAC lacks `create` on `nodes/checkpoint`.
    Forbidden,
    /// Feature gate ContainerCheckpoint off: the handler is not installed.
    FeatureGateOff,
    /// The runtime (CRIU) fails; the kubelet passes its error text on.
    RuntimeFails(String),
    /// Any status with a plain-text body.
    Status(StatusCode, String),
    /// 200 with this exact body (used for hostile or malformed answers).
    Answer(String),
}

/// One request as the fake kubelet saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
}

#[derive(Debug)]
struct Shared {
    token: Mutex<String>,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
    /// `(namespace, pod, containers)` running on this node.
    pods: Vec<(String, String, Vec<String>)>,
    /// The checkpoint directory as the kubelet sees it.
    checkpoint_dir: PathBuf,
    archives: AtomicU64,
}

/// Test double: no kubelet runs in this tier. A local HTTPS server with a
/// serving certificate from its own CA that implements the kubelet's
/// checkpoint endpoint as documented (and as `pkg/kubelet/server` does).
#[derive(Debug)]
struct FakeKubelet {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKubelet {
    async fn start(pki: &Pki, token: &str, checkpoint_dir: &Path) -> Self {
        let shared = Arc::new(Shared {
            token: Mutex::new(token.to_owned()),
            behaviour: Mutex::new(Behaviour::Checkpoint),
            seen: Mutex::new(Vec::new()),
            pods: vec![(
                NAMESPACE.into(),
                POD.into(),
                vec![CONTAINER.into(), "sidecar".into()],
            )],
            checkpoint_dir: checkpoint_dir.to_owned(),
            archives: AtomicU64::new(0),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
        };
        let app = Router::new()
            .fallback(kubelet_api)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    fn behave(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    fn accept_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = token.to_owned();
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// The kubelet's HTTP handling of the checkpoint endpoint.
async fn kubelet_api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: authorization.clone(),
    });

    // Authentication filter: bearer token (TokenReview in a real kubelet).
    let expected = format!("Bearer {}", shared.token.lock().unwrap());
    if authorization.as_deref() != Some(expected.as_str()) {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let behaviour = shared.behaviour.lock().unwrap().clone();
    // Authorization filter: SubjectAccessReview for nodes/checkpoint.
    if let Behaviour::Forbidden = behaviour {
        return text(
            StatusCode::FORBIDDEN,
            "Forbidden (user=system:serviceaccount:ferry-system:ferry-agent, verb=create, resource=nodes, \
             subresource=checkpoint)",
        );
    }
    let segments: Vec<&str> = uri.path().split('/').collect();
    let routed = segments.len() == 5 && segments[1] == "checkpoint" && method == Method::POST;
    if !routed || matches!(behaviour, Behaviour::FeatureGateOff) {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    }
    let (namespace, pod, container) = (segments[2], segments[3], segments[4]);
    let Some((_, _, containers)) = shared
        .pods
        .iter()
        .find(|(ns, name, _)| ns == namespace && name == pod)
    else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    if !containers.iter().any(|c| c == container) {
        return text(
            StatusCode::NOT_FOUND,
            &format!("container {container} does not exist"),
        );
    }
    // The last `timeout` value wins; an unparsable one is a 404.
    let timeouts: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("timeout="))
        .collect();
    if let Some(last) = timeouts.last()
        && last.parse::<i64>().is_err()
    {
        return text(
            StatusCode::NOT_FOUND,
            "cannot parse value of timeout parameter",
        );
    }
    match behaviour {
        Behaviour::RuntimeFails(cause) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("checkpointing of {namespace}/{pod}/{container} failed ({cause})"),
        ),
        Behaviour::Status(status, body) => text(status, &body),
        Behaviour::Answer(body) => json(body),
        Behaviour::Checkpoint => {
            let n = shared.archives.fetch_add(1, Ordering::SeqCst);
            let path = shared.checkpoint_dir.join(format!(
                "checkpoint-{pod}_{namespace}-{container}-2025-01-01T00:00:{n:02}Z.tar"
            ));
            write_archive(&path, namespace, pod, container);
            // The kubelet formats this by hand, without JSON escaping.
            json(format!("{{\"items\":[\"{}\"]}}", path.display()))
        }
        Behaviour::Forbidden | Behaviour::FeatureGateOff => unreachable!(),
    }
}

/// A small but real tar archive, as a runtime would write it.
fn write_archive(path: &Path, namespace: &str, pod: &str, container: &str) {
    let file = std::fs::File::create(path).unwrap();
    let mut tar = tar::Builder::new(file);
    let content = format!(
        "{{\"namespace\":\"{namespace}\",\"pod\":\"{pod}\",\"container\":\"{container}\"}}"
    );
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, "config.dump", content.as_bytes())
        .unwrap();
    tar.into_inner().unwrap().sync_all().unwrap();
}

/// What Go's `http.Error` writes.
fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{body}\n"),
    )
        .into_response()
}

fn json(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// TLS in front of axum: completes each handshake before handing the
/// connection over; clients that reject the certificate are dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await;
            if let Ok(Ok(tls)) = handshake {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A CA and a serving certificate it signed.
struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

static CAS: AtomicU64 = AtomicU64::new(0);

fn pki(server_names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "fake kubelet serving CA {}",
            CAS.fetch_add(1, Ordering::SeqCst)
        ),
    );
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = server_names.iter().map(|n| (*n).to_owned()).collect();
    let params = CertificateParams::new(names).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: cert.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Dials 127.0.0.1 and expects a certificate for the node name.
fn client_config(
    port: u16,
    token_path: &Path,
    ca_path: &Path,
    checkpoint_dir: &Path,
) -> KubeletConfig {
    KubeletConfig {
        port,
        token_path: token_path.to_owned(),
        ca_path: ca_path.to_owned(),
        tls_server_name: Some(NODE.into()),
        checkpoint_dir: checkpoint_dir.to_owned(),
        ..KubeletConfig::new(NODE, "127.0.0.1")
    }
}

/// A fake kubelet, the files an agent pod would have, and a client.
struct Setup {
    kubelet: FakeKubelet,
    root: tempfile::TempDir,
    checkpoint_dir: PathBuf,
    token_path: PathBuf,
    ca_path: PathBuf,
    client: KubeletClient,
}

impl Setup {
    async fn new() -> Self {
        Self::with_dir(|root| {
            let dir = root.join("checkpoints");
            std::fs::create_dir(&dir).unwrap();
            dir
        })
        .await
    }

    async fn with_dir(make_dir: impl FnOnce(&Path) -> PathBuf) -> Self {
        let root = tempfile::tempdir().unwrap();
        let checkpoint_dir = make_dir(root.path());
        let pki = pki(&[NODE, "localhost"]);
        let token_path = root.path().join("token");
        std::fs::write(&token_path, "token-1\n").unwrap();
        let ca_path = root.path().join("ca.crt");
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        std::fs::create_dir(root.path().join("outside")).unwrap();
        let kubelet = FakeKubelet::start(&pki, "token-1", &checkpoint_dir).await;
        let config = client_config(kubelet.addr.port(), &token_path, &ca_path, &checkpoint_dir);
        let client = KubeletClient::new(config).unwrap();
        Self {
            kubelet,
            root,
            checkpoint_dir,
            token_path,
            ca_path,
            client,
        }
    }

    fn config(&self) -> KubeletConfig {
        client_config(
            self.kubelet.addr.port(),
            &self.token_path,
            &self.ca_path,
            &self.checkpoint_dir,
        )
    }

    fn outside(&self) -> PathBuf {
        self.root.path().join("outside")
    }

    async fn checkpoint(&self) -> Result<ferry_agent::kubelet::KubeletCheckpoint, Error> {
        self.client
            .checkpoint(NAMESPACE, POD, CONTAINER, TIMEOUT)
            .await
    }

    async fn checkpoint_error(&self) -> String {
        let error = self
            .checkpoint()
            .await
            .expect_err("the checkpoint must fail");
        assert!(matches!(error, Error::Kubelet { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("default/counter-7d9c/app"),
            "names the container: {message}"
        );
        assert!(message.contains(NODE), "names the node: {message}");
        message
    }
}

#[tokio::test]
async fn checkpoint_returns_a_validated_readable_archive() {
    let setup = Setup::new().await;
    let checkpoint = setup.checkpoint().await.unwrap();

    assert_eq!(
        checkpoint.path.parent(),
        Some(setup.checkpoint_dir.as_path())
    );
    let name = checkpoint.path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("checkpoint-counter-7d9c_default-app-"),
        "{name}"
    );
    let bytes = std::fs::read(&checkpoint.path).unwrap();
    assert_eq!(checkpoint.size_bytes, bytes.len() as u64);
    let mut entries = tar::Archive::new(bytes.as_slice());
    let first = entries.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.path().unwrap().to_str(), Some("config.dump"));

    let mut opened = Vec::new();
    setup
        .client
        .open_kubelet_copy(&checkpoint.path)
        .await
        .unwrap()
        .read_to_end(&mut opened)
        .await
        .unwrap();
    assert_eq!(opened, bytes);

    let seen = setup.kubelet.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/checkpoint/default/counter-7d9c/app");
    assert_eq!(
        seen[0].query.as_deref(),
        Some("timeout=7"),
        "6.5 s rounds up to whole seconds"
    );
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer token-1"));
}

#[tokio::test]
async fn status_401_says_the_token_was_rejected() {
    let setup = Setup::new().await;
    setup.kubelet.accept_token("another-token");
    let message = setup.checkpoint_error().await;
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(
        message.contains("rejected the agent's ServiceAccount token"),
        "{message}"
    );
    assert!(message.contains("expired or invalid"), "{message}");
    assert!(
        message.contains(setup.token_path.to_str().unwrap()),
        "{message}"
    );
}

#[tokio::test]
async fn status_403_says_rbac_lacks_nodes_checkpoint() {
    let setup = Setup::new().await;
    setup.kubelet.behave(Behaviour::Forbidden);
    let message = setup.checkpoint_error().await;
    assert!(message.contains("HTTP 403"), "{message}");
    assert!(
        message.contains("ServiceAccount lacks RBAC `create` on `nodes/checkpoint`"),
        "{message}"
    );
    assert!(
        message.contains("subresource=checkpoint"),
        "kubelet text kept: {message}"
    );
}

#[tokio::test]
async fn status_404_says_feature_gate_off_or_container_not_found() {
    let setup = Setup::new().await;
    setup.kubelet.behave(Behaviour::FeatureGateOff);
    let message = setup.checkpoint_error().await;
    assert!(
        message.contains("feature gate ContainerCheckpoint off or container not found"),
        "{message}"
    );
    assert!(message.contains("404 page not found"), "{message}");

    setup.kubelet.behave(Behaviour::Checkpoint);
    let error = setup
        .client
        .checkpoint(NAMESPACE, POD, "nope", TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("feature gate ContainerCheckpoint off or container not found"),
        "{error}"
    );
    assert!(error.contains("container nope does not exist"), "{error}");
    assert!(error.contains("default/counter-7d9c/nope"), "{error}");

    let error = setup
        .client
        .checkpoint(NAMESPACE, "gone", CONTAINER, TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("pod does not exist"), "{error}");
}

#[tokio::test]
async fn status_500_carries_the_runtime_error_bounded() {
    let setup = Setup::new().await;
    let criu = "rpc error: code = Unknown desc = failed to checkpoint container 3f2a: running \
                \"/usr/bin/runc\" [\"checkpoint\" ...] failed: criu failed: type NOTIFY errno 0\nlog file: \
                /var/lib/containerd/3f2a/criu-dump.log: Error (criu/sk-inet.c:199): inet: Connected TCP \
                socket, consider using --tcp-established option";
    setup.kubelet.behave(Behaviour::RuntimeFails(criu.into()));
    let message = setup.checkpoint_error().await;
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(message.contains("CRIU"), "{message}");
    assert!(
        message.contains("consider using --tcp-established option"),
        "{message}"
    );
    assert!(
        message.contains("checkpointing of default/counter-7d9c/app failed"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");

    setup.kubelet.behave(Behaviour::RuntimeFails(format!(
        "criu: {}",
        "x".repeat(200_000)
    )));
    let message = setup.checkpoint_error().await;
    assert!(message.contains("truncated"), "{message}");
    assert!(message.len() < 4096, "bounded: {} bytes", message.len());
}

#[tokio::test]
async fn other_statuses_give_status_and_body() {
    let setup = Setup::new().await;
    setup.kubelet.behave(Behaviour::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        "kubelet is shutting down".into(),
    ));
    let message = setup.checkpoint_error().await;
    assert!(message.contains("unexpected HTTP 503"), "{message}");
    assert!(message.contains("kubelet is shutting down"), "{message}");
}

#[tokio::test]
async fn a_kubelet_certificate_from_another_ca_is_a_tls_error() {
    let setup = Setup::new().await;
    let other_ca = setup.root.path().join("other-ca.crt");
    std::fs::write(&other_ca, pki(&[NODE]).ca_pem).unwrap();
    let client = KubeletClient::new(KubeletConfig {
        ca_path: other_ca.clone(),
        ..setup.config()
    })
    .unwrap();
    let error = client
        .checkpoint(NAMESPACE, POD, CONTAINER, TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    let endpoint = format!(
        "kubelet unreachable at https://127.0.0.1:{}",
        setup.kubelet.addr.port()
    );
    assert!(error.contains(&endpoint), "{error}");
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "cause chain: {error}"
    );
    assert!(error.contains("failed TLS verification"), "{error}");
    assert!(error.contains(other_ca.to_str().unwrap()), "{error}");
    assert!(setup.kubelet.seen().is_empty(), "no request got through");
}

#[tokio::test]
async fn the_tls_server_name_can_differ_from_the_address() {
    let setup = Setup::new().await;
    // The certificate is for `node-a` and `localhost`, not for 127.0.0.1.
    let by_ip = KubeletClient::new(KubeletConfig {
        tls_server_name: None,
        ..setup.config()
    })
    .unwrap();
    let error = by_ip
        .checkpoint(NAMESPACE, POD, CONTAINER, TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("certificate not valid for name"), "{error}");
    assert!(
        error.contains("\"127.0.0.1\""),
        "names the expected name: {error}"
    );

    let by_name = KubeletClient::new(KubeletConfig {
        address: "localhost".into(),
        tls_server_name: None,
        ..setup.config()
    })
    .unwrap();
    by_name
        .checkpoint(NAMESPACE, POD, CONTAINER, TIMEOUT)
        .await
        .unwrap();

    // The default set-up: dial the IP, expect the node name.
    setup.checkpoint().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_kubelet_is_named_with_its_cause() {
    let setup = Setup::new().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = KubeletClient::new(KubeletConfig {
        port,
        ..setup.config()
    })
    .unwrap();
    let error = client
        .checkpoint(NAMESPACE, POD, CONTAINER, TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("kubelet unreachable at https://127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        error.to_lowercase().contains("connection refused"),
        "cause chain: {error}"
    );
}

#[tokio::test]
async fn archive_paths_outside_the_checkpoint_dir_are_refused() {
    let setup = Setup::new().await;
    let dir = setup.checkpoint_dir.clone();
    let secret = setup.outside().join("secret");
    std::fs::write(&secret, "not for the agent").unwrap();
    let link = dir.join("checkpoint-link.tar");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let sub = dir.join("subdir.tar");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inner.tar"), "x").unwrap();

    let traversal = format!("{}/../outside/secret", dir.display());
    let hostile: Vec<(String, &str)> = vec![
        ("/etc/passwd".into(), "not a file directly inside"),
        (traversal, "contains `..`"),
        (link.display().to_string(), "symbolic link"),
        ("checkpoint-x.tar".into(), "not an absolute path"),
        (sub.display().to_string(), "not a regular file"),
        (
            sub.join("inner.tar").display().to_string(),
            "not a file directly inside",
        ),
        (format!("{}/a\u{0}b.tar", dir.display()), "NUL"),
        (dir.display().to_string(), "not a file directly inside"),
        (
            dir.join("missing.tar").display().to_string(),
            "mounted into the agent",
        ),
    ];
    for (path, why) in hostile {
        let body = serde_json::json!({ "items": [path] }).to_string();
        setup.kubelet.behave(Behaviour::Answer(body));
        let message = setup.checkpoint_error().await;
        assert!(message.contains("refused"), "{path:?}: {message}");
        assert!(message.contains(why), "{path:?} ({why}): {message}");
        // Neither reading nor deleting is allowed either.
        assert!(
            setup
                .client
                .open_kubelet_copy(Path::new(&path))
                .await
                .is_err(),
            "{path:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "not for the agent"
    );
}

#[tokio::test]
async fn malformed_answers_are_refused() {
    let setup = Setup::new().await;
    let cases = [
        ("not json".to_owned(), "malformed body"),
        ("{}".to_owned(), "malformed body"),
        (r#"{"items":"x"}"#.to_owned(), "malformed body"),
        (r#"{"items":[]}"#.to_owned(), "named no archive"),
        (
            r#"{"items":["/a","/b"]}"#.to_owned(),
            "several archive paths",
        ),
        (
            format!(r#"{{"items":["{}"]}}"#, "a".repeat(100_000)),
            "more than",
        ),
    ];
    for (body, why) in cases {
        setup.kubelet.behave(Behaviour::Answer(body));
        let message = setup.checkpoint_error().await;
        assert!(message.contains(why), "{why}: {message}");
        assert!(message.len() < 4096, "bounded: {} bytes", message.len());
    }
}

#[tokio::test]
async fn hostile_names_are_refused_before_any_request() {
    let setup = Setup::new().await;
    let long = "a".repeat(300);
    let hostile = [
        "../x",
        "a/b",
        "",
        long.as_str(),
        "a\0b",
        "..",
        "A",
        "x?timeout=1",
        "%2e%2e",
        "a b",
    ];
    for name in hostile {
        for (namespace, pod, container) in [
            (name, POD, CONTAINER),
            (NAMESPACE, name, CONTAINER),
            (NAMESPACE, POD, name),
        ] {
            let error = setup
                .client
                .checkpoint(namespace, pod, container, TIMEOUT)
                .await
                .unwrap_err();
            assert!(
                matches!(error, Error::InvalidName { .. }),
                "{name:?}: {error:?}"
            );
        }
    }
    assert!(setup.kubelet.seen().is_empty(), "no request was made");
}

#[tokio::test]
async fn the_token_file_is_read_on_every_call() {
    let setup = Setup::new().await;
    setup.checkpoint().await.unwrap();

    // The kubelet now only accepts the rotated token; the file still has the old one.
    setup.kubelet.accept_token("token-2");
    let message = setup.checkpoint_error().await;
    assert!(message.contains("HTTP 401"), "{message}");

    std::fs::write(&setup.token_path, "token-2").unwrap();
    setup.checkpoint().await.unwrap();
    let seen = setup.kubelet.seen();
    let tokens: Vec<_> = seen
        .iter()
        .map(|s| s.authorization.clone().unwrap())
        .collect();
    assert_eq!(
        tokens,
        ["Bearer token-1", "Bearer token-1", "Bearer token-2"]
    );

    std::fs::write(&setup.token_path, "  \n").unwrap();
    let message = setup.checkpoint_error().await;
    assert!(
        message.contains("is empty or does not hold a bearer token"),
        "{message}"
    );
    std::fs::remove_file(&setup.token_path).unwrap();
    let message = setup.checkpoint_error().await;
    assert!(
        message.contains("cannot read the ServiceAccount token"),
        "{message}"
    );
    assert_eq!(setup.kubelet.seen().len(), 3, "no request without a token");
}

#[tokio::test]
async fn remove_kubelet_copy_deletes_only_inside_the_checkpoint_dir() {
    let setup = Setup::new().await;
    let checkpoint = setup.checkpoint().await.unwrap();
    setup
        .client
        .remove_kubelet_copy(&checkpoint.path)
        .await
        .unwrap();
    assert!(!checkpoint.path.exists());
    // Already gone: nothing to do.
    setup
        .client
        .remove_kubelet_copy(&checkpoint.path)
        .await
        .unwrap();

    let secret = setup.outside().join("secret");
    std::fs::write(&secret, "keep me").unwrap();
    let link = setup.checkpoint_dir.join("link.tar");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let sub = setup.checkpoint_dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let traversal = setup.checkpoint_dir.join("../outside/secret");
    for path in [
        secret.clone(),
        traversal,
        link.clone(),
        sub.clone(),
        PathBuf::from("relative.tar"),
    ] {
        let error = setup.client.remove_kubelet_copy(&path).await.unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{path:?}: {error:?}");
        assert!(
            error
                .to_string()
                .starts_with("remove the kubelet's checkpoint archive"),
            "{error}"
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me");
    assert!(link.symlink_metadata().is_ok() && sub.is_dir());
}

#[tokio::test]
async fn a_checkpoint_dir_behind_a_symlink_works() {
    // e.g. /var/lib/kubelet is a link to a data disk.
    let setup = Setup::with_dir(|root| {
        let real = root.join("data-disk");
        std::fs::create_dir(&real).unwrap();
        let link = root.join("kubelet-checkpoints");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        link
    })
    .await;
    let checkpoint = setup.checkpoint().await.unwrap();
    assert!(checkpoint.path.starts_with(&setup.checkpoint_dir));
    setup
        .client
        .remove_kubelet_copy(&checkpoint.path)
        .await
        .unwrap();
    assert!(!checkpoint.path.exists());
}

#[tokio::test]
async fn bad_configuration_is_refused_up_front() {
    let setup = Setup::new().await;
    let garbage = setup.root.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = setup.root.path().join("missing.crt");
    let cases = [
        KubeletConfig {
            ca_path: missing.clone(),
            ..setup.config()
        },
        KubeletConfig {
            ca_path: garbage,
            ..setup.config()
        },
        KubeletConfig {
            address: "node-a/../x".into(),
            ..setup.config()
        },
        KubeletConfig {
            address: "user@host".into(),
            ..setup.config()
        },
        KubeletConfig {
            port: 0,
            ..setup.config()
        },
        KubeletConfig {
            checkpoint_dir: "checkpoints".into(),
            ..setup.config()
        },
        KubeletConfig {
            node_name: "../x".into(),
            ..setup.config()
        },
        KubeletConfig {
            tls_server_name: Some("bad name!".into()),
            ..setup.config()
        },
    ];
    for config in cases {
        let shown = format!("{config:?}");
        let error = KubeletClient::new(config).unwrap_err();
        assert!(!error.to_string().is_empty(), "{shown}");
    }
    let error = KubeletClient::new(KubeletConfig {
        ca_path: missing.clone(),
        ..setup.config()
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains(missing.to_str().unwrap()), "{error}");

    // IPv6 literals, bracketed or not, are fine.
    KubeletClient::new(KubeletConfig {
        address: "::1".into(),
        ..setup.config()
    })
    .unwrap();
    KubeletClient::new(KubeletConfig {
        address: "[::1]".into(),
        ..setup.config()
    })
    .unwrap();
}
