//! Who is on the other end of a connection, as its certificate says: the
//! controller, or the agent of one node. The identity is a URI SAN that only
//! ferry's signer writes (the controller's CA), never a name the caller
//! chose.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType, string::Ia5String,
};
use rustls::pki_types::CertificateDer;

use super::{AGENT_SERVER_NAME, CONTROLLER_SERVER_NAME, TlsError};

/// Prefix of every ferry identity URI.
const URI_PREFIX: &str = "spiffe://ferry.dev/";

/// A component's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    Controller,
    Agent { node: String },
}

impl Identity {
    pub fn agent(node: impl Into<String>) -> Self {
        Self::Agent { node: node.into() }
    }

    /// The URI SAN that carries it: `spiffe://ferry.dev/controller` or
    /// `spiffe://ferry.dev/agent/<node>`.
    pub fn uri(&self) -> String {
        match self {
            Self::Controller => format!("{URI_PREFIX}controller"),
            Self::Agent { node } => format!("{URI_PREFIX}agent/{node}"),
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        if rest == "controller" {
            return Some(Self::Controller);
        }
        let node = rest.strip_prefix("agent/")?;
        valid_node_name(node).then(|| Self::agent(node))
    }

    /// The node of an agent identity.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Agent { node } => Some(node),
            Self::Controller => None,
        }
    }

    /// Reads the identity of a certificate the CA already verified. A
    /// certificate must carry exactly one ferry identity.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self, TlsError> {
        Ok(CertificateFacts::read(cert)?.identity)
    }

    /// What the signer puts in a certificate for this identity (the caller
    /// adds the validity and signs it): the identity URI, the DNS name
    /// clients check, and both server and client use.
    pub fn certificate_params(&self, valid_for: Duration) -> Result<CertificateParams, TlsError> {
        let dns = match self {
            Self::Controller => CONTROLLER_SERVER_NAME,
            Self::Agent { .. } => AGENT_SERVER_NAME,
        };
        let invalid = |e: rcgen::Error| TlsError::Issue(format!("{self}: {e}"));
        let mut params = CertificateParams::new(vec![dns.to_owned()]).map_err(invalid)?;
        params.subject_alt_names.push(SanType::URI(
            Ia5String::try_from(self.uri()).map_err(invalid)?,
        ));
        params
            .distinguished_name
            .push(DnType::CommonName, self.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A minute of slack for clocks that run behind the signer's.
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + valid_for).into();
        Ok(params)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Controller => f.write_str("the controller"),
            Self::Agent { node } => write!(f, "the agent of node {node}"),
        }
    }
}

/// A Kubernetes node name: a DNS subdomain.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What ferry reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex serial number, to tell rotated certificates apart in logs.
    pub serial: String,
}

impl CertificateFacts {
    /// When the certificate should be replaced: once `renew_before` of its
    /// life is left (default a third of it).
    pub fn renewal_due(&self, renew_before: Option<Duration>) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - renew_before.unwrap_or(life / 3).min(life)
    }

    /// Expiry in seconds since the Unix epoch, for a gauge.
    pub fn expires_unix_seconds(&self) -> i64 {
        self.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    pub fn read(cert: &CertificateDer<'_>) -> Result<Self, TlsError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| TlsError::Identity(format!("unreadable certificate: {e}")))?;
        let subject = parsed.subject().to_string();
        let mut identities = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && uri.starts_with(URI_PREFIX)
                {
                    identities.push(Identity::from_uri(uri).ok_or_else(|| {
                        TlsError::Identity(format!(
                            "certificate {subject} names {uri:?}, which is no ferry identity"
                        ))
                    })?);
                }
            }
        }
        let identity = match identities.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(TlsError::Identity(format!(
                    "certificate {subject} carries no ferry identity ({URI_PREFIX}...)"
                )));
            }
            _ => {
                return Err(TlsError::Identity(format!(
                    "certificate {subject} carries {} ferry identities",
                    identities.len()
                )));
            }
        };
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Self {
            identity,
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            serial: parsed.raw_serial_as_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for identity in [
            Identity::Controller,
            Identity::agent("ferry-a"),
            Identity::agent("n1.example.com"),
        ] {
            assert_eq!(Identity::from_uri(&identity.uri()), Some(identity));
        }
    }

    #[test]
    fn uris_that_are_no_identity_are_refused() {
        for uri in [
            "spiffe://ferry.dev/agent/",
            "spiffe://ferry.dev/agent/a/b",
            "spiffe://ferry.dev/agent/UPPER",
            "spiffe://ferry.dev/agent/-a",
            "spiffe://ferry.dev/admin",
            "spiffe://other/controller",
        ] {
            assert_eq!(Identity::from_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn a_signed_certificate_names_its_identity_and_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = Identity::agent("ferry-b")
            .certificate_params(Duration::from_secs(3600))
            .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let facts = CertificateFacts::read(cert.der()).unwrap();
        assert_eq!(facts.identity, Identity::agent("ferry-b"));
        let lifetime = facts.not_after.duration_since(facts.not_before).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3660));
    }

    #[test]
    fn renewal_comes_when_a_third_of_the_life_is_left() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let facts = CertificateFacts {
            identity: Identity::agent("a"),
            not_before: start,
            not_after: start + Duration::from_secs(3 * 3600),
            serial: "01".into(),
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(facts.renewal_due(None), facts.not_after - hour);
        let minute = Duration::from_secs(60);
        assert_eq!(facts.renewal_due(Some(minute)), facts.not_after - minute);
        // Asking to renew earlier than the life allows renews at once.
        assert_eq!(facts.renewal_due(Some(10 * hour)), facts.not_before);
    }

    #[test]
    fn a_certificate_without_identity_is_refused_by_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["ferry-agent".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = Identity::of_certificate(cert.der())
            .unwrap_err()
            .to_string();
        assert!(err.contains("carries no ferry identity"), "{err}");
    }
}
