//! The hash an archive is named by, and how its id says which one.
//!
//! - `blake3-` and 64 lowercase hex digits: BLAKE3, what archives are
//!   named by now. One core hashes about 5.8 GB/s here against sha256's
//!   1.6 GB/s (docs/bench-store.md), so the hash no longer limits a
//!   checkpoint or a replication.
//! - 64 lowercase hex digits: sha256, how every archive was named before.
//!   Such archives stay valid: they are read, verified, replicated and
//!   restored under their id, and an agent still names new ones this way
//!   when the controller asks (a standby runs an agent that knows only
//!   sha256, during a rolling upgrade).
//!
//! The form is in the id, so a receiver, a reader or a verifier never
//! needs to be told which hash to check.

use ferry_api::agent::{BLAKE3, BLAKE3_ID_PREFIX, SHA256, is_archive_id};
use sha2::Digest;

/// A content hash an archive id can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentHash {
    Sha256,
    Blake3,
}

impl ContentHash {
    /// Every hash this agent names, reads and verifies archives by; an
    /// agent advertises them on its Lease.
    pub const SUPPORTED: [ContentHash; 2] = [ContentHash::Sha256, ContentHash::Blake3];

    /// The hash an archive id names; `None` when `id` is no archive id.
    pub fn of_id(id: &str) -> Option<Self> {
        if !is_archive_id(id) {
            return None;
        }
        Some(if id.starts_with(BLAKE3_ID_PREFIX) {
            Self::Blake3
        } else {
            Self::Sha256
        })
    }

    /// The archive id of bytes with this `digest`.
    pub fn id(self, digest: [u8; 32]) -> String {
        self.id_of_hex(&hex::encode(digest))
    }

    /// An id of this form around 64 hex digits (a digest, or the random
    /// digits of a transfer id).
    pub fn id_of_hex(self, hex: &str) -> String {
        match self {
            Self::Sha256 => hex.to_owned(),
            Self::Blake3 => format!("{BLAKE3_ID_PREFIX}{hex}"),
        }
    }

    /// An archive id as an OCI-style digest: `blake3:<hex>`, `sha256:<hex>`.
    pub fn digest_of_id(id: &str) -> Option<String> {
        let hash = Self::of_id(id)?;
        let digits = id.strip_prefix(BLAKE3_ID_PREFIX).unwrap_or(id);
        Some(format!("{}:{digits}", hash.name()))
    }

    /// The archive id of `bytes`, all in memory.
    pub fn id_of_bytes(self, bytes: &[u8]) -> String {
        let mut hasher = self.hasher();
        hasher.update(bytes);
        hasher.finish_id()
    }

    /// Its name on a Lease and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => SHA256,
            Self::Blake3 => BLAKE3,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Self::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Self::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The hash a Checkpoint request asks for; unset (an older controller)
    /// is sha256, which every agent verifies.
    pub fn from_proto(value: i32) -> Self {
        match ferry_proto::v1::ContentHash::try_from(value) {
            Ok(ferry_proto::v1::ContentHash::Blake3) => Self::Blake3,
            _ => Self::Sha256,
        }
    }
}

/// A hash in progress, of either kind.
#[derive(Clone, Debug)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(hasher) => hasher.update(bytes),
            Self::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    pub fn kind(&self) -> ContentHash {
        match self {
            Self::Sha256(_) => ContentHash::Sha256,
            Self::Blake3(_) => ContentHash::Blake3,
        }
    }

    /// The archive id of every byte given.
    pub fn finish_id(self) -> String {
        let kind = self.kind();
        let digest: [u8; 32] = match self {
            Self::Sha256(hasher) => hasher.finalize().into(),
            Self::Blake3(hasher) => hasher.finalize().into(),
        };
        kind.id(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_hash() {
        let hex = "ab".repeat(32);
        assert_eq!(ContentHash::of_id(&hex), Some(ContentHash::Sha256));
        assert_eq!(
            ContentHash::of_id(&format!("blake3-{hex}")),
            Some(ContentHash::Blake3)
        );
        assert_eq!(
            ContentHash::digest_of_id(&format!("blake3-{hex}")),
            Some(format!("blake3:{hex}"))
        );
        assert_eq!(
            ContentHash::digest_of_id(&hex),
            Some(format!("sha256:{hex}"))
        );
        for bad in [
            String::new(),
            "blake3-".into(),
            format!("blake3-{}", &hex[1..]),
            format!("sha256-{hex}"),
            format!("BLAKE3-{hex}"),
            hex.to_uppercase(),
            format!("{hex}0"),
            format!("blake3-blake3-{hex}"),
            format!("../{}", &hex[3..]),
        ] {
            assert_eq!(ContentHash::of_id(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_the_known_digests() {
        // The published test vectors of both hashes, for "abc".
        let mut sha = ContentHash::Sha256.hasher();
        sha.update(b"abc");
        assert_eq!(
            sha.finish_id(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut b3 = ContentHash::Blake3.hasher();
        b3.update(b"a");
        b3.update(b"bc");
        assert_eq!(
            b3.finish_id(),
            "blake3-6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn an_unset_request_asks_for_sha256() {
        assert_eq!(ContentHash::from_proto(0), ContentHash::Sha256);
        assert_eq!(ContentHash::from_proto(1), ContentHash::Sha256);
        assert_eq!(ContentHash::from_proto(2), ContentHash::Blake3);
        assert_eq!(ContentHash::from_proto(99), ContentHash::Sha256);
    }
}
