//! `byoi-agent deploy` as a user runs it: exit codes, `--json` lines,
//! HTTPS with `--ca-file`.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use byoi_testbed::private_ca;
use byoi_wire::{ErrorCode, Event, Status};
use support::ova::{ovf, tar, Disk, Mf};
use support::{assert_prefix_eq, disk_image, junk_target, qemu_raw, run, Behaviour, Server};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_byoi-agent")).args(args).output().unwrap()
}

fn events(out: &Output) -> Vec<Event> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event: {l:?}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2() {
    let out = agent(&["deploy", "--url", "http://127.0.0.1:1/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = agent(&["deploy", "--url", "http://x/y", "--target", "/tmp/t", "--checksum", "crc32:00"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Bad checkSumType, expected: md5, sha1, sha256, sha512."), "{}", stderr(&out));
    let out = agent(&["deploy", "--url", "http://x/y", "--target", "/tmp/t", "--header", "no colon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_progress_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let target = junk_target(dir.path(), 8 << 20);
    let image = disk_image(4 << 20, 1);
    let server = Server::start();
    let url = server.serve("/img", image.clone(), Behaviour { ranges: true, ..Default::default() });
    let t = target.to_str().unwrap();
    let out = agent(&["deploy", "--url", &url, "--target", t, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    assert!(ev.len() >= 2, "{ev:?}");
    assert!(matches!(ev[0], Event::Progress { bytes_total: Some(n), .. } if n == image.len() as u64), "{ev:?}");
    match ev.last().unwrap() {
        Event::Result { status: Status::Done, code: None, message } => {
            assert!(message.contains("deployed"), "{message}")
        }
        other => panic!("last line {other:?}"),
    }
    assert_prefix_eq(&target, &image, "cli");

    let missing = server.url("/nope");
    let out = agent(&["deploy", "--url", &missing, "--target", t, "--json", "--retries", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let msg = format!("Could not download image located: {missing} (HTTP 404 Not Found)");
    assert_eq!(stderr(&out).lines().last().unwrap(), format!("error: {msg}"));
    match events(&out).last().unwrap() {
        Event::Result { status: Status::Error, code: Some(ErrorCode::DownloadFailed), message } => {
            assert_eq!(*message, msg)
        }
        other => panic!("last line {other:?}"),
    }
}

#[test]
fn plain_output_names_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let target = junk_target(dir.path(), 8 << 20);
    let img = dir.path().join("disk.raw");
    std::fs::write(&img, disk_image(2 << 20, 2)).unwrap();
    let url = format!("file://{}", img.display());
    let out = agent(&["deploy", "--url", &url, "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("deployed {url} (raw, 2097152 bytes) to ")), "{stdout}");
}

#[test]
fn ova_disk_choice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut members = Vec::new();
    for (i, name) in ["system.vmdk", "data.vmdk"].into_iter().enumerate() {
        std::fs::write(d.join("src.raw"), disk_image((2 + i) << 20, 10 + i as u64)).unwrap();
        run(Command::new("qemu-img").current_dir(d).args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "src.raw",
            name,
        ]));
        members.push((name, std::fs::read(d.join(name)).unwrap()));
    }
    let disks = [
        Disk { id: "system", file: "system.vmdk", capacity: 2 << 20 },
        Disk { id: "data", file: "data.vmdk", capacity: 3 << 20 },
    ];
    members.insert(0, ("vm.ovf", ovf(&disks, &[]).into_bytes()));
    let ova = tar(d, &members, Mf::AfterOvf("SHA256"), "ustar");
    std::fs::write(d.join("vm.ova"), ova).unwrap();
    let url = format!("file://{}", d.join("vm.ova").display());
    let target = junk_target(d, 8 << 20);
    let t = target.to_str().unwrap();

    let out = agent(&["deploy", "--url", &url, "--target", t, "--type", "ova"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the OVA holds 2 disks: 1 system (system.vmdk, 2.0 MiB), 2 data"),
        "{}",
        stderr(&out)
    );

    let out = agent(&["deploy", "--url", &url, "--target", t, "--type", "ova", "--ova-disk", "data"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("deployed {url} (ova, streamOptimized vmdk, 3145728 bytes) to ");
    assert!(stdout.starts_with(&want), "{stdout}");
    assert!(stdout.contains("; manifest verified for data.vmdk, system.vmdk, vm.ovf"), "{stdout}");
    assert_prefix_eq(&target, &qemu_raw(&d.join("data.vmdk"), d), "--ova-disk data");
}

#[test]
fn https_with_ca_file_and_refusal_without() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path(), "DNS:localhost,IP:127.0.0.1").unwrap();
    let server = Server::start_tls(&cert, &key);
    let image = disk_image(3 << 20, 4);
    let url = server.serve("/img", image.clone(), Behaviour { ranges: true, ..Default::default() });
    assert!(url.starts_with("https://"));
    let target = junk_target(dir.path(), 8 << 20);
    let t = target.to_str().unwrap();
    let out = agent(&["deploy", "--url", &url, "--target", t, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_prefix_eq(&target, &image, "https");

    let out = agent(&["deploy", "--url", &url, "--target", t, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains("after 8 attempts"), "a certificate error must not be retried: {err}");
}

#[test]
fn an_https_image_is_never_fetched_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path(), "DNS:localhost,IP:127.0.0.1").unwrap();
    let plain = Server::start();
    let plain_url = plain.serve("/img", disk_image(3 << 20, 4), Behaviour::default());
    let tls = Server::start_tls(&cert, &key);
    let url = tls.serve("/img", vec![], Behaviour { redirect_to: Some(plain_url.clone()), ..Default::default() });
    let target = junk_target(dir.path(), 8 << 20);
    let args = ["deploy", "--url", &url, "--target", target.to_str().unwrap(), "--ca-file", ca.to_str().unwrap()];
    let out = agent(&[&args[..], &["--header", "X-Api-Key: k3y"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("refusing a redirect from HTTPS to plain HTTP ({plain_url})")), "{err}");
    assert!(plain.requests("/img").is_empty(), "the plain HTTP server was asked");
    assert_eq!(tls.requests("/img")[0].headers.get("x-api-key").map(String::as_str), Some("k3y"));
}
