//! Validation of every name and id that arrives in a request.
//!
//! Names end up in file paths, URLs and image references, so each one is
//! checked against the Kubernetes syntax it claims to follow before use: no
//! path separators, no `..`, no NUL, bounded length.

use crate::Error;
use crate::content_hash::ContentHash;

/// Longest name accepted anywhere (DNS-1123 subdomain limit).
pub const MAX_NAME_LEN: usize = 253;

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidName {
        field,
        reason: reason.into(),
    }
}

/// Shortened, printable form of hostile input for error messages.
fn shown(value: &str) -> String {
    let mut shown: String = value.chars().take(40).collect();
    if value.chars().count() > 40 {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// A restore grant: 32 lowercase hex digits ([`random_grant`]).
pub fn grant(field: &'static str, value: &str) -> Result<(), Error> {
    if !ferry_runc::grant::is_grant(value) {
        return Err(invalid(
            field,
            format!(
                "{} is not a restore grant (32 lowercase hex digits)",
                shown(value)
            ),
        ));
    }
    Ok(())
}

pub fn archive_id(field: &'static str, value: &str) -> Result<(), Error> {
    if ContentHash::of_id(value).is_none() {
        return Err(invalid(
            field,
            format!(
                "{} is not an archive id (`blake3-` and 64 lowercase hex digits, or 64 for a sha256)",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// A DNS-1123 label: namespaces and container names.
pub fn dns_label(field: &'static str, value: &str) -> Result<(), Error> {
    check_label(value, 63).map_err(|reason| invalid(field, format!("{} {reason}", shown(value))))
}

/// A DNS-1123 subdomain: pod and node names.
pub fn dns_subdomain(field: &'static str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!(
                "{} is {} bytes long; at most {MAX_NAME_LEN}",
                shown(value),
                value.len()
            ),
        ));
    }
    value
        .split('.')
        .try_for_each(|label| check_label(label, 63))
        .map_err(|reason| invalid(field, format!("{} {reason}", shown(value))))
}

/// `namespace/name` of a CheckpointPolicy.
pub fn policy_ref(field: &'static str, value: &str) -> Result<(), Error> {
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(invalid(
            field,
            format!("{} is not namespace/name", shown(value)),
        ));
    };
    dns_label(field, namespace)?;
    dns_subdomain(field, name)
}

/// A Kubernetes object UID (a UUID); empty is allowed where the UID is unknown.
pub fn uid(field: &'static str, value: &str) -> Result<(), Error> {
    if value.len() > 64 || !value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(invalid(field, format!("{} is not a UID", shown(value))));
    }
    Ok(())
}

/// A runtime's container id (CRI: 64 hex digits; the runc runtime:
/// `namespace.pod.container`): 5 to 128 of `[A-Za-z0-9._-]`, starting with a
/// letter or digit. Fencing matches it against cgroup path components, so it
/// must be neither short nor able to name a path.
pub fn container_id(field: &'static str, value: &str) -> Result<(), Error> {
    let valid = (5..=128).contains(&value.len())
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(invalid(
            field,
            format!("{} is not a container id", shown(value)),
        ));
    }
    Ok(())
}

/// `host:port` of a peer agent.
pub fn endpoint(field: &'static str, value: &str) -> Result<(), Error> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(invalid(field, format!("{} is not host:port", shown(value))));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid(
            field,
            format!("{} has no valid port", shown(value)),
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    dns_subdomain(field, host)
}

fn check_label(label: &str, max: usize) -> Result<(), String> {
    if label.is_empty() {
        return Err("has an empty name or label".into());
    }
    if label.len() > max {
        return Err(format!(
            "has a label of {} bytes; at most {max}",
            label.len()
        ));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(
            "may only contain lowercase letters, digits and '-' (and '.' between labels)".into(),
        );
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// The reference of the checkpoint image prepared to restore `container`
/// of a pod in `namespace` protected by `policy` (`namespace/name`), with a
/// fresh random `grant` of 32 hex digits as its tag.
pub fn checkpoint_image(namespace: &str, policy: &str, container: &str, grant: &str) -> String {
    let policy_name = policy.rsplit('/').next().unwrap_or(policy);
    format!(
        "{}/{namespace}/{policy_name}/{container}:{grant}",
        ferry_api::names::CHECKPOINT_IMAGE_REPOSITORY
    )
}

/// 16 random bytes from the OS, as 32 hex digits.
pub fn random_grant() -> Result<String, Error> {
    random_hex::<16>("drawing a restore grant from")
}

/// 32 random bytes from the OS in the form of an archive id named by
/// `hash`: the transfer id an archive streams under before its hash is
/// known (the receiver's partial files and resume work as for any other
/// id, and the form tells it which hash to compute).
pub fn random_transfer_id(hash: ContentHash) -> Result<String, Error> {
    Ok(hash.id_of_hex(&random_hex::<32>("drawing a transfer id from")?))
}

fn random_hex<const N: usize>(what: &'static str) -> Result<String, Error> {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::io(what, "the OS RNG", std::io::Error::other(e.to_string())))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &[&str] = &[
        "",
        "../x",
        "..",
        "/etc/passwd",
        "a/b",
        "a\0b",
        "A",
        "-a",
        "a-",
        "a b",
        "a..b",
    ];

    #[test]
    fn hostile_names_are_rejected_everywhere() {
        let long = "a".repeat(10_000);
        for value in HOSTILE.iter().copied().chain([long.as_str()]) {
            assert!(dns_label("f", value).is_err(), "label {value:?}");
            assert!(dns_subdomain("f", value).is_err(), "subdomain {value:?}");
            assert!(archive_id("f", value).is_err(), "id {value:?}");
            if value != "a/b" {
                assert!(policy_ref("f", value).is_err(), "policy {value:?}");
            }
        }
        assert!(policy_ref("f", "a/b/c").is_err());
        assert!(policy_ref("f", "../etc").is_err());
        assert!(uid("f", "../x").is_err());
        assert!(uid("f", &long).is_err());
        assert!(endpoint("f", "../x:1").is_err());
        assert!(endpoint("f", "host").is_err());
        assert!(endpoint("f", "host:0").is_err());
    }

    #[test]
    fn valid_names_pass() {
        dns_label("f", "default").unwrap();
        dns_subdomain("f", "counter-7d9c.x2k1").unwrap();
        archive_id("f", &"ab".repeat(32)).unwrap();
        archive_id("f", &format!("blake3-{}", "ab".repeat(32))).unwrap();
        policy_ref("f", "default/counter").unwrap();
        uid("f", "3f2a1b4c-0000-4000-8000-000000000001").unwrap();
        endpoint("f", "10.0.0.1:50051").unwrap();
        endpoint("f", "[::1]:50051").unwrap();
        endpoint("f", "node-b.example:50051").unwrap();
    }

    #[test]
    fn errors_name_the_field_and_shorten_the_value() {
        let message = dns_label("container", &"x".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("invalid container:"), "{message}");
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn checkpoint_images_name_their_namespace_and_policy_and_a_random_grant() {
        let grant = random_grant().unwrap();
        assert_eq!(grant.len(), 32);
        assert_ne!(grant, random_grant().unwrap(), "a fresh grant each time");
        assert_eq!(
            checkpoint_image("demo", "demo/counter", "app", &grant),
            format!("localhost/ferry/checkpoint/demo/counter/app:{grant}")
        );
    }
}
