//! The deployment pipeline, end to end: open the source, sniff the format,
//! check it fits, wipe the disk's ends, stream-decode onto the disk, verify
//! the checksum, run the finishing steps on the held-back first MiB, and
//! commit it last. Any failure after the first write wipes the ends again,
//! so a half-written disk never boots.

use std::io::{self, Cursor, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use byoi_wire::Stage;

use crate::checksum::{to_hex, Checksum, HashThread};
use crate::error::{DeployError, Result};
use crate::format::{self, ImageType, Sniffed, Wrapper, SNIFF_LEN};
use crate::ova::{Ova, OvaDecoded};
use crate::progress::Progress;
use crate::qcow2::{self, DecodeStats, Header};
use crate::sink::{self, DiskWriter, Target, WriteStats};
use crate::source::{self, SourceOptions};
use crate::util::read_full;

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// `http://`, `https://` or `file://` URL of the image.
    pub url: String,
    /// The declared type; `None` to accept whatever the magic says.
    pub image_type: Option<ImageType>,
    /// The expected checksum of the bytes served.
    pub checksum: Option<Checksum>,
    /// How to fetch it.
    pub source: SourceOptions,
    /// Which disk of a multi-disk OVA to deploy: a 1-based index, an OVF
    /// disk id or a file name.
    pub ova_disk: Option<String>,
}

/// A deployment that finished.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// `qcow2`, `raw`, `raw (gzip)`, `qcow2 (zstd)`…
    pub format: String,
    /// The image's size on disk: virtual size of a qcow2, length of a raw.
    pub image_size: u64,
    /// Bytes received from the source.
    pub bytes_served: u64,
    /// Digest of the bytes served, when a checksum was asked for.
    pub digest: Option<String>,
    /// How the disk was written.
    pub writes: WriteStats,
    /// qcow2 decoder counters.
    pub qcow2: Option<DecodeStats>,
    /// What the OVA held: its disk's VMDK type, the members its manifest
    /// confirmed.
    pub ova: Option<OvaDecoded>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Bytes of the image's start handed to [`Finish::check_image_start`]:
/// enough for an MBR and a GPT with 4 KiB sectors (LBA 0–5).
pub const IMAGE_START_LEN: usize = 64 << 10;

/// Steps run on the written image before the first MiB is committed (GPT
/// relocation, ConfigDrive, boot entry: [`crate::finish::Finishing`]).
pub trait Finish {
    /// Looks at the image's first bytes before anything is written, to
    /// refuse early what the finishing steps would refuse late. Only called
    /// when those bytes are available without streaming (raw images, qcow2
    /// from a server with Range support).
    fn check_image_start(&mut self, _first: &[u8], _sector: u32) -> Result<()> {
        Ok(())
    }

    /// Patches the disk; the held-back regions are still in memory.
    fn finish(&mut self, w: &mut DiskWriter<'_>) -> Result<()>;
}

impl<F: FnMut(&mut DiskWriter<'_>) -> Result<()>> Finish for F {
    fn finish(&mut self, w: &mut DiskWriter<'_>) -> Result<()> {
        self(w)
    }
}

/// How the image, once sniffed and checked, is decoded onto the disk.
enum Decoding<'b> {
    /// Copied byte for byte.
    Raw,
    /// Streamed through the qcow2 decoder.
    Qcow2(Header),
    /// The archive, its descriptor read, its disk still to come.
    Ova(Box<Ova<'b>>),
}

/// A finishing step, as `deploy` takes it.
pub type Finisher<'f> = &'f mut dyn Finish;

/// Deploys `req` onto `target`.
pub fn deploy(
    req: &DeployRequest,
    target: &dyn Target,
    progress: &Arc<Progress>,
    mut finish: Option<Finisher<'_>>,
) -> Result<Deployed> {
    let started = Instant::now();
    progress.set_stage(Stage::Downloading);
    let hasher = req.checksum.as_ref().map(|c| HashThread::spawn(c.algo)).transpose()?;
    let mut opts = req.source.clone();
    opts.verified = req.checksum.is_some();
    let opened = source::open(&req.url, &opts, hasher.as_ref().map(HashThread::feeder), progress.clone())?;
    let file_len = opened.info.len;
    let ranger = opened.ranger;
    let mut reader = opened.reader;

    let url = source::RedactedUrl::new(&req.url);
    let download_err = |e: io::Error| DeployError::Download { url: url.clone(), reason: e.to_string() };
    let mut head = vec![0u8; SNIFF_LEN];
    let n = read_full(&mut reader, &mut head).map_err(|e| DeployError::from_read(e, download_err))?;
    head.truncate(n);

    // `body` yields the (decompressed) image from its first byte;
    // `inner_head` is a copy of its first bytes, for sniffing.
    let (wrapper, mut body, inner_head): (Option<Wrapper>, Box<dyn Read + '_>, Vec<u8>) = match format::sniff(&head) {
        Sniffed::Compressed(w) => {
            let mut inner = decompressor(w, Cursor::new(head).chain(&mut reader))?;
            let mut h = vec![0u8; SNIFF_LEN];
            let n = read_full(&mut inner, &mut h)
                .map_err(|e| DeployError::from_read(e, |e| corrupt_wrapper(Some(w), e)))?;
            h.truncate(n);
            (Some(w), Box::new(Cursor::new(h.clone()).chain(inner)), h)
        }
        _ => (None, Box::new(Cursor::new(head.clone()).chain(&mut reader)), head),
    };
    let detected = match format::sniff(&inner_head) {
        Sniffed::Qcow2 => ImageType::Qcow2,
        Sniffed::Tar => ImageType::Ova,
        Sniffed::Raw => ImageType::Raw,
        Sniffed::Other(what) => return Err(DeployError::BadFormat { detected: what.into() }),
        Sniffed::Compressed(w) => {
            return Err(DeployError::BadFormat {
                detected: format!("{} inside {}", w.name(), wrapper.map_or("?", Wrapper::name)),
            })
        }
    };
    if let Some(declared) = req.image_type {
        if declared != detected {
            return Err(DeployError::FormatMismatch { detected: detected.name(), declared: declared.name() });
        }
    }
    let format_name = |name: &str| match wrapper {
        Some(w) => format!("{name} ({})", w.name()),
        None => name.to_owned(),
    };

    let too_large = |image: u64| DeployError::ImageTooLarge {
        image,
        lower_bound: false,
        device: target.path().to_owned(),
        disk: target.size(),
    };
    let decoding = match detected {
        ImageType::Qcow2 => {
            let h = Header::parse(&inner_head, if wrapper.is_some() { None } else { file_len })?;
            if h.size > target.size() {
                return Err(too_large(h.size));
            }
            if h.dirty {
                tracing::warn!("the qcow2 image was not closed cleanly; reading it anyway");
            }
            Decoding::Qcow2(h)
        }
        ImageType::Ova => {
            // The descriptor comes first: it names the disk and its size.
            let archive = std::mem::replace(&mut body, Box::new(io::empty()));
            let o = Ova::open(archive, req.ova_disk.as_deref())?;
            if o.disk.capacity > target.size() {
                return Err(too_large(o.disk.capacity));
            }
            Decoding::Ova(Box::new(o))
        }
        ImageType::Raw => {
            if !format::has_partition_table(&inner_head) {
                return Err(DeployError::NoPartitionTable { contents: format::describe(&inner_head) });
            }
            match file_len {
                Some(len) if wrapper.is_none() && len > target.size() => return Err(too_large(len)),
                _ => Decoding::Raw,
            }
        }
    };
    // The image's first bytes, when they can be had without streaming:
    // enough to refuse a partition table the disk can't use, or that the
    // finishing steps would refuse, before anything is written.
    let start = match &decoding {
        Decoding::Raw => Some(inner_head[..inner_head.len().min(IMAGE_START_LEN)].to_vec()),
        Decoding::Qcow2(h) if wrapper.is_none() => match ranger.as_deref() {
            Some(r) => Some(qcow2::read_guest_prefix(h, r, IMAGE_START_LEN as u64)?),
            None => None,
        },
        Decoding::Qcow2(_) | Decoding::Ova(_) => None,
    };
    if let Some(start) = &start {
        sink::check_sector_size(start, target)?;
        if let Some(f) = finish.as_deref_mut() {
            f.check_image_start(start, target.logical_sector_size())?;
        }
    }
    tracing::info!(format = %format_name(detected.name()), target = target.path(), "deploying");

    let mut writer = DiskWriter::new(target, detected.name());
    writer.wipe_ends()?;
    // A panic must not skip the wipe below: catch it, wipe, report it.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ova_decoded = None;
        let (image_size, qcow2_stats) = match decoding {
            Decoding::Qcow2(h) => {
                let size = h.size;
                let ranger = if wrapper.is_none() { ranger.as_deref() } else { None };
                let dec = qcow2::Decoder::new(
                    h,
                    &mut writer,
                    ranger,
                    if wrapper.is_none() { file_len } else { None },
                    Some(progress),
                );
                (size, Some(dec.run(&mut body)?))
            }
            Decoding::Ova(o) => {
                let d = o.decode(&mut writer, Some(progress))?;
                let size = d.size;
                ova_decoded = Some(d);
                (size, None)
            }
            Decoding::Raw => {
                let read_err = |e| DeployError::from_read(e, |e| corrupt_wrapper(wrapper, e));
                (sink::copy_at(&mut body, &mut writer, 0, u64::MAX, Some(progress), read_err)?, None)
            }
        };
        let format = match &ova_decoded {
            Some(d) => format_name(&format!("ova, {}", d.disk_format)),
            None => format_name(detected.name()),
        };
        // Both decoders, and the decompressors under them, read to the end
        // of the source: the hasher has seen every byte served.
        drop(body);
        progress.set_stage(Stage::Writing);
        writer.flush()?;
        let digest = match (hasher, &req.checksum) {
            (Some(h), Some(c)) => {
                let d = h.finish()?;
                crate::checksum::verify(c, &d)?;
                Some(to_hex(&d))
            }
            _ => None,
        };
        if progress.abort_requested() {
            return Err(DeployError::Aborted);
        }
        progress.set_stage(Stage::Finishing);
        if let Some(f) = finish {
            f.finish(&mut writer)?;
        }
        let writes = writer.commit()?;
        Ok(Deployed {
            format,
            image_size,
            bytes_served: progress.bytes().0,
            digest,
            writes,
            qcow2: qcow2_stats,
            ova: ova_decoded,
            elapsed: started.elapsed(),
        })
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(DeployError::Internal(format!("the pipeline panicked: {what}")))
    });
    if let Err(e) = &result {
        tracing::error!(error = %e, "deployment failed; wiping the partition tables");
        if let Err(wipe) = sink::wipe_ends(target) {
            tracing::error!(error = %wipe, target = target.path(), "wiping the disk's ends failed");
        }
    }
    result
}

fn corrupt_wrapper(wrapper: Option<Wrapper>, e: io::Error) -> DeployError {
    let format = match wrapper {
        Some(Wrapper::Gzip) => "gzip",
        Some(Wrapper::Xz) => "xz",
        Some(Wrapper::Zstd) => "zstd",
        None => "raw",
    };
    DeployError::Corrupt { format, detail: e.to_string() }
}

/// Most memory the xz decoder may use: enough for `xz -9` (64 MiB
/// dictionary), not for hand-tuned larger ones.
const XZ_MEMLIMIT: u64 = 72 << 20;
/// Largest zstd window accepted (64 MiB): every level up to 19, `--long=26`.
const ZSTD_WINDOW_LOG_MAX: u32 = 26;

fn decompressor<'r>(w: Wrapper, r: impl Read + 'r) -> Result<Box<dyn Read + 'r>> {
    let internal = |e: io::Error| DeployError::Internal(format!("starting the {} decoder: {e}", w.name()));
    let inner: Box<dyn Read + 'r> = match w {
        Wrapper::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Wrapper::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, liblzma::stream::CONCATENATED)
                .map_err(|e| internal(e.into()))?;
            Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
        }
        Wrapper::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(r).map_err(internal)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(internal)?;
            Box::new(d)
        }
    };
    Ok(Box::new(WrapperErrors { inner, wrapper: w }))
}

/// Names decompression failures after the wrapper (`corrupt gzip image`),
/// whatever decoder sits on top; the source's own errors pass through.
struct WrapperErrors<R> {
    inner: R,
    wrapper: Wrapper,
}

impl<R: Read> Read for WrapperErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let wrapper = self.wrapper;
            DeployError::from_read(e, |e| {
                let msg = e.to_string();
                if msg.contains("memory") {
                    DeployError::Unsupported {
                        format: wrapper.name(),
                        detail: format!(
                            "decompressing it needs more memory than allowed ({msg}); recompress with default settings"
                        ),
                    }
                } else {
                    corrupt_wrapper(Some(wrapper), e)
                }
            })
            .into_io()
        })
    }
}
