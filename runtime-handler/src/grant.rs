//! Restore grants: what a node's agent prepared for one replacement
//! container, and who may use it.
//!
//! ```text
//! <grants>/<grant>/grant.json        who it is for (Grant)
//! <grants>/<grant>/checkpoint/       CRIU's images, descriptors.json included
//! <grants>/<grant>/rootfs-diff.tar   what the container had changed in its rootfs (optional)
//! ```
//!
//! The grant is a random 128-bit name, new for every prepared restore; the
//! replacement pod carries it in the annotation [`GRANT_ANNOTATION`]. A
//! grant is used once: it is claimed by renaming its directory, so a second
//! container naming it (a restart, a copy of the pod) finds nothing. It is
//! honoured only for a container of the namespace, container name and, once
//! the controller bound it, pod UID it was prepared for; the runtime
//! writes those into the container's OCI annotations itself, so a pod
//! cannot claim to be another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The pod annotation that names a grant (passed to the runtime through
/// the handler's `pod_annotations`).
pub const GRANT_ANNOTATION: &str = "ferry.dev/restore-grant";
/// Written by containerd's CRI plugin into every container's spec.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Written by CRI-O: the container type, and the kubelet's labels as JSON.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
/// The directory a claimed grant moves to, under the grants directory.
pub const CLAIMED: &str = "claimed";

/// Who a grant is for, as the agent wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub namespace: String,
    pub container: String,
    /// The archive it was prepared from (for the logs).
    pub archive: String,
    /// Set once the controller knows the replacement pod's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Who is asking, from the container's OCI annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
}

/// What to do with a `create`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start the container as runc would: a pod sandbox, or a container
    /// that names no grant.
    StartFresh,
    /// Restore it from this grant, if the grant is there and is its own.
    Restore { grant: String, identity: Identity },
}

/// Why a container is refused rather than started. A container that
/// names a grant never starts fresh: a replacement that cannot be restored
/// must fail visibly, not run without its state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("annotation {GRANT_ANNOTATION}={0:?} is not a grant (32 lowercase hex digits)")]
    Malformed(String),
    #[error("restore grant {0} is unknown or was used already")]
    Unknown(String),
    #[error("restore grant {grant} is for {expected}, not for {asked}")]
    NotYours {
        grant: String,
        expected: String,
        asked: String,
    },
    #[error("container {0} has a terminal (tty): ferry does not restore those")]
    Terminal(String),
    #[error(
        "the container names restore grant {0}, but its runtime wrote no container type \
         ({CONTAINER_TYPE} or {CRIO_CONTAINER_TYPE}): it cannot be told from a pod sandbox"
    )]
    UnknownRuntime(String),
}

/// Whether `value` has a grant's form: 32 lowercase hex digits.
pub fn is_grant(value: &str) -> bool {
    value.len() == 32
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Who the container is, as its runtime wrote it (containerd, or CRI-O's
/// copy of the kubelet's labels).
fn identity(annotations: &BTreeMap<String, String>) -> Identity {
    let field = |key: &str| annotations.get(key).cloned().unwrap_or_default();
    if annotations.contains_key(CONTAINER_TYPE) {
        return Identity {
            namespace: field(SANDBOX_NAMESPACE),
            pod: field(SANDBOX_NAME),
            pod_uid: field(SANDBOX_UID),
            container: field(CONTAINER_NAME),
        };
    }
    let labels: BTreeMap<String, String> = annotations
        .get(CRIO_LABELS)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    Identity {
        namespace: label("io.kubernetes.pod.namespace"),
        pod: label("io.kubernetes.pod.name"),
        pod_uid: label("io.kubernetes.pod.uid"),
        container: label("io.kubernetes.container.name"),
    }
}

/// Decides from a container's annotations alone.
pub fn decide(annotations: &BTreeMap<String, String>) -> Result<Decision, Refusal> {
    let Some(grant) = annotations.get(GRANT_ANNOTATION) else {
        return Ok(Decision::StartFresh);
    };
    // Pod sandboxes go through the same handler, with the pod's
    // annotations; only app containers restore.
    let kind = annotations
        .get(CONTAINER_TYPE)
        .or_else(|| annotations.get(CRIO_CONTAINER_TYPE));
    match kind.map(String::as_str) {
        Some("container") => {}
        Some(_) => return Ok(Decision::StartFresh),
        None => return Err(Refusal::UnknownRuntime(grant.clone())),
    }
    if !is_grant(grant) {
        return Err(Refusal::Malformed(grant.clone()));
    }
    Ok(Decision::Restore {
        grant: grant.clone(),
        identity: identity(annotations),
    })
}

/// Whether `grant` may be used by `who`.
pub fn check(name: &str, grant: &Grant, who: &Identity) -> Result<(), Refusal> {
    let uid_matches = grant
        .pod_uid
        .as_deref()
        .is_none_or(|uid| uid == who.pod_uid);
    if grant.namespace == who.namespace && grant.container == who.container && uid_matches {
        return Ok(());
    }
    let uid = |uid: Option<&str>| uid.map(|u| format!(" (pod UID {u})")).unwrap_or_default();
    Err(Refusal::NotYours {
        grant: name.to_owned(),
        expected: format!(
            "container {} in namespace {}{}",
            grant.container,
            grant.namespace,
            uid(grant.pod_uid.as_deref())
        ),
        asked: format!(
            "container {} of pod {}/{}{}",
            who.container,
            who.namespace,
            who.pod,
            uid(Some(&who.pod_uid))
        ),
    })
}

/// A grant taken for one container: its directory moved out of reach of
/// anyone else.
#[derive(Debug)]
pub struct Claimed {
    pub name: String,
    pub dir: PathBuf,
    pub grant: Grant,
    origin: PathBuf,
}

impl Claimed {
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    pub fn rootfs_diff(&self) -> PathBuf {
        self.dir.join("rootfs-diff.tar")
    }

    /// Where CRIU writes its restore log.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Puts an unused grant back for its rightful container.
    pub fn give_back(self) -> Result<(), Error> {
        std::fs::rename(&self.dir, &self.origin).map_err(|source| Error::Io {
            what: format!("give back restore grant {}", self.name),
            source,
        })
    }

    /// Deletes a used grant: it holds a copy of a process's memory.
    pub fn remove(self) -> Result<(), Error> {
        std::fs::remove_dir_all(&self.dir).map_err(|source| Error::Io {
            what: format!("remove used restore grant {}", self.dir.display()),
            source,
        })
    }
}

/// Takes grant `name` for container `container_id`: a rename, so of two
/// containers naming the same grant only one gets it.
pub fn claim(grants: &Path, name: &str, container_id: &str) -> Result<Claimed, Error> {
    let origin = grants.join(name);
    let claimed = grants.join(CLAIMED);
    std::fs::create_dir_all(&claimed).map_err(|source| Error::Io {
        what: format!("create {}", claimed.display()),
        source,
    })?;
    let dir = claimed.join(format!("{name}.{container_id}"));
    match std::fs::rename(&origin, &dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Refused(Refusal::Unknown(name.to_owned())));
        }
        Err(source) => {
            return Err(Error::Io {
                what: format!("claim restore grant {}", origin.display()),
                source,
            });
        }
    }
    let record = dir.join("grant.json");
    let grant = std::fs::read(&record)
        .map_err(|source| Error::Io {
            what: format!("read {}", record.display()),
            source,
        })
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: record.display().to_string(),
                source,
            })
        });
    match grant {
        Ok(grant) => Ok(Claimed {
            name: name.to_owned(),
            dir,
            grant,
            origin,
        }),
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANT: &str = "0123456789abcdef0123456789abcdef";

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn app(grant: &str) -> BTreeMap<String, String> {
        annotations(&[
            (CONTAINER_TYPE, "container"),
            (SANDBOX_NAMESPACE, "shop"),
            (SANDBOX_NAME, "cart-7d9f"),
            (SANDBOX_UID, "uid-1"),
            (CONTAINER_NAME, "app"),
            (GRANT_ANNOTATION, grant),
        ])
    }

    fn grant(namespace: &str, pod_uid: Option<&str>) -> Grant {
        Grant {
            namespace: namespace.into(),
            container: "app".into(),
            archive: "a".repeat(64),
            pod_uid: pod_uid.map(str::to_owned),
        }
    }

    #[test]
    fn sandboxes_and_containers_without_a_grant_start_fresh() {
        let mut sandbox = app(GRANT);
        sandbox.insert(CONTAINER_TYPE.into(), "sandbox".into());
        assert_eq!(decide(&sandbox), Ok(Decision::StartFresh));
        let mut plain = app(GRANT);
        plain.remove(GRANT_ANNOTATION);
        assert_eq!(decide(&plain), Ok(Decision::StartFresh));
        assert_eq!(decide(&BTreeMap::new()), Ok(Decision::StartFresh));
    }

    #[test]
    fn a_grant_without_a_container_type_is_refused_not_started_fresh() {
        let mut unknown = app(GRANT);
        unknown.remove(CONTAINER_TYPE);
        assert_eq!(decide(&unknown), Err(Refusal::UnknownRuntime(GRANT.into())));
    }

    #[test]
    fn cri_o_identities_come_from_its_labels() {
        let crio = annotations(&[
            (CRIO_CONTAINER_TYPE, "container"),
            (
                CRIO_LABELS,
                r#"{"io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.name":"cart-7d9f","io.kubernetes.pod.uid":"uid-1","io.kubernetes.container.name":"app"}"#,
            ),
            (GRANT_ANNOTATION, GRANT),
        ]);
        let Ok(Decision::Restore { identity, .. }) = decide(&crio) else {
            panic!("a grant restores on CRI-O too");
        };
        assert_eq!(
            identity,
            Identity {
                namespace: "shop".into(),
                pod: "cart-7d9f".into(),
                pod_uid: "uid-1".into(),
                container: "app".into(),
            }
        );
        let mut sandbox = crio.clone();
        sandbox.insert(CRIO_CONTAINER_TYPE.into(), "sandbox".into());
        assert_eq!(decide(&sandbox), Ok(Decision::StartFresh));
    }

    #[test]
    fn a_malformed_grant_is_refused_not_ignored() {
        for bad in ["", "../../etc", "0123456789ABCDEF0123456789ABCDEF", "abc"] {
            assert_eq!(
                decide(&app(bad)),
                Err(Refusal::Malformed(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_grant_restores_only_its_own_container() {
        let Ok(Decision::Restore {
            grant: name,
            identity,
        }) = decide(&app(GRANT))
        else {
            panic!("a grant restores");
        };
        assert_eq!(name, GRANT);
        assert_eq!(identity.namespace, "shop");
        assert_eq!(check(GRANT, &grant("shop", None), &identity), Ok(()));
        assert_eq!(
            check(GRANT, &grant("shop", Some("uid-1")), &identity),
            Ok(())
        );
        let other_namespace = check(GRANT, &grant("bank", None), &identity).unwrap_err();
        assert_eq!(
            other_namespace.to_string(),
            format!(
                "restore grant {GRANT} is for container app in namespace bank, \
                 not for container app of pod shop/cart-7d9f (pod UID uid-1)"
            )
        );
        assert!(check(GRANT, &grant("shop", Some("uid-2")), &identity).is_err());
        let mut other_container = identity.clone();
        other_container.container = "sidecar".into();
        assert!(check(GRANT, &grant("shop", None), &other_container).is_err());
    }

    #[test]
    fn a_grant_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(GRANT).join("checkpoint")).unwrap();
        std::fs::write(
            dir.path().join(GRANT).join("grant.json"),
            serde_json::to_vec(&grant("shop", None)).unwrap(),
        )
        .unwrap();
        let claimed = claim(dir.path(), GRANT, "c1").unwrap();
        assert_eq!(claimed.grant, grant("shop", None));
        assert!(claimed.checkpoint().is_dir());
        let again = claim(dir.path(), GRANT, "c2").unwrap_err();
        assert_eq!(
            again.to_string(),
            format!("restore grant {GRANT} is unknown or was used already")
        );
        // Given back (it was not the claimer's), it can be claimed again.
        claimed.give_back().unwrap();
        let claimed = claim(dir.path(), GRANT, "c3").unwrap();
        claimed.remove().unwrap();
        assert!(claim(dir.path(), GRANT, "c4").is_err());
    }

    #[test]
    fn a_grant_without_a_record_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(GRANT)).unwrap();
        let err = claim(dir.path(), GRANT, "c1").unwrap_err();
        assert!(err.to_string().contains("grant.json"), "{err}");
        assert!(
            std::fs::read_dir(dir.path().join(CLAIMED))
                .unwrap()
                .next()
                .is_none()
        );
    }
}
