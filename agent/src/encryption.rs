//! Encryption of archives at rest (AES-256-GCM, key from a file).
//!
//! An encrypted archive file is a header followed by segments:
//!
//! ```text
//! header   b"FERRYAE1" | key id (4 bytes) | nonce base (12 bytes, OS RNG)
//! segment  AES-256-GCM(1 MiB of the archive) | 16-byte tag     (repeated)
//! ```
//!
//! Every segment but the last holds [`SEGMENT`] bytes of the archive; the
//! last holds the rest (an empty archive has one empty segment). The nonce
//! of segment `i` is the nonce base with its last 8 bytes XORed with `i`
//! (big-endian). The associated data is the header, `i` (u64 big-endian)
//! and a byte that is 1 for the last segment only, so altered, reordered,
//! spliced (from another file) or dropped segments fail authentication.
//! The key id (`sha256("ferry key id" || key)[..4]`) only tells a wrong key
//! apart from corruption; it does not help guessing the key.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{OsRng, generic_array::GenericArray};
use aes_gcm::{AeadInPlace, Aes256Gcm, KeyInit};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::Error;

/// Archive bytes per segment.
pub const SEGMENT: usize = 1 << 20;
/// Bytes of a GCM tag after every segment.
pub const TAG: usize = 16;
pub const MAGIC: &[u8; 8] = b"FERRYAE1";
/// Magic, key id and nonce base.
pub const HEADER_LEN: usize = 8 + 4 + 12;

/// Key files larger than this are certainly not a key (and are not read
/// into memory whole).
const MAX_KEY_FILE: u64 = 4096;

/// The AES-256 key archives are encrypted with. `Debug` shows the key id only.
#[derive(Clone)]
pub struct ArchiveKey {
    cipher: Arc<Aes256Gcm>,
    id: [u8; 4],
}

impl fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveKey")
            .field("id", &self.id_hex())
            .finish_non_exhaustive()
    }
}

impl ArchiveKey {
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"ferry key id");
        hasher.update(key);
        let digest = hasher.finalize();
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest[..4]);
        Self {
            cipher: Arc::new(Aes256Gcm::new(GenericArray::from_slice(key))),
            id,
        }
    }

    /// Reads a key file: 32 raw bytes, 64 hex digits or base64 of 32 bytes
    /// (a trailing newline is fine for the text forms). Errors name the file
    /// and what is wrong with it, never its content.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::EncryptionKey {
            path: path.to_owned(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot be read: {e}")))?
            .len();
        if size > MAX_KEY_FILE {
            return Err(bad(format!(
                "is {size} bytes; a key file holds 32 raw bytes, 64 hex digits or base64 of 32 bytes"
            )));
        }
        let mut contents = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let parsed = parse_key(&contents);
        contents.fill(0);
        let mut key = parsed.map_err(bad)?;
        let loaded = Self::from_bytes(&key);
        key.fill(0);
        Ok(loaded)
    }

    /// Tells keys apart (derived from the key by a hash; safe to log).
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The key id as 8 hex digits (safe to log).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    fn seal(
        &self,
        header: &[u8; HEADER_LEN],
        index: u64,
        last: bool,
        data: &mut [u8],
    ) -> io::Result<[u8; TAG]> {
        let (nonce, aad) = nonce_and_aad(header, index, last);
        // Fails only for inputs beyond GCM's limit (64 GiB); a segment is 1 MiB.
        self.cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), &aad, data)
            .map(Into::into)
            .map_err(|_| io::Error::other("AES-GCM refused to seal a segment"))
    }

    /// Decrypts a segment in place; false when it fails authentication.
    fn open(
        &self,
        header: &[u8; HEADER_LEN],
        index: u64,
        last: bool,
        data: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let (nonce, aad) = nonce_and_aad(header, index, last);
        self.cipher
            .decrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                &aad,
                data,
                GenericArray::from_slice(tag),
            )
            .is_ok()
    }
}

fn nonce_and_aad(
    header: &[u8; HEADER_LEN],
    index: u64,
    last: bool,
) -> ([u8; 12], [u8; HEADER_LEN + 9]) {
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[12..24]);
    for (byte, counter) in nonce[4..].iter_mut().zip(index.to_be_bytes()) {
        *byte ^= counter;
    }
    let mut aad = [0u8; HEADER_LEN + 9];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_be_bytes());
    aad[HEADER_LEN + 8] = u8::from(last);
    (nonce, aad)
}

/// The 32 key bytes of a key file's content, or what is wrong with it.
fn parse_key(contents: &[u8]) -> Result<[u8; 32], String> {
    const FORMS: &str = "expected 32 raw bytes, 64 hex digits or base64 of 32 bytes";
    let hex_digits = |b: &[u8]| b.iter().all(u8::is_ascii_hexdigit);
    if contents.is_empty() {
        return Err(format!("is empty; {FORMS}"));
    }
    if contents.len() == 32 {
        // A random raw key is all hex digits with probability ~1e-34: this is
        // the hex of a 16-byte (AES-128) key, which would silently be half
        // as strong as configured.
        if hex_digits(contents) {
            return Err(format!("holds 32 hex digits (a 16-byte key); {FORMS}"));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(contents);
        return Ok(key);
    }
    let text = contents
        .strip_suffix(b"\r\n")
        .or_else(|| contents.strip_suffix(b"\n"))
        .unwrap_or(contents);
    if text.len() == 64 {
        // 64 characters are meant as hex (base64 of 32 bytes is 43 or 44).
        let mut key = [0u8; 32];
        if !hex_digits(text) || hex::decode_to_slice(text, &mut key).is_err() {
            return Err(format!(
                "holds 64 characters that are not all hex digits; {FORMS}"
            ));
        }
        return Ok(key);
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        if let Ok(mut decoded) = engine.decode(text) {
            let len = decoded.len();
            if len == 32 {
                let mut key = [0u8; 32];
                key.copy_from_slice(&decoded);
                decoded.fill(0);
                return Ok(key);
            }
            decoded.fill(0);
            return Err(format!("holds base64 of {len} bytes; AES-256 needs 32"));
        }
    }
    Err(format!(
        "holds {} bytes in no known form; {FORMS}",
        contents.len()
    ))
}

/// Segments an archive of `size` bytes is stored in (at least one).
pub fn segments(size: u64) -> u64 {
    size.div_ceil(SEGMENT as u64).max(1)
}

/// Length of the encrypted file of an archive of `size` bytes.
pub fn encrypted_len(size: u64) -> u64 {
    HEADER_LEN as u64 + segments(size) * TAG as u64 + size
}

/// Bytes of one stored segment.
pub const SEALED_SEGMENT: u64 = (SEGMENT + TAG) as u64;

/// Archive bytes held in the complete (full-size) segments of an encrypted
/// file `file_len` bytes long: where a resumed transfer continues.
pub fn complete_segments(file_len: u64) -> u64 {
    file_len.saturating_sub(HEADER_LEN as u64) / SEALED_SEGMENT
}

/// What the first bytes of a file say about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Encrypted { key_id: [u8; 4] },
}

/// Classifies a file by its header bytes (fewer than a header: plaintext).
pub fn format_of(header: &[u8]) -> Format {
    if header.len() >= HEADER_LEN && header.starts_with(MAGIC) {
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(&header[8..12]);
        Format::Encrypted { key_id }
    } else {
        Format::Plain
    }
}

/// Checks that an encrypted file's header was written with `key`.
pub fn check_header(
    header: &[u8; HEADER_LEN],
    key: Option<&ArchiveKey>,
    id: &str,
    path: &Path,
) -> Result<ArchiveKey, Error> {
    let found = match format_of(header) {
        Format::Encrypted { key_id } => key_id,
        Format::Plain => {
            return Err(Error::SealedArchive {
                id: id.to_owned(),
                path: path.to_owned(),
                reason: "its metadata says encrypted but the file has no encryption header".into(),
            });
        }
    };
    let Some(key) = key else {
        return Err(Error::SealedArchive {
            id: id.to_owned(),
            path: path.to_owned(),
            reason: format!(
                "it is encrypted (key id {}) but this agent has no encryption key (--encryption-key-file)",
                hex::encode(found)
            ),
        });
    };
    if found != key.id {
        return Err(Error::SealedArchive {
            id: id.to_owned(),
            path: path.to_owned(),
            reason: format!(
                "it is encrypted with another key (key id {}; this agent's key has id {})",
                hex::encode(found),
                key.id_hex()
            ),
        });
    }
    Ok(key.clone())
}

/// Encrypts a stream into segments. A full segment is sealed only once more
/// bytes arrive, because only then is it known not to be the last one;
/// `finish` seals what is left as the last segment.
#[derive(Debug)]
pub struct Sealer {
    key: ArchiveKey,
    header: [u8; HEADER_LEN],
    next: u64,
    /// The segment being filled, with room for its tag.
    buffer: Vec<u8>,
    filled: usize,
}

impl Sealer {
    /// A new file with a random nonce base; its header is [`Sealer::header`].
    pub fn new(key: &ArchiveKey) -> Result<Self, Error> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&key.id);
        OsRng.try_fill_bytes(&mut header[12..]).map_err(|e| {
            Error::io(
                "drawing a nonce from",
                "the OS RNG",
                io::Error::other(e.to_string()),
            )
        })?;
        Ok(Self::resume(key, header, 0))
    }

    /// Continues a file whose first `next` segments are written.
    pub fn resume(key: &ArchiveKey, header: [u8; HEADER_LEN], next: u64) -> Self {
        Self {
            key: key.clone(),
            header,
            next,
            buffer: vec![0u8; SEGMENT + TAG],
            filled: 0,
        }
    }

    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Encrypts `data`, writing each completed segment to `out`. Returns the
    /// bytes written to `out`.
    pub fn write(&mut self, mut data: &[u8], out: &mut impl Write) -> io::Result<u64> {
        let mut written = 0;
        while !data.is_empty() {
            if self.filled == SEGMENT {
                written += self.seal_and_write(false, out)?;
            }
            let take = (SEGMENT - self.filled).min(data.len());
            self.buffer[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
        }
        Ok(written)
    }

    /// Seals and writes the last segment. Returns the bytes written.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<u64> {
        self.seal_and_write(true, out)
    }

    fn seal_and_write(&mut self, last: bool, out: &mut impl Write) -> io::Result<u64> {
        let filled = self.filled;
        let tag = self
            .key
            .seal(&self.header, self.next, last, &mut self.buffer[..filled])?;
        self.buffer[filled..filled + TAG].copy_from_slice(&tag);
        out.write_all(&self.buffer[..filled + TAG])?;
        self.next += 1;
        self.filled = 0;
        Ok((filled + TAG) as u64)
    }
}

/// Decrypts the segments of one encrypted file.
#[derive(Debug)]
pub struct Opener {
    key: ArchiveKey,
    header: [u8; HEADER_LEN],
    id: String,
}

impl Opener {
    pub fn new(key: ArchiveKey, header: [u8; HEADER_LEN], id: &str) -> Self {
        Self {
            key,
            header,
            id: id.to_owned(),
        }
    }

    /// Decrypts segment `index` (ciphertext and tag in `sealed`) in place
    /// and returns its length; refuses it when it fails authentication.
    pub fn open(&self, index: u64, last: bool, sealed: &mut [u8]) -> Result<usize, Error> {
        let corrupt = || Error::SegmentCorrupt {
            id: self.id.clone(),
            segment: index,
        };
        let len = sealed.len().checked_sub(TAG).ok_or_else(corrupt)?;
        let (data, tag) = sealed.split_at_mut(len);
        if self.key.open(&self.header, index, last, data, tag) {
            Ok(len)
        } else {
            Err(corrupt())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;

    const KEY: [u8; 32] = [
        0x9f, 0x01, 0xe2, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
        0xee, 0xf0,
    ];

    fn load(dir: &Path, contents: &[u8]) -> Result<ArchiveKey, Error> {
        let path = dir.join("key");
        std::fs::write(&path, contents).unwrap();
        ArchiveKey::load(&path)
    }

    #[test]
    fn key_files_hold_raw_hex_or_base64_keys() {
        let dir = tempfile::tempdir().unwrap();
        let expected = ArchiveKey::from_bytes(&KEY).id;
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        for contents in [
            KEY.to_vec(),
            hex::encode(KEY).into_bytes(),
            format!("{}\n", hex::encode(KEY)).into_bytes(),
            format!("{}\r\n", hex::encode_upper(KEY)).into_bytes(),
            b64.clone().into_bytes(),
            format!("{b64}\n").into_bytes(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(KEY)
                .into_bytes(),
        ] {
            let key = load(dir.path(), &contents).unwrap();
            assert_eq!(key.id, expected, "{contents:?}");
        }
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_file_but_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(Vec<u8>, &str); 6] = [
            (Vec::new(), "is empty"),
            (vec![7u8; 31], "in no known form"),
            (KEY[..16].to_vec(), "in no known form"),
            (hex::encode(&KEY[..16]).into_bytes(), "32 hex digits"),
            (
                base64::engine::general_purpose::STANDARD
                    .encode([1u8; 16])
                    .into_bytes(),
                "base64 of 16 bytes",
            ),
            (
                format!("{}zz", &hex::encode(KEY)[..62]).into_bytes(),
                "not all hex digits",
            ),
        ];
        for (contents, reason) in cases {
            let err = load(dir.path(), &contents).unwrap_err().to_string();
            assert!(err.contains(reason), "{contents:?}: {err}");
            assert!(
                err.contains(&dir.path().join("key").display().to_string()),
                "{err}"
            );
            assert!(!err.contains(&hex::encode(&KEY[..8])), "{err}");
        }
        let err = ArchiveKey::load(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
        std::fs::write(dir.path().join("big"), vec![b'a'; 10_000]).unwrap();
        let err = ArchiveKey::load(&dir.path().join("big")).unwrap_err();
        assert!(err.to_string().contains("10000 bytes"), "{err}");
    }

    #[test]
    fn debug_shows_the_key_id_only() {
        let key = ArchiveKey::from_bytes(&KEY);
        let debug = format!("{key:?}");
        assert!(debug.contains(&key.id_hex()), "{debug}");
        assert!(!debug.contains("9f01"), "{debug}");
    }

    #[test]
    fn lengths_count_one_tag_per_segment_and_at_least_one_segment() {
        let seg = SEGMENT as u64;
        let header = HEADER_LEN as u64;
        let tag = TAG as u64;
        assert_eq!(encrypted_len(0), header + tag);
        assert_eq!(encrypted_len(1), header + tag + 1);
        assert_eq!(encrypted_len(seg), header + tag + seg);
        assert_eq!(encrypted_len(seg + 1), header + 2 * tag + seg + 1);
        assert_eq!(complete_segments(encrypted_len(3 * seg + 5)), 3);
        assert_eq!(complete_segments(header + SEALED_SEGMENT - 1), 0);
    }
}
