//! An archive's content hash on a thread of its own beside the reading and
//! writing of a large archive. sha256 runs about as fast as this machine's
//! disk writes (1.6 GB/s with SHA-NI), so hashing it in line added its whole
//! time to every checkpoint; BLAKE3 is 3.5× faster but still a fifth of a
//! copy's time in line. Beside the copy either costs a core, not time.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::content_hash::{ContentHash, Hasher};

/// Archives at least this large are hashed on a thread: below, starting
/// one costs more than the hash.
pub(crate) const PARALLEL_FROM: u64 = 8 << 20;

/// Chunks waiting for the hashing thread: bounds memory to a few buffers.
const QUEUED: usize = 4;

/// A content hash of bytes given in order, computed here or on a thread.
#[derive(Debug)]
pub(crate) enum Hashing {
    Inline(Hasher),
    Background {
        chunks: SyncSender<Bytes>,
        worker: JoinHandle<Hasher>,
    },
}

impl Hashing {
    /// For about `size` bytes: on a thread when that is worth it (and a
    /// thread can be started).
    pub(crate) fn new(hash: ContentHash, size: u64) -> Self {
        Self::continuing(hash.hasher(), size)
    }

    /// Goes on from `hasher` (the bytes an interrupted transfer kept) for
    /// about `size` more bytes.
    pub(crate) fn continuing(hasher: Hasher, size: u64) -> Self {
        if size < PARALLEL_FROM {
            return Self::Inline(hasher);
        }
        let (chunks, queue) = sync_channel::<Bytes>(QUEUED);
        let start = hasher.clone();
        let worker = std::thread::Builder::new()
            .name("archive-hash".into())
            .spawn(move || {
                let mut hasher = start;
                for chunk in queue {
                    hasher.update(&chunk);
                }
                hasher
            });
        match worker {
            Ok(worker) => Self::Background { chunks, worker },
            Err(err) => {
                tracing::debug!(error = %err, "no thread for hashing; hashing in line");
                Self::Inline(hasher)
            }
        }
    }

    /// The next bytes. Only fails when the hashing thread is gone.
    pub(crate) fn update(&mut self, chunk: Bytes) -> Result<(), std::io::Error> {
        match self {
            Self::Inline(hasher) => {
                hasher.update(&chunk);
                Ok(())
            }
            Self::Background { chunks, .. } => chunks
                .send(chunk)
                .map_err(|_| std::io::Error::other("the hashing thread stopped")),
        }
    }

    /// Like [`Hashing::update`] for bytes this side does not own: copied
    /// only when they go to the thread.
    pub(crate) fn update_from(&mut self, data: &[u8]) -> Result<(), std::io::Error> {
        match self {
            Self::Inline(hasher) => {
                hasher.update(data);
                Ok(())
            }
            Self::Background { .. } => self.update(Bytes::copy_from_slice(data)),
        }
    }

    /// The archive id of every byte given.
    pub(crate) fn finish(self) -> Result<String, std::io::Error> {
        let hasher = match self {
            Self::Inline(hasher) => hasher,
            Self::Background { chunks, worker } => {
                drop(chunks);
                worker
                    .join()
                    .map_err(|_| std::io::Error::other("the hashing thread panicked"))?
            }
        };
        Ok(hasher.finish_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_background_hashes_agree() {
        let data: Vec<u8> = (0..(PARALLEL_FROM as usize * 2))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for hash in ContentHash::SUPPORTED {
            let expected = hash.id_of_bytes(&data);
            for size in [0, PARALLEL_FROM] {
                let mut hashing = Hashing::new(hash, size);
                assert_eq!(
                    matches!(hashing, Hashing::Background { .. }),
                    size >= PARALLEL_FROM
                );
                for piece in data.chunks(1 << 20 | 17) {
                    hashing.update(Bytes::copy_from_slice(piece)).unwrap();
                }
                assert_eq!(
                    hashing.finish().unwrap(),
                    expected,
                    "{hash:?}, size hint {size}"
                );
            }
        }
    }

    #[test]
    fn a_hash_continued_on_the_thread_covers_the_bytes_before() {
        let data = vec![7u8; 3 * PARALLEL_FROM as usize];
        for hash in ContentHash::SUPPORTED {
            let (kept, rest) = data.split_at(12345);
            let mut earlier = hash.hasher();
            earlier.update(kept);
            let mut hashing = Hashing::continuing(earlier, rest.len() as u64);
            assert!(matches!(hashing, Hashing::Background { .. }));
            for piece in rest.chunks(1 << 20) {
                hashing.update_from(piece).unwrap();
            }
            assert_eq!(
                hashing.finish().unwrap(),
                hash.id_of_bytes(&data),
                "{hash:?}"
            );
        }
    }
}
