//! A data directory written by byoi 0.1.0 (`fixtures/v0.1.0.sql`: that
//! release's SQLite database, dumped after it registered five servers and
//! ran deployments to done, to error, through a DELETE and into the middle
//! of a download) opens with its servers and history intact, and its
//! running deployment goes on.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use byoi_controller::db::{token_hash, Db};
use byoi_controller::routes::netboot::{BootLimiter, BootRate};
use byoi_controller::routes::{self, Config};
use byoi_wire::{BootTarget, ErrorCode, Stage, Status};
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    let r = router.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())))
}

/// The token of srv-running's agent, working across the upgrade.
const RUNNING_AGENT: &str = "running-agent-token";

#[tokio::test]
async fn a_0_1_0_data_directory_opens_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("byoi.sqlite");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(include_str!("fixtures/v0.1.0.sql")).unwrap();
    // srv-running's agent holds a token whose plaintext the dump cannot
    // have: give it one the test knows.
    c.execute("UPDATE agent_tokens SET hash = ?1 WHERE server = 'srv-running'", [token_hash(RUNNING_AGENT)]).unwrap();
    drop(c);

    let db = Db::open(&path, Duration::from_secs(120)).await.unwrap();
    assert_eq!(db.schema_version().await.unwrap(), 9);
    let servers: Vec<_> = db.fleet().await.unwrap().into_iter().map(|(s, _)| s).collect();
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["srv-cancel", "srv-done", "srv-error", "srv-idle", "srv-running"]);
    let idle = &servers[3];
    assert_eq!((idle.power.kind(), idle.macs.as_slice()), ("ipmi", &["52:54:00:00:00:05".to_owned()][..]));
    assert_eq!(servers[1].boot_target, BootTarget::Local);
    assert_eq!(servers[0].boot_target, BootTarget::Rescue);

    let done = db.history("srv-done").await.unwrap();
    assert_eq!(done.len(), 1);
    let d = &done[0];
    assert_eq!((d.status, d.stage, d.current), (Status::Done, Stage::Rebooting, true));
    assert_eq!(d.message, "deployed 4194304 bytes (qcow2) in 1.0 s");
    assert_eq!((d.bytes_done, d.bytes_total), (1 << 20, Some(4 << 20)));
    let spec = &d.request.spec;
    assert_eq!(
        spec.checksum.as_ref().unwrap().to_string(),
        format!("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
    );
    assert_eq!(spec.headers.len(), 2);
    let cd = spec.configdrive.as_ref().unwrap();
    assert_eq!(cd.user_data.as_ref().unwrap().0, b"#cloud-config\npackages: [htop]\n");
    assert_eq!(cd.ssh_keys, ["ssh-ed25519 AAAAC3Nza test@x"]);
    assert_eq!(d.request.description.as_deref(), Some("debian 12"));

    let errors = db.history("srv-error").await.unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!((errors[1].status, errors[1].error_code), (Status::Error, Some(ErrorCode::ChecksumMismatch)));
    assert_eq!(errors[0].request.spec.ova_disk, Some(byoi_wire::spec::OvaDisk::Index(2)));
    let cancelled = &db.history("srv-cancel").await.unwrap()[0];
    assert_eq!((cancelled.error_code, cancelled.current), (Some(ErrorCode::Aborted), false));

    // Through the API: the same, and the running deployment goes on.
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), f).unwrap();
    }
    let cfg = Config {
        api_token: "tok".into(),
        artifacts,
        public_url: None,
        agent_urls: Vec::new(),
        scheme: "http",
        listeners: routes::Listeners::One,
        agent_timeout: Duration::from_secs(120),
        boot_timeout: Duration::from_secs(900),
        stall_timeout: Duration::from_secs(900),
        boot_limiter: Arc::new(BootLimiter::new(BootRate { per_mac: 1000, per_source: 100_000 })),
        power: Default::default(),
        metrics_token: None,
        enlist: None,
    };
    let router = routes::router(Arc::new(routes::App::new(db, cfg)));
    let (s, v) = call(&router, Method::GET, "/dedicated/server/srv-done/bringYourOwnImage", "tok", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["checksum"], "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    assert_eq!(v["description"], "debian 12");
    let (_, v) = call(&router, Method::GET, "/dedicated/server/srv-done", "tok", None).await;
    assert_eq!(v["deployments"][0]["url"], "https://images.example/debian-12.qcow2?…");
    assert_eq!(v["firmware"], "uefi");

    let (_, v) = call(&router, Method::GET, "/dedicated/server/srv-running/bringYourOwnImage", "tok", None).await;
    assert_eq!((v["status"].as_str(), v["stage"].as_str()), (Some("doing"), Some("downloading")));
    // No boot is expected mid-deployment: a script fetched now mints nothing.
    let (_, script) = call(&router, Method::GET, "/boot/52:54:00:00:00:04", "", None).await;
    let script = script.as_str().unwrap().to_owned();
    assert!(script.contains("nothing to do for srv-running") && !script.contains("byoi.token"), "{script}");
    // The agent that was working before the upgrade still holds its boot
    // and its job: it reports on, and its reports count.
    let progress = json!({"deploymentId": 5, "stage": "writing", "bytesDone": 4 << 20, "bytesTotal": 4 << 20});
    let (_, r) = call(&router, Method::POST, "/agent/v1/progress", RUNNING_AGENT, Some(progress)).await;
    assert_eq!(r["action"], "continue", "{r}");
    let result = json!({"deploymentId": 5, "status": "done", "message": "deployed"});
    let (_, r) = call(&router, Method::POST, "/agent/v1/result", RUNNING_AGENT, Some(result)).await;
    assert_eq!(r["action"], "reboot");
    let (_, v) = call(&router, Method::GET, "/dedicated/server/srv-running/bringYourOwnImage", "tok", None).await;
    assert_eq!(v["status"], "done");

    // srv-error's power is 0.1's `command` with an argv the API gave
    // (`true`): it loads, shows its kind, and is never run; a deployment
    // fails at its power cycle, telling the operator what to do.
    let (_, v) = call(&router, Method::GET, "/dedicated/server/srv-error", "tok", None).await;
    assert_eq!(v["power"], json!({"kind": "command"}));
    let post = json!({"URL": "http://img.example/c.raw"});
    let (s, v) = call(&router, Method::POST, "/dedicated/server/srv-error/bringYourOwnImage", "tok", Some(post)).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("srv-error's command power driver was registered with an argv"), "{message}");
    assert!(message.contains("register srv-error again"), "{message}");
}

#[tokio::test]
async fn the_schema_allows_one_running_deployment_per_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("byoi.sqlite");
    Db::open(&path, Duration::from_secs(120)).await.unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "INSERT INTO servers (name, power, kernel_args, boot_target, created_at) VALUES ('s', '{\"kind\":\"manual\"}', '[]', 'deploy', 0);
         INSERT INTO deployments (server, request, status, stage, message, created_at, updated_at) VALUES ('s', '{}', 'doing', 'downloading', 'x', 0, 0);
         INSERT INTO deployments (server, request, status, stage, message, created_at, updated_at) VALUES ('s', '{}', 'error', 'downloading', 'x', 0, 0);",
    )
    .unwrap();
    let e = c
        .execute(
            "INSERT INTO deployments (server, request, status, stage, message, created_at, updated_at) VALUES ('s', '{}', 'doing', 'downloading', 'x', 0, 0)",
            [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("UNIQUE constraint failed"), "{e}");
}

/// A database a newer release migrated is refused, untouched, with a
/// message saying what to do (the rollback the README describes).
#[tokio::test]
async fn a_newer_release_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("byoi.sqlite");
    drop(Db::open(&path, Duration::from_secs(120)).await.unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA user_version = 99; CREATE TABLE from_the_future (x);").unwrap();
    drop(c);
    let Err(err) = Db::open(&path, Duration::from_secs(120)).await else { panic!("a newer schema opens") };
    let msg = err.to_string();
    assert!(msg.contains("schema version 99") && msg.contains("byoi db backup"), "{msg}");
    let c = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), 99);
    c.query_row("SELECT count(*) FROM from_the_future", [], |r| r.get::<_, i64>(0)).unwrap();
}
