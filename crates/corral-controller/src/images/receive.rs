//! Receiving an uploaded image into a scratch file, as fast as the bytes arrive: they are
//! gathered into large blocks written on a blocking thread while the next block arrives; runs
//! of zeros are left as holes (a fully allocated raw image costs no writes for its empty
//! space, and `qemu-img` skips holes at once); the SHA-256 is computed only when the import
//! asks for one; the size is bounded. The file is scratch: it is not synced.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use futures::{Stream, StreamExt};
use sha2::Digest;

/// Bytes gathered before a write.
const BLOCK: usize = 4 << 20;
/// The unit a run of zeros is skipped in.
const HOLE: usize = 64 << 10;

/// What arrived.
#[derive(Debug)]
pub struct Received {
    pub bytes: u64,
    /// Its SHA-256 (lower-case hex), when asked for.
    pub sha256: Option<String>,
}

/// Why an upload was not received whole.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("more than {0} bytes")]
    TooLarge(u64),
    #[error("the upload was cut: {0}")]
    Cut(String),
    #[error("cannot write the scratch file: {0}")]
    Io(#[from] std::io::Error),
}

/// The scratch file and the hash, travelling to the writing thread and back with a block.
struct Sink {
    file: File,
    hash: Option<sha2::Sha256>,
}

impl Sink {
    fn write(&mut self, block: &[u8]) -> std::io::Result<()> {
        if let Some(h) = &mut self.hash {
            h.update(block);
        }
        for piece in block.chunks(HOLE) {
            if piece.iter().all(|b| *b == 0) {
                self.file.seek(SeekFrom::Current(piece.len() as i64))?;
            } else {
                self.file.write_all(piece)?;
            }
        }
        Ok(())
    }
}

type Pending = tokio::task::JoinHandle<std::io::Result<(Sink, Vec<u8>)>>;

/// Waits for the block being written; gives back the sink and the emptied buffer.
async fn settle(p: Pending) -> Result<(Sink, Vec<u8>), ReceiveError> {
    p.await.map_err(|e| std::io::Error::other(format!("the writing thread failed: {e}")))?.map_err(ReceiveError::Io)
}

fn write_in_background(mut sink: Sink, mut block: Vec<u8>) -> Pending {
    tokio::task::spawn_blocking(move || {
        sink.write(&block)?;
        block.clear();
        Ok((sink, block))
    })
}

/// Receives `body` into a new file at `path`: at most `limit` bytes, hashed if `hash`.
pub async fn receive(
    mut body: impl Stream<Item = Result<bytes::Bytes, String>> + Unpin,
    path: &Path,
    limit: u64,
    hash: bool,
) -> Result<Received, ReceiveError> {
    let sink = Sink { file: File::create(path)?, hash: hash.then(sha2::Sha256::new) };
    // One block is written while the next one fills.
    let mut pending: Option<Pending> = None;
    let mut idle = Some((sink, Vec::with_capacity(BLOCK)));
    let mut filling: Vec<u8> = Vec::with_capacity(BLOCK);
    let mut n: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(ReceiveError::Cut)?;
        n += chunk.len() as u64;
        if n > limit {
            if let Some(p) = pending {
                let _ = p.await;
            }
            return Err(ReceiveError::TooLarge(limit));
        }
        filling.extend_from_slice(&chunk);
        if filling.len() >= BLOCK {
            if let Some(p) = pending.take() {
                idle = Some(settle(p).await?);
            }
            let Some((sink, spare)) = idle.take() else {
                return Err(ReceiveError::Io(std::io::Error::other("no writer")));
            };
            pending = Some(write_in_background(sink, std::mem::replace(&mut filling, spare)));
        }
    }
    let (mut sink, _) = match pending {
        Some(p) => settle(p).await?,
        None => idle.ok_or_else(|| std::io::Error::other("no writer"))?,
    };
    let sink = tokio::task::spawn_blocking(move || -> std::io::Result<Sink> {
        sink.write(&filling)?;
        // Trailing zeros were skipped: the file still has the upload's length.
        sink.file.set_len(n)?;
        Ok(sink)
    })
    .await
    .map_err(|e| std::io::Error::other(format!("the writing thread failed: {e}")))??;
    Ok(Received { bytes: n, sha256: sink.hash.map(|h| format!("{:x}", h.finalize())) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        let v: Vec<Result<bytes::Bytes, String>> =
            data.chunks(size).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(v)
    }

    #[tokio::test]
    async fn the_file_holds_the_upload_exactly_with_its_zeros_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        // Data, a long run of zeros, data, then trailing zeros: blocks and holes both ways.
        let mut data = vec![7u8; 3 << 20];
        data.extend(vec![0u8; 9 << 20]);
        data.extend((0..(5 << 20)).map(|i| (i % 251) as u8));
        data.extend(vec![0u8; 1 << 20]);
        let p = dir.path().join("up");
        let r = receive(chunks(&data, 100_000), &p, 1 << 30, true).await.unwrap();
        assert_eq!(r.bytes, data.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert_eq!(r.sha256.unwrap(), format!("{:x}", sha2::Sha256::digest(&data)));
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(allocated < data.len() as u64 - (8 << 20), "zeros left as holes: {allocated} bytes allocated");
    }

    #[tokio::test]
    async fn no_hash_unless_asked_and_the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("up");
        let r = receive(chunks(&[1u8; 1000], 10), &p, 1000, false).await.unwrap();
        assert_eq!((r.bytes, r.sha256), (1000, None));
        let e = receive(chunks(&[1u8; 10 << 20], 1 << 20), &p, 5 << 20, false).await.unwrap_err();
        assert!(matches!(e, ReceiveError::TooLarge(_)), "{e}");
        let cut = futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"abc")), Err("reset".to_string())]);
        assert!(matches!(receive(cut, &p, 100, false).await.unwrap_err(), ReceiveError::Cut(_)));
    }
}
