//! `file://` images: a local file read on its own thread, with positioned
//! reads for ranges. For rescue systems with the image on a local disk or
//! an NFS mount, and for measuring the decoders without a network.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ChannelReader, Item, Opened, RangeFetch, RedactedUrl, SourceInfo, DATA_QUEUE_CHUNKS};
use crate::checksum::HashFeeder;
use crate::error::{DeployError, Result};
use crate::progress::Progress;

/// Read size: small enough that the queues stay a few MiB.
const CHUNK: usize = 256 << 10;

/// Opens a local file.
pub(crate) fn open(url: &str, path: PathBuf, hash: Option<HashFeeder>, progress: Arc<Progress>) -> Result<Opened> {
    let url = RedactedUrl::new(url);
    let fail = |e: std::io::Error| DeployError::Download { url: url.clone(), reason: e.to_string() };
    let mut file = File::open(&path).map_err(fail)?;
    // Seeking to the end also sizes block devices (metadata says 0).
    let len = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(fail)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(fail)?;
    let ranger = FileRanger { file: file.try_clone().map_err(fail)?, url: url.clone() };
    progress.set_total(Some(len));
    let (tx, rx) = mpsc::channel(DATA_QUEUE_CHUNKS);
    let url_owned = url.clone();
    thread::Builder::new()
        .name("byoi-file-read".into())
        .spawn(move || loop {
            let mut buf = vec![0u8; CHUNK];
            let item = match file.read(&mut buf) {
                Ok(0) => Item::End,
                Ok(n) => {
                    buf.truncate(n);
                    let chunk = Bytes::from(buf);
                    if let Some(h) = &hash {
                        h.feed_blocking(chunk.clone());
                    }
                    progress.add_done(n as u64);
                    Item::Chunk(chunk)
                }
                Err(e) => Item::Fail(DeployError::Download { url: url_owned.clone(), reason: e.to_string() }),
            };
            let last = !matches!(item, Item::Chunk(_));
            if tx.blocking_send(item).is_err() || last {
                return;
            }
        })
        .map_err(|e| DeployError::Internal(format!("spawning the file reader: {e}")))?;
    Ok(Opened {
        reader: ChannelReader::new(rx, None),
        info: SourceInfo { len: Some(len) },
        ranger: Some(Box::new(ranger)),
    })
}

struct FileRanger {
    file: File,
    url: RedactedUrl,
}

impl RangeFetch for FileRanger {
    fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => return Err(DeployError::Download { url: self.url.clone(), reason: e.to_string() }),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}
