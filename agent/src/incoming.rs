//! Receiving a replica: the writer side of `PushReplica`. The network task
//! hands data pieces over a channel to a blocking task that writes (and, if
//! the sender compressed, decompresses) them into the store.

use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::Error;
use crate::store::{ArchiveMeta, Incoming};

/// What flows from the network task to the writer task.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// The stream ended as it should; `named` is the archive's id when the
    /// header carried a transfer id instead (a trailer named it).
    End {
        named: Option<String>,
    },
}

/// Bytes a compressed transfer's decoded output is gathered to before it is
/// written (and hashed): the size of an uncompressed transfer's chunks.
const DECODED_CHUNK: usize = 1 << 20;

/// Writes the pieces of one transfer; publishes the archive on `End`. When
/// the channel closes without `End` (the sender vanished) the partial file
/// stays for a resumed attempt.
pub fn write_incoming(
    mut incoming: Incoming,
    mut pieces: mpsc::Receiver<Piece>,
    zstd: bool,
) -> Result<ArchiveMeta, Error> {
    let id = incoming.meta().id.clone();
    let mut named = None;
    let ended = if zstd {
        // The decoder writes in small pieces; gathered to a chunk's size they
        // reach the hashing thread in few hand-offs.
        let mut gathered =
            std::io::BufWriter::with_capacity(DECODED_CHUNK, IncomingWriter(&mut incoming));
        let mut decoder = zstd::stream::write::Decoder::new(&mut gathered)
            .map_err(|e| Error::io("decompressing", &id, e))?;
        let ended = drain(&mut pieces, &mut named, |data| {
            std::io::Write::write_all(&mut decoder, &data)
                .map_err(|e| unwrap_incoming_error(e, &id))
        })?;
        if ended {
            std::io::Write::flush(&mut decoder).map_err(|e| unwrap_incoming_error(e, &id))?;
            drop(decoder);
            std::io::Write::flush(&mut gathered).map_err(|e| unwrap_incoming_error(e, &id))?;
        }
        ended
    } else {
        drain(&mut pieces, &mut named, |data| incoming.write_bytes(data))?
    };
    if !ended {
        return Err(Error::Peer {
            peer: "sender".into(),
            endpoint: String::new(),
            step: "receiving",
            message: format!(
                "stream of archive {id} ended early; {} bytes kept for a resumed transfer",
                incoming.received()
            ),
        });
    }
    incoming.finish(named)
}

/// Feeds data pieces to `write` until `End` (true, with the id it named
/// in `named`) or a closed channel (false).
fn drain(
    pieces: &mut mpsc::Receiver<Piece>,
    named: &mut Option<String>,
    mut write: impl FnMut(Bytes) -> Result<(), Error>,
) -> Result<bool, Error> {
    loop {
        match pieces.blocking_recv() {
            Some(Piece::Data(data)) => write(data)?,
            Some(Piece::End { named: id }) => {
                *named = id;
                return Ok(true);
            }
            None => return Ok(false),
        }
    }
}

/// Lets a zstd decoder write into an incoming replica.
struct IncomingWriter<'a>(&'a mut Incoming);

impl std::io::Write for IncomingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Recovers the store's error from inside an io::Error made by `IncomingWriter`.
fn unwrap_incoming_error(err: std::io::Error, id: &str) -> Error {
    if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = err.into_inner()
            && let Ok(store_error) = inner.downcast::<Error>()
        {
            return *store_error;
        }
        return Error::Metadata {
            id: id.to_owned(),
            path: PathBuf::new(),
            reason: "unreadable error".into(),
        };
    }
    Error::io("decompressing", id, err)
}
