//! The pipeline against a misbehaving HTTP server: checksums, broken
//! connections, servers without Range, error statuses, redirects, headers,
//! declared types, sizes — and after every failure, nothing bootable.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use byoi_agent::checksum::Checksum;
use byoi_agent::format::ImageType;
use byoi_agent::progress::Progress;
use byoi_agent::source::SourceOptions;
use byoi_agent::target::DiskTarget;
use byoi_agent::{deploy, DeployError, DeployRequest, Deployed};
use byoi_wire::ErrorCode;
use support::{assert_prefix_eq, disk_image, ends_wiped, junk_target, to_qcow2, Behaviour, Server};

const IMAGE: usize = 6 << 20;
const DISK: usize = 16 << 20;

fn opts() -> SourceOptions {
    SourceOptions {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        read_timeout: Duration::from_secs(5),
        attempts: 4,
        ..Default::default()
    }
}

fn request(url: &str) -> DeployRequest {
    DeployRequest { url: url.into(), image_type: None, checksum: None, source: opts(), ova_disk: None }
}

fn run(req: &DeployRequest, target: &Path) -> Result<Deployed, DeployError> {
    let t = DiskTarget::open(target, false).unwrap();
    deploy(req, &t, &Arc::new(Progress::default()), None)
}

/// A tempdir holding a junk-filled target and the image bytes.
struct Case {
    dir: tempfile::TempDir,
    image: Vec<u8>,
    target: std::path::PathBuf,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let target = junk_target(dir.path(), DISK);
    Case { image: disk_image(IMAGE, 3), dir, target }
}

fn untouched(target: &Path) -> bool {
    std::fs::read(target).unwrap().iter().all(|&b| b == 0xa5)
}

fn digest(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

fn ranged() -> Behaviour {
    Behaviour { ranges: true, etag: Some("\"v1\"".into()), ..Default::default() }
}

#[test]
fn every_checksum_algorithm_verifies() {
    let c = case();
    let path = c.dir.path().join("img");
    std::fs::write(&path, &c.image).unwrap();
    let server = Server::start();
    let url = server.serve("/img", c.image.clone(), ranged());
    for (algo, tool) in [("md5", "md5sum"), ("sha1", "sha1sum"), ("sha256", "sha256sum"), ("sha512", "sha512sum")] {
        let hex = digest(tool, &path);
        let mut req = request(&url);
        req.checksum = Some(Checksum::new(algo, &hex).unwrap());
        let done = run(&req, &c.target).unwrap();
        assert_eq!(done.digest.as_deref(), Some(hex.as_str()), "{algo}");
        assert_prefix_eq(&c.target, &c.image, algo);
    }
}

#[test]
fn wrong_checksum_leaves_nothing_bootable() {
    let c = case();
    let server = Server::start();
    let mut req = request(&server.serve("/img", c.image.clone(), ranged()));
    let wrong = "0".repeat(64);
    req.checksum = Some(Checksum::new("sha256", &wrong).unwrap());
    let e = run(&req, &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ChecksumMismatch);
    let msg = e.to_string();
    assert!(msg.starts_with("Bad sha256 for downloaded file, got: "), "{msg}");
    assert!(msg.ends_with(&format!(" while expecting {wrong}.")), "{msg}");
    assert!(ends_wiped(&c.target), "the first or last MiB survived a failed checksum");
}

#[test]
fn connection_cut_mid_body_is_resumed_with_if_range() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { cut_after: Some(1_500_000), cuts: 2, ..ranged() };
    let path = c.dir.path().join("img");
    std::fs::write(&path, &c.image).unwrap();
    let mut req = request(&server.serve("/img", c.image.clone(), b));
    req.checksum = Some(Checksum::new("sha256", &digest("sha256sum", &path)).unwrap());
    run(&req, &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "resumed");
    let seen = server.requests("/img");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].headers.get("range").map(String::as_str), Some("bytes=1500000-"));
    assert_eq!(seen[2].headers.get("range").map(String::as_str), Some("bytes=3000000-"));
    assert_eq!(seen[1].headers.get("if-range").map(String::as_str), Some("\"v1\""));
}

#[test]
fn qcow2_resumes_too() {
    let c = case();
    let raw = c.dir.path().join("a.raw");
    let q = c.dir.path().join("a.qcow2");
    std::fs::write(&raw, &c.image).unwrap();
    to_qcow2(&raw, &q, &[]);
    let server = Server::start();
    let b = Behaviour { cut_after: Some(700_000), cuts: 1, ..ranged() };
    let req = request(&server.serve("/q", std::fs::read(&q).unwrap(), b));
    run(&req, &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "qcow2 resumed");
}

#[test]
fn changed_file_is_never_spliced() {
    let c = case();
    let server = Server::start();
    let other = Arc::new(disk_image(IMAGE, 99));
    let b = Behaviour { cut_after: Some(2_000_000), cuts: 1, then_serve: Some((other, "\"v2\"".into())), ..ranged() };
    let e = run(&request(&server.serve("/img", c.image.clone(), b)), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResumeFailed, "{e}");
    assert!(e.to_string().contains("changed on the server"), "{e}");
    assert!(ends_wiped(&c.target));
}

#[test]
fn server_without_range_fails_clearly_once_data_is_written() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { cut_after: Some(2_000_000), cuts: 1, etag: Some("\"v1\"".into()), ..Default::default() };
    let url = server.serve("/img", c.image.clone(), b);
    let e = run(&request(&url), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResumeFailed, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("Could not download image located: {url} (connection lost after 2000000 bytes")),
        "{e}"
    );
    assert!(ends_wiped(&c.target));
}

#[test]
fn server_without_range_restarts_when_nothing_was_received() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { cut_after: Some(0), cuts: 1, ..Default::default() };
    run(&request(&server.serve("/img", c.image.clone(), b)), &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "restarted");
    let seen = server.requests("/img");
    assert_eq!(seen.len(), 2);
    assert!(!seen[1].headers.contains_key("range"));
}

#[test]
fn not_found_is_an_ovh_style_download_error_and_touches_nothing() {
    let c = case();
    let server = Server::start();
    let url = server.url("/missing.qcow2");
    let e = run(&request(&url), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::DownloadFailed);
    assert_eq!(e.to_string(), format!("Could not download image located: {url} (HTTP 404 Not Found)"));
    assert_eq!(server.requests("/missing.qcow2").len(), 1, "a 404 is not retried");
    assert!(untouched(&c.target));
    // A presigned URL's signature stays out of the message (it reaches the
    // controller and the operator's screen).
    let signed = format!("{url}?X-Amz-Signature=s3cr3t");
    let e = run(&request(&signed), &c.target).unwrap_err();
    assert_eq!(e.to_string(), format!("Could not download image located: {url}?… (HTTP 404 Not Found)"));
}

#[test]
fn server_errors_are_retried() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { fail_first: vec![500, 503], ..ranged() };
    run(&request(&server.serve("/img", c.image.clone(), b)), &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "after 500");
    assert_eq!(server.requests("/img").len(), 3);

    let b = Behaviour { fail_first: vec![503; 10], ..ranged() };
    let url = server.serve("/down", c.image.clone(), b);
    let e = run(&request(&url), &c.target).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Could not download image located: {url} (HTTP 503 Service Unavailable, after 4 attempts)")
    );
}

#[test]
fn redirects_are_followed_and_bounded() {
    let c = case();
    let server = Server::start();
    server.serve("/real", c.image.clone(), ranged());
    let b = Behaviour { redirect_to: Some("/real".into()), ..Default::default() };
    run(&request(&server.serve("/link", vec![], b)), &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "redirected");

    let b = Behaviour { redirect_to: Some("/loop".into()), ..Default::default() };
    let e = run(&request(&server.serve("/loop", vec![], b)), &c.target).unwrap_err();
    assert!(e.to_string().contains("more than 5 redirects"), "{e}");
}

#[test]
fn custom_headers_are_sent() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { require: Some(("authorization".into(), "Bearer s3cret".into())), ..ranged() };
    let url = server.serve("/private", c.image.clone(), b);
    let e = run(&request(&url), &c.target).unwrap_err();
    assert!(e.to_string().ends_with("(HTTP 401 Unauthorized)"), "{e}");
    let mut req = request(&url);
    req.source.headers = vec![("Authorization".into(), "Bearer s3cret".into())];
    run(&req, &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "with header");
}

#[test]
fn body_without_content_length() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { no_length: true, ..Default::default() };
    run(&request(&server.serve("/img", c.image.clone(), b)), &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "close-delimited");
}

#[test]
fn declared_type_must_match() {
    let c = case();
    let server = Server::start();
    let mut req = request(&server.serve("/img", c.image.clone(), ranged()));
    req.image_type = Some(ImageType::Qcow2);
    let e = run(&req, &c.target).unwrap_err();
    assert_eq!(e.to_string(), "image provided format is raw which does not match expected qcow2 format");
    assert_eq!(e.code(), ErrorCode::FormatMismatch);
    assert!(untouched(&c.target));
    req.image_type = Some(ImageType::Raw);
    run(&req, &c.target).unwrap();
}

#[test]
fn unknown_formats_and_raw_without_partition_table_are_refused() {
    let c = case();
    let server = Server::start();
    let mut vmdk = b"KDMV\x01\0\0\0".to_vec();
    vmdk.resize(4096, 0);
    let e = run(&request(&server.serve("/v", vmdk, ranged())), &c.target).unwrap_err();
    assert_eq!(e.to_string(), "Bad format image, expected: qcow2, raw, ova.");
    let mut ext4 = vec![0u8; 1 << 20];
    ext4[1080] = 0x53;
    ext4[1081] = 0xef;
    let e = run(&request(&server.serve("/fs", ext4, ranged())), &c.target).unwrap_err();
    assert_eq!(
        e.to_string(),
        "image provided format is not of type raw because no partition table was found. It seems to contain: an ext2/3/4 filesystem"
    );
    assert!(untouched(&c.target));
}

#[test]
fn image_larger_than_target() {
    let c = case();
    let server = Server::start();
    let big = disk_image(DISK + 4096, 5);
    let shown = c.target.display().to_string();
    let e = run(&request(&server.serve("/raw", big.clone(), ranged())), &c.target).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("image provided has a size of {} bytes which is larger than {shown} of {DISK} bytes", DISK + 4096)
    );
    assert!(untouched(&c.target), "refused before writing");

    // qcow2: its virtual size decides, before anything is written.
    let raw = c.dir.path().join("big.raw");
    let q = c.dir.path().join("big.qcow2");
    std::fs::write(&raw, &big).unwrap();
    to_qcow2(&raw, &q, &[]);
    let e = run(&request(&server.serve("/q", std::fs::read(&q).unwrap(), ranged())), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ImageTooLarge);
    assert!(untouched(&c.target));

    // Compressed: only found out while streaming; then wiped.
    let gz = Command::new("gzip").arg("-c").arg(&raw).output().unwrap().stdout;
    let e = run(&request(&server.serve("/gz", gz, ranged())), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ImageTooLarge);
    assert!(e.to_string().contains("or more bytes"), "{e}");
    assert!(ends_wiped(&c.target));
}

#[test]
fn corrupt_compressed_stream_is_a_clear_error() {
    let c = case();
    let server = Server::start();
    let raw = c.dir.path().join("a.raw");
    std::fs::write(&raw, &c.image).unwrap();
    let mut gz = Command::new("gzip").arg("-c").arg(&raw).output().unwrap().stdout;
    let mid = gz.len() / 2;
    gz[mid..mid + 64].fill(0x42);
    let e = run(&request(&server.serve("/gz", gz, ranged())), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::CorruptImage, "{e}");
    assert!(e.to_string().starts_with("corrupt gzip image"), "{e}");
    assert!(ends_wiped(&c.target));
}

#[test]
fn abort_leaves_nothing_bootable() {
    let c = case();
    let server = Server::start();
    let req = request(&server.serve("/img", c.image.clone(), ranged()));
    let t = DiskTarget::open(&c.target, false).unwrap();
    let progress = Arc::new(Progress::default());
    progress.request_abort();
    let e = deploy(&req, &t, &progress, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Aborted);
    assert!(ends_wiped(&c.target));
}

#[test]
fn finishing_steps_run_on_the_held_back_mib_before_commit() {
    let c = case();
    let server = Server::start();
    let req = request(&server.serve("/img", c.image.clone(), ranged()));
    let t = DiskTarget::open(&c.target, false).unwrap();
    let target = c.target.clone();
    let mut finish = |w: &mut byoi_agent::sink::DiskWriter<'_>| {
        // The disk still has nothing bootable while finishing runs.
        assert!(std::fs::read(&target).unwrap()[..1 << 20].iter().all(|&b| b == 0));
        assert_eq!(w.held()[510..512], [0x55, 0xaa]);
        w.held()[440..444].copy_from_slice(b"BYOI");
        Ok(())
    };
    deploy(&req, &t, &Arc::new(Progress::default()), Some(&mut finish)).unwrap();
    let got = std::fs::read(&c.target).unwrap();
    assert_eq!(&got[440..444], b"BYOI");
    assert_eq!(got[4096..IMAGE], c.image[4096..]);
}

#[test]
fn a_stalled_server_hits_the_read_timeout_and_is_resumed() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { cut_after: Some(1_000_000), cuts: 1, stall: Some(Duration::from_secs(3)), ..ranged() };
    let mut req = request(&server.serve("/img", c.image.clone(), b));
    req.source.read_timeout = Duration::from_millis(300);
    run(&req, &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "after a stall");
    let seen = server.requests("/img");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers.get("range").map(String::as_str), Some("bytes=1000000-"));
}

/// A disk whose writes fail past some offset, like a dying drive; the
/// wipes of both ends still succeed.
struct FailingDisk {
    inner: DiskTarget,
    fail_from: u64,
}

impl byoi_agent::sink::Target for FailingDisk {
    fn path(&self) -> &str {
        self.inner.path()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if offset + buf.len() as u64 > self.fail_from && offset < (self.inner.size() - (1 << 20)) && offset != 0 {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.zero_range(offset, len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn reread_partitions(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_use_ovh_wording_and_wipe() {
    use byoi_agent::sink::Target;
    let c = case();
    let server = Server::start();
    let raw = c.dir.path().join("a.raw");
    let q = c.dir.path().join("a.qcow2");
    std::fs::write(&raw, &c.image).unwrap();
    to_qcow2(&raw, &q, &[]);
    for (path, data, format) in [("/raw", c.image.clone(), "raw"), ("/q", std::fs::read(&q).unwrap(), "qcow2")] {
        let req = request(&server.serve(path, data, ranged()));
        let disk = FailingDisk { inner: DiskTarget::open(&c.target, false).unwrap(), fail_from: 3 << 20 };
        let e = deploy(&req, &disk, &Arc::new(Progress::default()), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::WriteFailed);
        assert_eq!(e.to_string(), format!("Can't write {format} on disk. (Input/output error (os error 5))"));
        assert!(ends_wiped(&c.target));
        let _ = disk.size();
    }
}

#[test]
fn body_without_length_cut_short_is_resumed_not_truncated() {
    let c = case();
    let server = Server::start();
    let b = Behaviour { no_length: true, cut_after: Some(3_000_000), cuts: 1, ..ranged() };
    run(&request(&server.serve("/img", c.image.clone(), b)), &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "close-delimited, cut");
    let statuses: Vec<u16> = server.requests("/img").iter().map(|s| s.status).collect();
    // The cut, the rest, then the check that nothing follows.
    assert_eq!(statuses, [200, 206, 416]);
}

#[test]
fn credentials_stay_with_the_origin_they_were_given_for() {
    let c = case();
    let (a, b) = (Server::start(), Server::start());
    let beh = Behaviour { cut_after: Some(1_000_000), cuts: 1, ..ranged() };
    let target_url = b.serve("/img", c.image.clone(), beh);
    let mut req = request(&a.serve("/img", vec![], Behaviour { redirect_to: Some(target_url), ..Default::default() }));
    req.source.headers = vec![("Authorization".into(), "Bearer s3cret".into())];
    run(&req, &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "redirected");
    assert_eq!(a.requests("/img")[0].headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
    let at_b = b.requests("/img");
    assert_eq!(at_b.len(), 2, "the cut was resumed at the other origin");
    assert!(at_b.iter().all(|s| !s.headers.contains_key("authorization")), "{at_b:?}");
}

#[test]
fn no_operator_header_follows_a_cross_origin_redirect() {
    let c = case();
    // Another port is another origin (RFC 6454).
    let (a, b) = (Server::start(), Server::start());
    let target_url = b.serve("/img", c.image.clone(), ranged());
    let mut req = request(&a.serve("/img", vec![], Behaviour { redirect_to: Some(target_url), ..Default::default() }));
    let secrets = [("Authorization", "Bearer s3cret"), ("X-Api-Key", "k3y"), ("Cookie", "s=1"), ("X-Other", "o")];
    req.source.headers = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    run(&req, &c.target).unwrap();
    assert_prefix_eq(&c.target, &c.image, "redirected");
    let at_a = &a.requests("/img")[0];
    for (k, v) in secrets {
        assert_eq!(at_a.headers.get(&k.to_ascii_lowercase()).map(String::as_str), Some(v), "{k} at the origin");
    }
    let at_b = b.requests("/img");
    assert!(!at_b.is_empty());
    for seen in at_b {
        for (k, _) in secrets {
            assert!(!seen.headers.contains_key(&k.to_ascii_lowercase()), "{k} leaked to {seen:?}");
        }
    }
}

/// A URL with credentials, a presigned query and a fragment: none of them
/// may appear in any message.
fn secret_url(server: &Server, path: &str) -> String {
    server.url(path).replace("http://", "http://alice:pa55word@") + "?X-Amz-Signature=5ecret&t=1#fr4g"
}

fn assert_redacted(e: &DeployError, server: &Server, path: &str) {
    let shown = format!("{e} / {e:?}");
    for secret in ["alice", "pa55word", "5ecret", "X-Amz", "fr4g"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains(&server.url(path)), "the URL is still named: {shown}");
}

#[test]
fn messages_never_carry_credentials_or_queries() {
    let c = case();
    let server = Server::start();
    // Not found: a download error.
    let e = run(&request(&secret_url(&server, "/missing")), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::DownloadFailed);
    assert_redacted(&e, &server, "/missing");
    // Cut without Range support: a resume error.
    server.serve("/cut", c.image.clone(), Behaviour { cut_after: Some(2_000_000), cuts: 1, ..Default::default() });
    let e = run(&request(&secret_url(&server, "/cut")), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResumeFailed);
    assert_redacted(&e, &server, "/cut");
    // Retries exhausted.
    server.serve("/down", vec![], Behaviour { fail_first: vec![503; 10], ..Default::default() });
    let e = run(&request(&secret_url(&server, "/down")), &c.target).unwrap_err();
    assert_redacted(&e, &server, "/down");
    // A redirect to a signed URL that fails: neither URL's secrets show.
    let signed = server.url("/gone") + "?sig=5ecret";
    server.serve("/link", vec![], Behaviour { redirect_to: Some(signed), ..Default::default() });
    let e = run(&request(&secret_url(&server, "/link")), &c.target).unwrap_err();
    assert_redacted(&e, &server, "/link");
    // A URL the agent cannot even parse.
    let e = run(&request("http://alice:pa55word@[::1/x?X-Amz-Signature=5ecret"), &c.target).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("pa55word") && !format!("{e}").contains("5ecret"), "{e}");
    let e = run(&request("alice:pa55word@host/x"), &c.target).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("pa55word"), "{e}");
}

fn trickling() -> Behaviour {
    // 5 KB/s, in 100-byte pieces.
    Behaviour { trickle: Some((100, Duration::from_millis(20))), ..ranged() }
}

#[test]
fn a_trickling_server_is_resumed_then_failed_clearly() {
    let c = case();
    let server = Server::start();
    let mut req = request(&server.serve("/img", c.image.clone(), trickling()));
    req.source.min_rate = 100_000;
    req.source.rate_window = Duration::from_millis(400);
    req.source.attempts = 2;
    let e = run(&req, &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResumeFailed, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("2 attempts to resume failed"), "{msg}");
    assert!(msg.contains("less than the minimum of 100000 bytes per second"), "{msg}");
    let seen = server.requests("/img");
    assert_eq!(seen.len(), 3, "the first GET, then two resumes: {seen:?}");
    assert!(seen[1].headers.get("range").is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"), "{seen:?}");
}

#[test]
fn a_steady_but_endless_download_meets_the_deadline() {
    let c = case();
    let server = Server::start();
    let mut req = request(&server.serve("/img", c.image.clone(), trickling()));
    req.source.min_rate = 0;
    req.source.deadline = Duration::from_millis(700);
    let e = run(&req, &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::DownloadFailed, "{e}");
    assert!(e.to_string().contains("did not finish within its deadline of 700ms"), "{e}");
    assert!(untouched(&c.target) || ends_wiped(&c.target));
}

#[test]
fn headers_the_downloader_owns_are_refused() {
    let c = case();
    let server = Server::start();
    let mut req = request(&server.serve("/img", c.image.clone(), ranged()));
    req.source.headers = vec![("Range".into(), "bytes=0-10".into())];
    let e = run(&req, &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(e.to_string().contains("Bad httpHeader \"Range\": the image download sets it itself."), "{e}");
}

#[test]
fn xz_needing_too_much_memory_is_refused_before_writing() {
    let c = case();
    let raw = c.dir.path().join("a.raw");
    std::fs::write(&raw, &c.image).unwrap();
    let xz = Command::new("xz").args(["-c", "--lzma2=dict=128MiB"]).arg(&raw).output().unwrap().stdout;
    let server = Server::start();
    let e = run(&request(&server.serve("/xz", xz, ranged())), &c.target).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnsupportedImage, "{e}");
    assert!(e.to_string().starts_with("unsupported xz image: decompressing it needs more memory"), "{e}");
    assert!(untouched(&c.target));
}

#[test]
fn a_panic_in_the_pipeline_still_wipes() {
    let c = case();
    let server = Server::start();
    let req = request(&server.serve("/img", c.image.clone(), ranged()));
    let t = DiskTarget::open(&c.target, false).unwrap();
    let mut finish = |_: &mut byoi_agent::sink::DiskWriter<'_>| -> byoi_agent::Result<()> { panic!("finisher bug") };
    let e = deploy(&req, &t, &Arc::new(Progress::default()), Some(&mut finish)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(e.to_string().contains("finisher bug"), "{e}");
    assert!(ends_wiped(&c.target));
}
