//! The controller in-process, with a temp SQLite: every endpoint, every
//! validation message, both token kinds, restarts, a simulated agent
//! driving deployments to done, to error and through an abort, and 100
//! servers at once.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use byoi_controller::db::{Database, Db, Lease};
use byoi_controller::power::PowerConfig;
use byoi_controller::routes::discovered::Enlistment;
use byoi_controller::routes::netboot::{BootLimiter, BootRate};
use byoi_controller::routes::{self, AppState, Config};
use byoi_wire::agent::{Disk, Hello, Inventory, JobResponse, Nic};
use byoi_wire::BootMode;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, RANGE};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The controller's router, driven without a socket.
struct App {
    state: AppState,
    router: axum::Router,
}

impl App {
    async fn handle(&self, req: Request) -> Response {
        let mut b = http::Request::builder().method(req.method).uri(req.path);
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        let r = self.router.clone().oneshot(b.body(axum::body::Body::from(req.body)).unwrap()).await.unwrap();
        let (parts, body) = r.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        Response { status: parts.status, headers: parts.headers, body }
    }

    async fn expire_silent_agents(&self) {
        self.state.expire_silent_agents().await;
    }
}

/// A request to [`App::handle`].
struct Request {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn new(method: Method, path: &str, body: impl Into<Bytes>) -> Request {
        Request { method, path: path.to_owned(), headers: HeaderMap::new(), body: body.into() }
    }

    fn header(mut self, name: http::header::HeaderName, value: &str) -> Request {
        self.headers.insert(name, value.parse().unwrap());
        self
    }
}

/// What [`App::handle`] answered.
#[derive(Debug)]
struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Response {
    fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

const TOKEN: &str = "operator-token";

async fn app_in(dir: &Path, timeout: Duration) -> App {
    app_with_boot_timeout(dir, timeout, Duration::from_secs(600)).await
}

async fn call(app: &App, method: Method, path: &str, body: Option<Value>) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::new(method, path, body)
        .header(AUTHORIZATION, &format!("Bearer {TOKEN}"))
        .header(HOST, "10.0.2.2:8080");
    app.handle(req).await
}

async fn agent(app: &App, token: &str, method: Method, what: &str, body: Option<Value>) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    app.handle(
        Request::new(method, &format!("/agent/v1/{what}"), body).header(AUTHORIZATION, &format!("Bearer {token}")),
    )
    .await
}

async fn add_server(app: &App, name: &str, mac: &str, power: Value) {
    let r = call(
        app,
        Method::POST,
        "/dedicated/server",
        Some(json!({"serviceName": name, "macs": [mac], "power": power, "kernelArgs": ["console=ttyS0"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json_body());
}

/// Netboots: fetches the per-MAC script and returns (script, agent token).
async fn netboot(app: &App, mac: &str) -> (String, Option<String>) {
    let r = app.handle(Request::new(Method::GET, &format!("/boot/{mac}"), "").header(HOST, "10.0.2.2:8080")).await;
    assert_eq!(r.status, StatusCode::OK);
    let script = String::from_utf8(r.body.to_vec()).unwrap();
    let token = script.split("byoi.token=").nth(1).map(|t| t.split_whitespace().next().unwrap().to_owned());
    (script, token)
}

fn inventory() -> Value {
    let disk = |name: &str, size: u64, serial: &str, model: &str| Disk {
        name: name.into(),
        size_bytes: size,
        model: model.into(),
        serial: serial.into(),
        wwn: format!("wwn-{serial}"),
        rotational: false,
        transport: "nvme".into(),
        logical_sector_size: 512,
    };
    let inv = Inventory {
        firmware: BootMode::Uefi,
        memory_bytes: 8 << 30,
        disks: vec![
            disk("nvme1n1", 2 << 40, "BIG1", "Big"),
            disk("nvme0n1", 1 << 40, "S2", "Small"),
            disk("nvme2n1", 1 << 40, "S1", "Small"),
        ],
        nics: vec![Nic { name: "eth0".into(), mac: "52:54:00:00:00:01".into(), link: true, speed_mbps: Some(10000) }],
    };
    serde_json::to_value(Hello { inventory: inv, version: "test".into() }).unwrap()
}

/// Registers s1 (manual power), posts `body`, netboots it, says hello and
/// fetches the job: returns (agent token, deployment id).
async fn running_job(app: &App, body: Value) -> (String, i64) {
    let token = claimed(app, body).await;
    let job: JobResponse = serde_json::from_slice(&agent(app, &token, Method::GET, "job", None).await.body).unwrap();
    (token, job.job.unwrap().deployment_id)
}

/// Registers s1 (manual power), posts `body`, netboots it and says hello:
/// returns the agent token that claimed the boot.
async fn claimed(app: &App, body: Value) -> String {
    add_server(app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let r = call(app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    let (_, token) = netboot(app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    assert_eq!(action(&agent(app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    token
}

fn action(r: &Response) -> String {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    r.json_body()["action"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokens_are_required_and_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let r = app.handle(Request::new(Method::GET, "/dedicated/server", "")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.handle(Request::new(Method::GET, "/dedicated/server", "").header(AUTHORIZATION, "Bearer nope")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The operator token is no agent token, and the other way round.
    assert_eq!(agent(&app, TOKEN, Method::POST, "heartbeat", None).await.status, StatusCode::UNAUTHORIZED);
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://img/x.qcow2"})))
        .await;
    let (_, token) = netboot(&app, "52-54-00-00-00-01").await;
    let token = token.unwrap();
    let r = app
        .handle(Request::new(Method::GET, "/dedicated/server", "").header(AUTHORIZATION, &format!("Bearer {token}")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A second fetch within the boot (iPXE retrying) mints another token;
    // a token must say hello before anything else.
    let (_, newer) = netboot(&app, "52:54:00:00:00:01").await;
    let newer = newer.unwrap();
    let r = agent(&app, &token, Method::POST, "heartbeat", None).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::FORBIDDEN, &json!("reboot")));
    assert_eq!(r.json_body()["message"], "this agent has not said hello");
    assert_eq!(action(&agent(&app, &newer, Method::POST, "hello", Some(inventory())).await), "continue");
    assert_eq!(action(&agent(&app, &newer, Method::POST, "heartbeat", None).await), "continue");
    // A bad body is an agent error too: it says what to do.
    let r = agent(&app, &newer, Method::POST, "progress", Some(json!({"bogus": 1}))).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::BAD_REQUEST, &json!("wait")));
}

#[tokio::test]
async fn servers_endpoints_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let cases = [
        (json!({"serviceName": "s1", "macs": ["52:54:00:00:00:02"]}), StatusCode::CONFLICT, "server s1 already exists"),
        (
            json!({"serviceName": "s2", "macs": ["52-54-00-00-00-01"]}),
            StatusCode::CONFLICT,
            "MAC 52:54:00:00:00:01 already belongs to s1",
        ),
        (json!({"serviceName": "s2", "macs": ["zz"]}), StatusCode::BAD_REQUEST, "Bad MAC address \"zz\""),
        (
            json!({"serviceName": "s/2", "macs": ["52:54:00:00:00:02"]}),
            StatusCode::BAD_REQUEST,
            "Bad serviceName \"s/2\": letters, digits, '-', '_' and '.', at most 128, not '.' or '..', not starting with '-'",
        ),
        (json!({"serviceName": "s2", "macs": []}), StatusCode::BAD_REQUEST, "A server needs at least one MAC address"),
        (
            json!({"serviceName": "s2", "macs": ["52:54:00:00:00:02"], "power": {"kind": "magic"}}),
            StatusCode::BAD_REQUEST,
            "bad power settings",
        ),
    ];
    for (body, status, msg) in cases {
        let r = call(&app, Method::POST, "/dedicated/server", Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}");
        assert!(r.json_body()["message"].as_str().unwrap().starts_with(msg), "{body}: {:?}", r.json_body());
    }
    assert_eq!(call(&app, Method::GET, "/dedicated/server", None).await.json_body(), json!(["s1"]));
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(s["bootTarget"], "local");
    assert_eq!(s["macs"], json!(["52:54:00:00:00:01"]));
    let r = call(&app, Method::GET, "/dedicated/server/nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json_body()["message"], "The requested object (serviceName = nope) does not exist");
    let r = call(&app, Method::GET, "/dedicated/server/s1/specifications/hardware", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&app, Method::PATCH, "/dedicated/server/s1", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn byoi_validation_in_ovh_words() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let p = "/dedicated/server/s1/bringYourOwnImage";
    let cases = [
        (
            json!({"URL": "http://x/i", "checkSum": "00", "checkSumType": "crc"}),
            "Bad checkSumType, expected: md5, sha1, sha256, sha512.",
        ),
        (json!({"URL": "http://x/i", "checkSum": "00"}), "Please provide checkSum AND checkSumType or none of them"),
        (json!({"URL": "http://x/i", "type": "vhd"}), "Bad format image, expected: qcow2, raw, ova."),
        (json!({"URL": "http://x/i", "type": "vmdk"}), "Bad format image, expected: qcow2, raw, ova."),
        (json!({"URL": "http://x/i", "type": "raw", "ovaDisk": 2}), "ovaDisk is only for images of type ova."),
        (json!({"URL": "http://x/i", "type": "ova", "ovaDisk": 0}), "Bad ovaDisk, disks are numbered from 1."),
        (json!({"URL": "http://x/i", "ovaDisk": ""}), "Bad ovaDisk \"\"."),
        (
            json!({"URL": "http://x/i", "ovaDisk": -1}),
            "Invalid JSON body: invalid value: integer `-1`, expected a disk number from 1",
        ),
        (json!({"URL": "file:///etc/passwd"}), "Bad URL \"file:///etc/passwd\", expected an http:// or https:// URL."),
        (
            json!({"URL": "http://x/i", "checkSum": "00", "checkSumType": "md5"}),
            "Bad checkSum, expected 32 hexadecimal digits for md5.",
        ),
        (json!({"URL": "http://x/i", "configdrive": {"enable": true, "userDataBase64": "!!"}}), "Bad userDataBase64"),
        (json!({"URL": "http://x/i", "unknown": 1}), "Invalid JSON body: unknown field `unknown`"),
    ];
    for (body, msg) in cases {
        let r = call(&app, Method::POST, p, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.json_body()["message"].as_str().unwrap().starts_with(msg), "{body}: {:?}", r.json_body());
    }
    let r =
        app.handle(Request::new(Method::POST, p, "{not json").header(AUTHORIZATION, &format!("Bearer {TOKEN}"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json_body()["message"].as_str().unwrap().starts_with("Invalid JSON body"));
    let huge = json!({"URL": "http://x/i", "configdrive": {"enable": true, "userData": "x".repeat((16 << 20) + 1)}});
    let r = call(&app, Method::POST, p, Some(huge)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json_body()["message"], "userData is larger than 16 MiB.");
    let r = app
        .handle(Request::new(Method::POST, p, vec![b' '; 25 << 20]).header(AUTHORIZATION, &format!("Bearer {TOKEN}")))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(call(&app, Method::GET, p, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&app, Method::POST, "/dedicated/server/nope/bringYourOwnImage", Some(json!({"URL": "http://x/i"})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_simulated_agent_drives_a_deployment_to_done() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let log = dir.path().join("power.log");
    let power = json!({"kind": "command", "name": "log"});
    add_server(&app, "s1", "52:54:00:00:00:01", power).await;
    let (script, token) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("sanboot"), "a server with nothing to do boots its disk: {script}");
    assert!(token.is_none());

    let body = json!({"URL": "https://img.example/debian.qcow2", "checkSum": "AB".repeat(32), "checkSumType": "sha256", "type": "qcow2", "description": "debian 12",
        "diskGroupId": 1, "httpHeader": {"Authorization": "Bearer x"}, "efiBootloaderPath": "\\EFI\\debian\\shimx64.efi",
        "configdrive": {"enable": true, "hostname": "web1", "sshKey": "ssh-ed25519 AAAA", "userData": "#cloud-config\n", "userMetadatas": {"role": "db"}}});
    let r = call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    let st = r.json_body();
    assert_eq!(
        (st["status"].as_str(), st["message"].as_str(), st["stage"].as_str()),
        (Some("doing"), Some("starting"), Some("waiting-for-agent"))
    );
    assert_eq!(st["checksum"], "ab".repeat(32));
    assert_eq!(st["description"], "debian 12");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "cycle\n", "POST power-cycles the server");
    let r = call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(body)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let (script, token) = netboot(&app, "52-54-00-00-00-01").await;
    assert!(
        script.contains(
            "kernel http://10.0.2.2:8080/artifacts/vmlinuz initrd=initramfs.img byoi.controller=http://10.0.2.2:8080"
        ),
        "{script}"
    );
    assert!(script.contains("byoi.mode=deploy") && script.contains(" console=ttyS0\n"), "{script}");
    let token = token.unwrap();
    assert_eq!(action(&agent(&app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    let hw = call(&app, Method::GET, "/dedicated/server/s1/specifications/hardware", None).await.json_body();
    assert_eq!(hw["bootMode"], "uefi");
    assert_eq!(hw["diskGroups"][0]["numberOfDisks"], 2);
    assert_eq!(hw["diskGroups"][0]["disks"][0]["serial"], "S1");
    assert_eq!(hw["diskGroups"][1]["diskSizeBytes"], 2u64 << 40);

    let job: JobResponse = serde_json::from_slice(&agent(&app, &token, Method::GET, "job", None).await.body).unwrap();
    let job = job.job.unwrap();
    assert_eq!(job.disk.serial, "S1", "group 1's first disk, by serial, whatever the kernel names");
    assert_eq!(job.spec.checksum.unwrap().to_string(), format!("sha256:{}", "ab".repeat(32)));
    assert_eq!(job.spec.headers.get("Authorization").map(String::as_str), Some("Bearer x"));
    let cd = job.spec.configdrive.unwrap();
    assert_eq!(cd.user_data.unwrap().0, b"#cloud-config\n");
    assert_eq!(cd.instance_id, Some(format!("byoi-s1-{}", job.deployment_id)));
    assert_eq!(job.spec.efi_loader.as_deref(), Some("\\EFI\\debian\\shimx64.efi"));

    let id = job.deployment_id;
    let warn =
        json!({"level": "warn", "target": "byoi_agent::source::http", "message": "download broke; resuming offset=7"});
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 512u64 << 20, "bytesTotal": 1024u64 << 20,
        "logs": [warn]});
    assert_eq!(action(&agent(&app, &token, Method::POST, "progress", Some(p.clone())).await), "continue");
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!((st["stage"].as_str(), st["percent"].as_f64()), (Some("downloading"), Some(50.0)));
    let logs = st["agentLogs"].as_array().unwrap();
    assert_eq!((logs.len(), &logs[0]["message"], &logs[0]["level"]), (1, &warn["message"], &warn["level"]));
    assert!(logs[0]["at"].as_str().unwrap().ends_with('Z'));
    let done = json!({"deploymentId": id, "status": "done", "code": null, "message": "deployed"});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(done.clone())).await), "reboot");
    // The answer was lost (a controller died after its commit): the agent
    // sends the result again with its retired token, and gets the same
    // answer rather than a 401 that would make it wipe a deployed disk.
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(done.clone())).await), "reboot");
    // Only that: another status, another deployment, another call or
    // another token is refused.
    let error = json!({"deploymentId": id, "status": "error", "code": "internal", "message": "?"});
    let other = json!({"deploymentId": id + 1, "status": "done", "code": null, "message": "deployed"});
    for (token, path, body) in [
        (token.as_str(), "result", Some(error)),
        (token.as_str(), "result", Some(other)),
        (token.as_str(), "progress", Some(p.clone())),
        ("not-the-token", "result", Some(done)),
    ] {
        let r = agent(&app, token, Method::POST, path, body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {:?}", r.json_body());
    }
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!((st["status"].as_str(), st["percent"].as_f64()), (Some("done"), Some(100.0)));
    assert!(st["finishedAt"].as_str().unwrap().ends_with('Z'));
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(s["bootTarget"], "local");
    assert_eq!(s["firmware"], "uefi");
    let (script, _) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("iseq ${platform} efi && exit"), "{script}");
}

#[tokio::test]
async fn an_ova_job_names_its_disk() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let body = json!({"URL": "http://img/appliance.ova", "type": "OVA", "ovaDisk": 2});
    let token = claimed(&app, body).await;
    let r = agent(&app, &token, Method::GET, "job", None).await;
    let job = &r.json_body()["job"]["spec"];
    assert_eq!((job["imageType"].as_str(), job["ovaDisk"].as_u64()), (Some("ova"), Some(2)), "{job}");
    let job: JobResponse = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(job.job.unwrap().spec.ova_disk, Some(byoi_wire::spec::OvaDisk::Index(2)));

    // Without ovaDisk the job carries none, not null.
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let token = claimed(&app, json!({"URL": "http://img/appliance.ova", "type": "ova"})).await;
    let job = agent(&app, &token, Method::GET, "job", None).await.json_body();
    assert_eq!(job["job"]["spec"]["imageType"], "ova");
    assert!(job["job"]["spec"].get("ovaDisk").is_none(), "{job}");
}

#[tokio::test]
async fn an_error_ends_the_boot_and_the_next_post_starts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let (token, id) = running_job(&app, json!({"URL": "http://x/bad.raw"})).await;
    let msg = "Bad sha256 for downloaded file, got: aa while expecting bb.";
    let err = json!({"deploymentId": id, "status": "error", "code": "checksum-mismatch", "message": msg});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(err)).await), "reboot");
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!(
        (st["status"].as_str(), st["message"].as_str(), st["errorCode"].as_str()),
        (Some("error"), Some(msg), Some("checksum-mismatch"))
    );
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body()["bootTarget"], "deploy");
    // The token is retired with the deployment; the server, netbooting
    // again, gets the idle script, which mints nothing.
    assert_eq!(agent(&app, &token, Method::POST, "heartbeat", None).await.status, StatusCode::UNAUTHORIZED);
    let (script, none) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("nothing to do for s1 (deploy)") && none.is_none(), "{script}");
    // A corrected POST expects a new boot: a new token, a new claim.
    let r =
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/good.raw"})))
            .await;
    assert_eq!((r.status, r.json_body()["powerCycle"].as_str()), (StatusCode::OK, Some("manual")));
    let (_, token) = netboot(&app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    assert_eq!(action(&agent(&app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    let job: JobResponse = serde_json::from_slice(&agent(&app, &token, Method::GET, "job", None).await.body).unwrap();
    assert_eq!(job.job.unwrap().spec.url, "http://x/good.raw");
    let history = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body()["deployments"].clone();
    assert_eq!(history.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn delete_aborts_the_agent_and_sends_the_server_to_rescue() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let (token, id) = running_job(&app, json!({"URL": "http://x/i"})).await;
    let r = call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await;
    assert_eq!(r.status, StatusCode::OK);
    // The deploying agent's token is retired: it is told to netboot (and
    // aborts, wiping the disk's ends) whatever it says next.
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 1, "bytesTotal": 2});
    let r = agent(&app, &token, Method::POST, "progress", Some(p)).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::UNAUTHORIZED, &json!("reboot")));
    let r = agent(&app, &token, Method::POST, "heartbeat", Some(json!({"deploymentId": id}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.status,
        StatusCode::NOT_FOUND
    );
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(s["bootTarget"], "rescue");
    assert_eq!(s["deployments"][0]["errorCode"], "aborted");
    let (script, token) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("byoi.mode=rescue") && token.is_some(), "{script}");
    assert_eq!(
        call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A DELETE with nothing to erase answers 404 and changes nothing: no
/// power cycle, no rescue.
#[tokio::test]
async fn delete_without_a_deployment_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let log = dir.path().join("power.log");
    let power = json!({"kind": "command", "name": "log"});
    add_server(&app, "s1", "52:54:00:00:00:01", power).await;
    let r = call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await;
    assert_eq!((r.status, r.json_body()["message"].as_str()), (StatusCode::NOT_FOUND, Some("No deployment on s1")));
    assert!(!log.exists(), "no power cycle");
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(s["bootTarget"], "local");
    let (script, token) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("sanboot") && token.is_none(), "{script}");
}

/// A newer agent's error code is recorded as an error with its message,
/// never refused (an older controller answered 400, and the agent fetched
/// the job again and redeployed in a loop).
#[tokio::test]
async fn an_unknown_error_code_is_recorded_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let (token, id) = running_job(&app, json!({"URL": "http://x/i"})).await;
    let r = json!({"deploymentId": id, "status": "error", "code": "disk-on-fire", "message": "the disk is on fire"});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(r)).await), "reboot");
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!((st["status"].as_str(), st["errorCode"].as_str()), (Some("error"), Some("unknown")));
    assert_eq!(st["message"], "the disk is on fire");
    let r = agent(&app, &token, Method::GET, "job", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "no redeploy");
    // A newer stage in a progress report is kept as `unknown`, too.
    let (token, id) = running_job_again(&app).await;
    let p = json!({"deploymentId": id, "stage": "defragmenting", "bytesDone": 1, "bytesTotal": 2});
    assert_eq!(action(&agent(&app, &token, Method::POST, "progress", Some(p)).await), "continue");
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!(st["stage"], "unknown");
}

/// Posts another deployment on s1: a new boot, a new agent takes the job.
async fn running_job_again(app: &App) -> (String, i64) {
    let r = call(app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/j"}))).await;
    assert_eq!((r.status, r.json_body()["powerCycle"].as_str()), (StatusCode::OK, Some("manual")));
    let (_, token) = netboot(app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    assert_eq!(action(&agent(app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    let job: JobResponse = serde_json::from_slice(&agent(app, &token, Method::GET, "job", None).await.body).unwrap();
    (token, job.job.unwrap().deployment_id)
}

#[tokio::test]
async fn silent_agents_fail_their_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(0)).await;
    running_job(&app, json!({"URL": "http://x/i"})).await;
    app.expire_silent_agents().await;
    assert_eq!(
        call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body()["status"],
        "doing"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.expire_silent_agents().await;
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!((st["status"].as_str(), st["message"].as_str()), (Some("error"), Some("agent stopped reporting")));
}

#[tokio::test]
async fn a_missing_disk_group_fails_the_deployment_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(
        &app,
        Method::POST,
        "/dedicated/server/s1/bringYourOwnImage",
        Some(json!({"URL": "http://x/i", "diskGroupId": 7})),
    )
    .await;
    let (_, token) = netboot(&app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    agent(&app, &token, Method::POST, "hello", Some(inventory())).await;
    let job: JobResponse = serde_json::from_slice(&agent(&app, &token, Method::GET, "job", None).await.body).unwrap();
    assert!(job.job.is_none());
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!(st["status"], "error");
    assert_eq!(st["message"], "diskGroupId 7 does not exist on s1 (2 disk groups)");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = app_in(dir.path(), Duration::from_secs(60)).await;
        add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/i"}))).await;
    }
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!(st["status"], "doing");
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body()["bootTarget"], "deploy");
}

#[tokio::test]
async fn netboot_side_scripts_and_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let r = app.handle(Request::new(Method::GET, "/boot.ipxe", "").header(HOST, "10.0.2.2:8080")).await;
    assert_eq!(
        String::from_utf8(r.body.to_vec()).unwrap().lines().last().unwrap(),
        "chain http://10.0.2.2:8080/boot/${netX/mac:hexhyp}"
    );
    let (script, _) = netboot(&app, "aa-bb-cc-dd-ee-ff").await;
    assert!(script.contains("unknown MAC") && script.trim_end().ends_with("exit"), "{script}");
    let r = app.handle(Request::new(Method::GET, "/artifacts/vmlinuz", "").header(RANGE, "bytes=7-10")).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], b"0123");
    assert_eq!(r.headers["content-range"], "bytes 7-10/17");
    let r = app.handle(Request::new(Method::HEAD, "/artifacts/vmlinuz", "")).await;
    assert_eq!((r.status, r.headers["content-length"].to_str().unwrap(), r.body.len()), (StatusCode::OK, "17", 0));
    assert_eq!(r.headers["accept-ranges"], "bytes");
    let r = app.handle(Request::new(Method::GET, "/artifacts/vmlinuz", "").header(RANGE, "bytes=99-")).await;
    assert_eq!(
        (r.status, r.headers["content-range"].to_str().unwrap()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */17")
    );
    let r = app.handle(Request::new(Method::GET, "/artifacts/initramfs.img", "")).await;
    assert_eq!(&r.body[..], b"INITRAMFS");
    // Every answer names its request, as the controller's log lines do.
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let r =
        app.handle(Request::new(Method::GET, "/boot.ipxe", "").header("x-request-id".parse().unwrap(), "mine-1")).await;
    assert_eq!(r.headers["x-request-id"], "mine-1", "a caller's id is kept");
    assert_eq!(app.handle(Request::new(Method::GET, "/artifacts/passwd", "")).await.status, StatusCode::NOT_FOUND);
    // Missing artifacts: the script says so and retries.
    std::fs::remove_file(dir.path().join("artifacts/vmlinuz")).unwrap();
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/i"}))).await;
    let (script, token) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("byoi: no vmlinuz/initramfs.img in") && token.is_none(), "{script}");
}

/// The routes [`openapi_document_matches_the_routes`] knows: adding one
/// means documenting it, listing it here and sampling its answer there.
const ROUTES: [&str; 58] = [
    "GET /dedicated/server",
    "POST /dedicated/server",
    "GET /dedicated/server/{serviceName}",
    "PUT /dedicated/server/{serviceName}",
    "DELETE /dedicated/server/{serviceName}",
    "GET /dedicated/server/{serviceName}/specifications/hardware",
    "GET /dedicated/server/{serviceName}/bringYourOwnImage",
    "POST /dedicated/server/{serviceName}/bringYourOwnImage",
    "DELETE /dedicated/server/{serviceName}/bringYourOwnImage",
    "POST /dedicated/server/{serviceName}/reinstall",
    "GET /dedicated/server/{serviceName}/task",
    "GET /dedicated/server/{serviceName}/task/{taskId}",
    "GET /dedicated/server/{serviceName}/install/status",
    "GET /dedicated/server/{serviceName}/power",
    "POST /dedicated/server/{serviceName}/power",
    "GET /dedicated/server/{serviceName}/logs",
    "GET /dedicated/server/{serviceName}/events",
    "POST /dedicated/server/{serviceName}/inspect",
    "GET /dedicated/discovered",
    "GET /dedicated/discovered/{mac}",
    "DELETE /dedicated/discovered/{mac}",
    "POST /dedicated/discovered/{mac}/adopt",
    "GET /dedicated/events",
    "GET /",
    "GET /ui/",
    "GET /ui/login",
    "POST /ui/login",
    "POST /ui/logout",
    "GET /ui/app.js",
    "GET /ui/app.css",
    "POST /agent/v1/hello",
    "POST /agent/v1/heartbeat",
    "GET /agent/v1/job",
    "POST /agent/v1/progress",
    "POST /agent/v1/result",
    "GET /agent/v1/rescue",
    "GET /boot.ipxe",
    "GET /boot/{mac}",
    "GET /artifacts/vmlinuz",
    "HEAD /artifacts/vmlinuz",
    "GET /artifacts/initramfs.img",
    "HEAD /artifacts/initramfs.img",
    "GET /auth/time",
    "POST /auth/credential",
    "GET /auth/currentCredential",
    "GET /auth/validate",
    "POST /auth/validate",
    "GET /me/api/application",
    "POST /me/api/application",
    "GET /me/api/application/{applicationId}",
    "DELETE /me/api/application/{applicationId}",
    "GET /me/api/credential",
    "GET /me/api/credential/{credentialId}",
    "DELETE /me/api/credential/{credentialId}",
    "POST /me/api/credential/validate",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
];

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    let p = path
        .replace("{serviceName}", "s1")
        .replace("{mac}", "52:54:00:00:00:01")
        .replace("{taskId}", "1")
        .replace("{applicationId}", "1")
        .replace("{credentialId}", "1");
    assert!(!p.contains('{'), "{path}: a path parameter this test does not know");
    p
}

/// `schema` closed against fields it does not name: `unevaluatedProperties:
/// false` wherever a value is described (the root, properties, items, map
/// values), so that a renamed field fails even where it is optional. The
/// branches of `allOf` (serde's `flatten`) stay open: the value holding
/// them closes their union. A free-form object (`{"type": "object"}`, no
/// properties) stays free.
fn closed(schema: &Value) -> Value {
    let mut s = opened(schema);
    if let Value::Object(m) = &mut s {
        let names_fields = ["properties", "$ref", "allOf", "oneOf", "anyOf"].iter().any(|k| m.contains_key(*k));
        if names_fields && !m.contains_key("additionalProperties") {
            m.insert("unevaluatedProperties".into(), Value::Bool(false));
        }
    }
    s
}

/// `schema` with every value it describes [`closed`], itself left open.
fn opened(schema: &Value) -> Value {
    let Value::Object(m) = schema else { return schema.clone() };
    let m = m
        .iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("properties", Value::Object(props)) => {
                    Value::Object(props.iter().map(|(name, p)| (name.clone(), closed(p))).collect())
                }
                ("items" | "additionalProperties", Value::Object(_)) => closed(v),
                ("allOf" | "oneOf" | "anyOf", Value::Array(branches)) => {
                    Value::Array(branches.iter().map(opened).collect())
                }
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    Value::Object(m)
}

/// Sends requests and checks each answer against what the OpenAPI
/// document says of that operation and status.
struct Sampler<'a> {
    app: &'a App,
    doc: Value,
    /// The document's schemas, [`opened`], for `$ref`s to resolve against.
    components: Value,
    sampled: std::collections::BTreeSet<String>,
}

impl<'a> Sampler<'a> {
    fn new(app: &'a App, doc: Value) -> Sampler<'a> {
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let components =
            json!({"schemas": schemas.iter().map(|(k, v)| (k.clone(), opened(v))).collect::<serde_json::Map<_, _>>()});
        Sampler { app, doc, components, sampled: Default::default() }
    }

    /// Sends `req` to the documented `path` (parameters filled in by
    /// [`concrete`]) and validates the answer.
    async fn sample(&mut self, path: &str, req: Request) -> Response {
        let method = req.method.clone();
        let req = Request { path: concrete(path) + req.path.as_str(), ..req };
        let r = self.app.handle(req).await;
        let what = format!("{method} {path} → {}", r.status.as_u16());
        let op = &self.doc["paths"][path][method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{what}: the operation is not documented");
        let documented = &op["responses"][r.status.as_str()];
        assert!(documented.is_object(), "{what}: the status is not documented: {}", String::from_utf8_lossy(&r.body));
        match r.headers.get(http::header::CONTENT_TYPE) {
            Some(ct) if !r.body.is_empty() => {
                let ct = ct.to_str().unwrap().split(';').next().unwrap().trim();
                let media = &documented["content"][ct];
                assert!(media.is_object(), "{what}: {ct} is not documented ({})", documented["content"]);
                if ct == "application/json" {
                    let root = json!({"components": self.components, "allOf": [closed(&media["schema"])]});
                    let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let body = r.json_body();
                    let errors: Vec<String> =
                        validator.iter_errors(&body).map(|e| format!("{e} (at {})", e.instance_path())).collect();
                    assert!(
                        errors.is_empty(),
                        "{what}: the body does not match its schema:\n{}\n{body:#}",
                        errors.join("\n")
                    );
                }
            }
            _ => assert!(r.body.is_empty() || method == Method::HEAD, "{what}: a body without a Content-Type"),
        }
        self.sampled.insert(format!("{method} {path}"));
        r
    }

    /// As the operator.
    async fn operator(&mut self, method: Method, path: &str, body: Option<Value>) -> Response {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::new(method, "", body).header(AUTHORIZATION, &format!("Bearer {TOKEN}"));
        self.sample(path, req).await
    }

    /// As the agent holding `token`.
    async fn agent(&mut self, token: &str, method: Method, path: &str, body: Option<Value>) -> Response {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::new(method, "", body).header(AUTHORIZATION, &format!("Bearer {token}"));
        self.sample(path, req).await
    }

    /// Signed with an application's `key` and `secret` and a `consumer`
    /// key, as OVHcloud's SDKs sign, for the controller at `http://HOST`.
    async fn signed(&mut self, method: Method, path: &str, body: Option<Value>, keys: [&str; 3]) -> Response {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let ts = byoi_controller::db::now().to_string();
        let url = format!("http://10.0.2.2:8080{}", concrete(path));
        let sig = byoi_controller::auth::signature(keys[1], keys[2], method.as_str(), &url, body.as_bytes(), &ts);
        let req = Request::new(method, "", body)
            .header(HOST, "10.0.2.2:8080")
            .header(http::header::HeaderName::from_static("x-ovh-application"), keys[0])
            .header(http::header::HeaderName::from_static("x-ovh-consumer"), keys[2])
            .header(http::header::HeaderName::from_static("x-ovh-timestamp"), &ts)
            .header(http::header::HeaderName::from_static("x-ovh-signature"), &sig);
        self.sample(path, req).await
    }

    /// Without credentials.
    async fn anyone(&mut self, method: Method, path: &str) -> Response {
        self.sample(path, Request::new(method, "", "").header(HOST, "10.0.2.2:8080")).await
    }
}

/// The generated document against the router: every documented operation
/// is answered, every route is documented, unknown paths get the fallback,
/// and the answers of a whole deployment, errors included, validate against
/// the schemas the document gives their operation and status.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let doc = serde_json::to_value(routes::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // Every documented operation is answered by its route, not by the
    // fallback or a 405.
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|k| !["parameters", "servers"].contains(&k.as_str())) {
            let m: Method = method.to_uppercase().parse().unwrap();
            // The fleet's stream does not end: asked without a token, its
            // route answers 401.
            let r = match path.as_str() {
                "/dedicated/events" => app.handle(Request::new(m.clone(), path, "")).await,
                _ => call(&app, m.clone(), &concrete(path), None).await,
            };
            let msg = r.json_body()["message"].as_str().unwrap_or_default().to_owned();
            assert!(
                !msg.starts_with("No route") && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is documented but not routed: {} {msg}",
                r.status
            );
            documented.push(format!("{m} {path}"));
        }
    }
    // Every route is documented, and nothing else is routed.
    documented.sort();
    let mut known: Vec<String> = ROUTES.iter().map(|r| r.to_string()).chain(["GET /openapi.json".into()]).collect();
    known.sort();
    assert_eq!(documented, known, "the documented routes are not the known ones");
    for (m, p) in [
        (Method::GET, "/dedicated"),
        (Method::GET, "/dedicated/server/s1/bringYourOwnImage/x"),
        (Method::POST, "/agent/v1/bye"),
        (Method::GET, "/artifacts/passwd"),
        (Method::GET, "/openapi.yaml"),
    ] {
        let r = call(&app, m.clone(), p, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {p}");
        assert_eq!(r.json_body()["message"], format!("No route for {m} {p}"));
    }

    // A deployment from start to end, and the errors on the way: every
    // answer validates against its schema.
    let dir = tempfile::tempdir().unwrap();
    let app =
        app_with(dir.path(), Duration::from_secs(60), Duration::from_secs(600), Some(Enlistment::default())).await;
    let mut s = Sampler::new(&app, doc.clone());
    assert_eq!(s.anyone(Method::GET, "/healthz").await.json_body(), json!({"status": "ok"}));
    let ready = s.anyone(Method::GET, "/readyz").await;
    assert_eq!(ready.json_body(), json!({"status": "ready", "database": "ok", "artifacts": "ok"}));
    let r = s.sample("/metrics", Request::new(Method::GET, "", "").header(AUTHORIZATION, "Bearer metrics-token")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.anyone(Method::GET, "/metrics").await.status, StatusCode::UNAUTHORIZED);
    let served = s.anyone(Method::GET, "/openapi.json").await;
    assert_eq!(served.json_body(), doc, "the document served is the one generated");
    let r = s
        .operator(
            Method::POST,
            "/dedicated/server",
            Some(json!({"serviceName": "s1", "macs": ["52:54:00:00:00:01"], "power": {"kind": "manual"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        s.operator(
            Method::POST,
            "/dedicated/server",
            Some(json!({"serviceName": "s1", "macs": ["52:54:00:00:00:01"]}))
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    assert_eq!(s.operator(Method::GET, "/dedicated/server", None).await.status, StatusCode::OK);
    assert_eq!(s.anyone(Method::GET, "/dedicated/server").await.status, StatusCode::UNAUTHORIZED);
    let hw = "/dedicated/server/{serviceName}/specifications/hardware";
    assert_eq!(s.operator(Method::GET, hw, None).await.status, StatusCode::NOT_FOUND);
    let byoi = "/dedicated/server/{serviceName}/bringYourOwnImage";
    assert_eq!(s.operator(Method::GET, byoi, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.operator(Method::POST, byoi, Some(json!({"URL": "ftp://x/i"}))).await.status, StatusCode::BAD_REQUEST);
    let body = json!({"URL": "https://img.example/a.ova", "checkSum": "ab".repeat(32), "checkSumType": "sha256",
        "type": "ova", "ovaDisk": 2, "description": "debian",
        "configdrive": {"enable": true, "hostname": "web1", "sshKey": "ssh-ed25519 AAAA"}});
    let r = s.operator(Method::POST, byoi, Some(body.clone())).await;
    assert_eq!((r.status, &r.json_body()["powerCycle"]), (StatusCode::OK, &json!("manual")));
    assert_eq!(s.operator(Method::POST, byoi, Some(body)).await.status, StatusCode::CONFLICT);
    let reinstall = "/dedicated/server/{serviceName}/reinstall";
    let other = json!({"operatingSystem": "debian12_64"});
    assert_eq!(s.operator(Method::POST, reinstall, Some(other)).await.status, StatusCode::BAD_REQUEST);
    let byoi_64 = json!({"operatingSystem": "byoi_64", "customizations": {"imageURL": "http://x/i",
        "configDriveMetadata": {"k": "v"}}, "storage": [{"diskGroupId": 1}]});
    assert_eq!(s.operator(Method::POST, reinstall, Some(byoi_64.clone())).await.status, StatusCode::CONFLICT);
    let tasks = "/dedicated/server/{serviceName}/task";
    assert_eq!(s.operator(Method::GET, tasks, None).await.json_body(), json!([1]));
    let req = Request::new(Method::GET, "?status=nope", "").header(AUTHORIZATION, &format!("Bearer {TOKEN}"));
    assert_eq!(s.sample(tasks, req).await.status, StatusCode::BAD_REQUEST);
    let task = "/dedicated/server/{serviceName}/task/{taskId}";
    assert_eq!(s.operator(Method::GET, task, None).await.json_body()["status"], "todo");
    let install = "/dedicated/server/{serviceName}/install/status";
    assert_eq!(s.operator(Method::GET, install, None).await.status, StatusCode::OK);
    let inspect = "/dedicated/server/{serviceName}/inspect";
    assert_eq!(s.operator(Method::POST, inspect, None).await.status, StatusCode::CONFLICT);
    let power = "/dedicated/server/{serviceName}/power";
    let r = s.operator(Method::GET, power, None).await;
    assert_eq!(r.json_body(), json!({"kind": "manual", "state": "unknown"}));
    let r = s.operator(Method::POST, power, Some(json!({"action": "on"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(s.operator(Method::POST, power, Some(json!({"action": "up"}))).await.status, StatusCode::BAD_REQUEST);

    assert_eq!(s.anyone(Method::GET, "/boot.ipxe").await.status, StatusCode::OK);
    let r = s.anyone(Method::GET, "/boot/{mac}").await;
    let script = String::from_utf8(r.body.to_vec()).unwrap();
    let token = script.split("byoi.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    for artifact in ["/artifacts/vmlinuz", "/artifacts/initramfs.img"] {
        assert_eq!(s.anyone(Method::HEAD, artifact).await.status, StatusCode::OK);
        let req = Request::new(Method::GET, "", "").header(RANGE, "bytes=0-3");
        assert_eq!(s.sample(artifact, req).await.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(s.anyone(Method::GET, artifact).await.status, StatusCode::OK);
    }

    let r = s.agent("stale", Method::POST, "/agent/v1/heartbeat", None).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::UNAUTHORIZED, &json!("reboot")));
    let r = s.agent(&token, Method::POST, "/agent/v1/hello", Some(json!({"inventory": "none"}))).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::BAD_REQUEST, &json!("wait")));
    assert_eq!(action(&s.agent(&token, Method::POST, "/agent/v1/hello", Some(inventory())).await), "continue");
    assert_eq!(s.operator(Method::GET, hw, None).await.status, StatusCode::OK);
    let r = s.agent(&token, Method::GET, "/agent/v1/job", None).await;
    let id = r.json_body()["job"]["deploymentId"].as_i64().unwrap();
    assert_eq!(r.json_body()["job"]["spec"]["ovaDisk"], 2);
    assert_eq!(
        action(&s.agent(&token, Method::POST, "/agent/v1/heartbeat", Some(json!({"deploymentId": id}))).await),
        "continue"
    );
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 5, "bytesTotal": 10,
        "logs": [{"level": "warn", "target": "byoi_agent::source::http", "message": "retrying"}]});
    assert_eq!(action(&s.agent(&token, Method::POST, "/agent/v1/progress", Some(p)).await), "continue");
    let r = s.operator(Method::GET, byoi, None).await;
    assert_eq!(r.json_body()["agentLogs"][0]["message"], "retrying", "the sample has logs to check");
    let done = json!({"deploymentId": id, "status": "done", "message": "deployed"});
    assert_eq!(action(&s.agent(&token, Method::POST, "/agent/v1/result", Some(done)).await), "reboot");
    let r = s.operator(Method::GET, "/dedicated/server/{serviceName}", None).await;
    assert_eq!(r.json_body()["deployments"][0]["status"], "done", "the sample has a history to check");
    assert_eq!(r.json_body()["os"], "byoi_64", "the sample has an installed system to check");
    assert_eq!(s.operator(Method::GET, task, None).await.json_body()["status"], "done");
    assert_eq!(s.operator(Method::GET, install, None).await.status, StatusCode::NOT_FOUND);
    let r = s.operator(Method::POST, "/dedicated/server/{serviceName}/inspect", None).await;
    assert_eq!((r.status, &r.json_body()["powerCycle"]), (StatusCode::OK, &json!("manual")));
    let logs = "/dedicated/server/{serviceName}/logs";
    let r = s.operator(Method::GET, logs, None).await;
    assert_eq!(r.json_body()["lines"][0]["message"], "retrying", "the sample has lines to check");
    let req = |q: &str| Request::new(Method::GET, q, "").header(AUTHORIZATION, &format!("Bearer {TOKEN}"));
    assert_eq!(s.sample(logs, req("?deployment=999")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.sample(logs, req("?since=1")).await.status, StatusCode::BAD_REQUEST);
    let r = s.operator(Method::GET, "/dedicated/server/{serviceName}/events", None).await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.starts_with("event: log\n") && text.contains("event: deployment\n"), "{text}");

    let r = s.operator(Method::DELETE, byoi, None).await;
    assert_eq!((r.status, &r.json_body()["powerCycle"]), (StatusCode::OK, &json!("manual")));
    let r = s.anyone(Method::GET, "/boot/{mac}").await;
    let script = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(script.contains("byoi.mode=rescue"), "{script}");
    let rescue = script.split("byoi.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert_eq!(action(&s.agent(&rescue, Method::POST, "/agent/v1/hello", Some(inventory())).await), "wait");
    let r = s.agent(&rescue, Method::GET, "/agent/v1/rescue", None).await;
    assert_eq!(r.json_body()["sshKeys"], json!(["ssh-ed25519 AAAA"]));
    // The host key: one per server, the same at every rescue, its
    // fingerprint in the server view.
    let key: byoi_wire::ssh::SshHostKey = serde_json::from_value(r.json_body()["hostKey"].clone()).unwrap();
    let again = s.agent(&rescue, Method::GET, "/agent/v1/rescue", None).await;
    assert_eq!(again.json_body()["hostKey"], r.json_body()["hostKey"]);
    let view = s.operator(Method::GET, "/dedicated/server/{serviceName}", None).await;
    assert_eq!(view.json_body()["sshHostKey"], json!(key.fingerprint()));
    assert_eq!(s.operator(Method::DELETE, byoi, None).await.status, StatusCode::NOT_FOUND);
    let r = s.operator(Method::POST, reinstall, Some(byoi_64)).await;
    assert_eq!((r.status, &r.json_body()["status"]), (StatusCode::OK, &json!("todo")));

    // OVHcloud's authentication, and the credentials' management.
    assert!(s.anyone(Method::GET, "/auth/time").await.json_body().is_i64());
    let r = s.operator(Method::POST, "/me/api/application", Some(json!({"name": "sdk"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let made = r.json_body();
    let field = |k: &str| made[k].as_str().unwrap().to_owned();
    let keys = [field("applicationKey"), field("applicationSecret"), field("consumerKey")];
    let keys = [keys[0].as_str(), keys[1].as_str(), keys[2].as_str()];
    assert_eq!((made["applicationId"].as_i64(), made["credentialId"].as_i64()), (Some(1), Some(1)));
    let r = s.operator(Method::POST, "/me/api/application", Some(json!({"name": "sdk"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(s.operator(Method::GET, "/me/api/application", None).await.json_body(), json!([1]));
    let r = s.operator(Method::GET, "/me/api/application/{applicationId}", None).await;
    assert_eq!(r.json_body()["applicationKey"], keys[0]);
    assert!(!r.body.windows(keys[1].len()).any(|w| w == keys[1].as_bytes()), "no secret shown again");
    assert_eq!(s.operator(Method::GET, "/me/api/credential", None).await.json_body(), json!([1]));
    let r = s.operator(Method::GET, "/me/api/credential/{credentialId}", None).await;
    assert_eq!(r.json_body()["status"], "validated");
    let r = s.signed(Method::GET, "/auth/currentCredential", None, keys).await;
    assert_eq!((r.status, &r.json_body()["credentialId"]), (StatusCode::OK, &json!(1)));
    // A signed request refused on an operator route: documented there too.
    let r = s.signed(Method::GET, "/dedicated/server", None, [keys[0], "wrong", keys[2]]).await;
    assert_eq!((r.status, &r.json_body()["errorCode"]), (StatusCode::BAD_REQUEST, &json!("INVALID_SIGNATURE")));
    let r = s.signed(Method::GET, "/dedicated/server/{serviceName}", None, ["nope", keys[1], keys[2]]).await;
    assert_eq!((r.status, &r.json_body()["class"]), (StatusCode::FORBIDDEN, &json!("Client::Forbidden")));
    let r = s.signed(Method::GET, "/dedicated/server/{serviceName}/task", None, keys).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.signed(Method::GET, "/me/api/credential", None, keys).await;
    assert_eq!((r.status, &r.json_body()["errorCode"]), (StatusCode::FORBIDDEN, &json!("NOT_GRANTED_CALL")));
    let ask = json!({"accessRules": [{"method": "GET", "path": "/dedicated/server/*"}], "redirection": null,
        "allowedIPs": null});
    let req = Request::new(Method::POST, "", ask.to_string())
        .header(HOST, "10.0.2.2:8080")
        .header(http::header::HeaderName::from_static("x-ovh-application"), keys[0]);
    let r = s.sample("/auth/credential", req).await;
    assert_eq!((r.status, &r.json_body()["state"]), (StatusCode::OK, &json!("pendingValidation")));
    let url = r.json_body()["validationUrl"].as_str().unwrap().to_owned();
    let token = url.split_once("credentialToken=").unwrap().1.to_owned();
    assert!(url.starts_with("http://10.0.2.2:8080/auth/validate?"), "{url}");
    let r = s.sample("/auth/validate", Request::new(Method::GET, &format!("?credentialToken={token}"), "")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.body).contains("/dedicated/server/*"));
    let form = |body: String| {
        Request::new(Method::POST, "", body).header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
    };
    let wrong = format!("credentialToken={token}&apiToken=wrong&action=validate");
    assert_eq!(s.sample("/auth/validate", form(wrong)).await.status, StatusCode::FORBIDDEN);
    let right = format!("credentialToken={token}&apiToken={TOKEN}&action=validate");
    assert_eq!(s.sample("/auth/validate", form(right.clone())).await.status, StatusCode::OK);
    assert_eq!(s.sample("/auth/validate", form(right)).await.status, StatusCode::NOT_FOUND, "one use");
    let req = Request::new(Method::POST, "/1.0/auth/credential", ask.to_string())
        .header(HOST, "10.0.2.2:8080")
        .header(http::header::HeaderName::from_static("x-ovh-application"), keys[0]);
    let url = app.handle(req).await.json_body()["validationUrl"].as_str().unwrap().to_owned();
    let token = url.split_once("credentialToken=").unwrap().1;
    let r = s
        .operator(
            Method::POST,
            "/me/api/credential/validate",
            Some(json!({"credentialToken": token, "action": "refuse"})),
        )
        .await;
    assert_eq!((r.status, &r.json_body()["status"]), (StatusCode::OK, &json!("refused")));
    let r = s.operator(Method::GET, "/me/api/credential/{credentialId}", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.operator(Method::DELETE, "/me/api/credential/{credentialId}", None).await.json_body(), Value::Null);
    let r = s.signed(Method::GET, "/auth/currentCredential", None, keys).await;
    assert_eq!((r.status, &r.json_body()["errorCode"]), (StatusCode::FORBIDDEN, &json!("INVALID_CREDENTIAL")));
    let r = s.operator(Method::DELETE, "/me/api/application/{applicationId}", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.operator(Method::DELETE, "/me/api/application/{applicationId}", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Changing and deleting a server.
    let server = "/dedicated/server/{serviceName}";
    let r = s.operator(Method::PUT, server, Some(json!({"kernelArgs": ["console=ttyS1"]}))).await;
    assert_eq!((r.status, &r.json_body()["kernelArgs"]), (StatusCode::OK, &json!(["console=ttyS1"])));
    assert_eq!(s.operator(Method::PUT, server, Some(json!({"macs": []}))).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.operator(Method::DELETE, server, None).await.status, StatusCode::CONFLICT, "a reinstall runs");
    let req = Request::new(Method::DELETE, "?force=true", "").header(AUTHORIZATION, &format!("Bearer {TOKEN}"));
    let r = s.sample(server, req).await;
    assert_eq!((r.status, &r.json_body()["message"]), (StatusCode::OK, &json!("server s1 deleted")));
    assert_eq!(s.operator(Method::DELETE, server, None).await.status, StatusCode::NOT_FOUND);

    // Enlistment: s1's MAC is no server's now.
    let discover = |r: Response| {
        let script = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(script.contains("byoi.mode=discover"), "{script}");
        script.split("byoi.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
    };
    let (machine, adopt) = ("/dedicated/discovered/{mac}", "/dedicated/discovered/{mac}/adopt");
    discover(s.anyone(Method::GET, "/boot/{mac}").await);
    let r = s.operator(Method::GET, machine, None).await;
    assert_eq!((r.status, &r.json_body()["state"]), (StatusCode::OK, &json!("booting")));
    let r = s.operator(Method::POST, adopt, Some(json!({"serviceName": "s9"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "not reported yet");
    assert_eq!(s.operator(Method::DELETE, machine, None).await.status, StatusCode::OK);
    assert_eq!(s.operator(Method::DELETE, machine, None).await.status, StatusCode::NOT_FOUND);
    let token = discover(s.anyone(Method::GET, "/boot/{mac}").await);
    assert_eq!(action(&s.agent(&token, Method::POST, "/agent/v1/hello", Some(inventory())).await), "poweroff");
    let r = s.agent(&token, Method::POST, "/agent/v1/hello", Some(inventory())).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::UNAUTHORIZED, &json!("reboot")), "one hello");
    let r = s.operator(Method::GET, "/dedicated/discovered", None).await;
    assert_eq!(r.json_body(), json!(["52:54:00:00:00:01"]));
    let r = s.operator(Method::GET, machine, None).await;
    assert_eq!(r.json_body()["hardware"]["diskGroups"].as_array().map(Vec::len), Some(2), "{:?}", r.json_body());
    let r = s.operator(Method::POST, adopt, Some(json!({"serviceName": "-s9"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s.operator(Method::POST, adopt, Some(json!({"serviceName": "s9", "kernelArgs": ["console=ttyS0"]}))).await;
    assert_eq!((r.status, &r.json_body()["macs"]), (StatusCode::CREATED, &json!(["52:54:00:00:00:01"])));
    assert_eq!(s.operator(Method::GET, machine, None).await.status, StatusCode::NOT_FOUND);
    let r = s.operator(Method::POST, adopt, Some(json!({"serviceName": "s9"}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let req = Request::new(Method::GET, "x", "").header(AUTHORIZATION, &format!("Bearer {TOKEN}"));
    assert_eq!(s.sample(machine, req).await.status, StatusCode::BAD_REQUEST, "not a MAC");

    // The dashboard (the fleet's stream does not end: its 401 only).
    assert_eq!(s.anyone(Method::GET, "/dedicated/events").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.anyone(Method::GET, "/").await.status, StatusCode::SEE_OTHER);
    assert_eq!(s.anyone(Method::GET, "/ui/login").await.status, StatusCode::OK);
    let form = |body: String| {
        Request::new(Method::POST, "", body).header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
    };
    assert_eq!(s.sample("/ui/login", form("token=wrong".into())).await.status, StatusCode::UNAUTHORIZED);
    let r = s.sample("/ui/login", form(format!("token={TOKEN}"))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cookie = r.headers[http::header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let session = |method: Method, body: &str| {
        Request::new(method, "", body.to_owned())
            .header(http::header::COOKIE, &cookie)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
    };
    for path in ["/ui/", "/ui/app.js", "/ui/app.css"] {
        assert_eq!(s.anyone(Method::GET, path).await.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(s.sample(path, session(Method::GET, "")).await.status, StatusCode::OK, "{path}");
    }
    assert_eq!(s.sample("/ui/logout", session(Method::POST, "csrf=forged")).await.status, StatusCode::FORBIDDEN);

    let unsampled: Vec<_> = known.iter().filter(|r| !s.sampled.contains(*r)).collect();
    assert!(unsampled.is_empty(), "no sample answer checked for {unsampled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_servers_deploy_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(app_in(dir.path(), Duration::from_secs(60)).await);
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("srv{i:03}");
            let mac = format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256);
            add_server(&app, &name, &mac, json!({"kind": "manual"})).await;
            let r = call(&app, Method::POST, &format!("/dedicated/server/{name}/bringYourOwnImage"), Some(json!({"URL": format!("http://x/{name}.raw")}))).await;
            assert_eq!(r.status, StatusCode::OK);
            let (_, token) = netboot(&app, &mac).await;
            let token = token.unwrap();
            agent(&app, &token, Method::POST, "hello", Some(inventory())).await;
            let job: JobResponse = serde_json::from_slice(&agent(&app, &token, Method::GET, "job", None).await.body).unwrap();
            let job = job.job.unwrap();
            assert_eq!(job.spec.url, format!("http://x/{name}.raw"));
            for step in 1..=3u64 {
                let p = json!({"deploymentId": job.deployment_id, "stage": "downloading", "bytesDone": step, "bytesTotal": 3});
                assert_eq!(action(&agent(&app, &token, Method::POST, "progress", Some(p)).await), "continue");
            }
            let done = json!({"deploymentId": job.deployment_id, "status": "done", "message": "deployed"});
            assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(done)).await), "reboot");
            name
        }));
    }
    for t in tasks {
        let name = t.await.unwrap();
        let st =
            call(&app, Method::GET, &format!("/dedicated/server/{name}/bringYourOwnImage"), None).await.json_body();
        assert_eq!(st["status"], "done", "{name}");
    }
    assert_eq!(call(&app, Method::GET, "/dedicated/server", None).await.json_body().as_array().unwrap().len(), 100);
}

/// The power commands of the apps the tests start: `log` appends the
/// action to `DIR/power.log` (and says the power is on when asked).
fn power_log(dir: &Path) -> PowerConfig {
    let script = format!("echo {{action}} >> {}; [ {{action}} != status ] || echo on", dir.join("power.log").display());
    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    PowerConfig {
        commands: [("log".to_owned(), sh(&script)), ("broken".to_owned(), sh("echo BMC unreachable >&2; exit 1"))]
            .into(),
        ..Default::default()
    }
}

async fn app_with_boot_timeout(dir: &Path, agent: Duration, boot: Duration) -> App {
    app_with(dir, agent, boot, None).await
}

/// The test app with `enlist` (`--enlist` when `Some`).
async fn app_with(dir: &Path, agent: Duration, boot: Duration, enlist: Option<Enlistment>) -> App {
    app_configured(dir, agent, boot, |cfg| cfg.enlist = enlist).await
}

/// [`app_with`], its configuration changed by `tune` first.
async fn app_configured(dir: &Path, agent: Duration, boot: Duration, tune: impl FnOnce(&mut Config)) -> App {
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("vmlinuz"), b"KERNEL-0123456789").unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"INITRAMFS").unwrap();
    let database = test_database(dir);
    let db = Db::open_database(&database, boot).await.unwrap();
    let mut cfg = Config {
        api_token: TOKEN.into(),
        artifacts,
        public_url: None,
        agent_urls: Vec::new(),
        scheme: "http",
        listeners: routes::Listeners::One,
        agent_timeout: agent,
        boot_timeout: boot,
        stall_timeout: Duration::from_secs(900),
        boot_limiter: Arc::new(BootLimiter::new(BootRate { per_mac: 1000, per_source: 100_000 })),
        power: power_log(dir),
        metrics_token: Some("metrics-token".into()),
        enlist: None,
    };
    tune(&mut cfg);
    let state = Arc::new(routes::App::new(db, cfg));
    App { router: routes::router(state.clone()), state }
}

/// Two controllers on one database: one holds a lease at a time, renews
/// it while alive, and the other takes it once it ran out.
#[tokio::test]
async fn one_controller_holds_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let database = test_database(dir.path());
    let boot = Duration::from_secs(900);
    let (a, b) = (Db::open_database(&database, boot).await.unwrap(), Db::open_database(&database, boot).await.unwrap());
    assert_eq!(a.lease("watchdog", 60).await.unwrap(), Lease::Taken);
    assert_eq!(b.lease("watchdog", 60).await.unwrap(), Lease::Elsewhere, "two holders");
    assert_eq!(a.lease("watchdog", 60).await.unwrap(), Lease::Renewed, "the holder could not renew");
    assert_eq!(b.lease("cleanup", 60).await.unwrap(), Lease::Taken, "leases are by name");
    // A lease that ran out (A died): B takes it, and A no longer holds it.
    assert_eq!(a.lease("expired", -1).await.unwrap(), Lease::Taken);
    assert_eq!(b.lease("expired", 60).await.unwrap(), Lease::Taken);
    assert_eq!(a.lease("expired", 60).await.unwrap(), Lease::Elsewhere);
}

/// PostgreSQL restarts or fails over: connections break. A change in
/// flight fails as transient (503, try again), and the next reconnects.
#[tokio::test]
async fn a_broken_postgres_connection_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let Database::Postgres(url) = test_database(dir.path()) else {
        return eprintln!("skipped: no PostgreSQL cluster (cargo xtask test's second pass has one)");
    };
    let db = Db::open_database(&Database::Postgres(url.clone()), Duration::from_secs(900)).await.unwrap();
    assert_eq!(db.lease("before", 60).await.unwrap(), Lease::Taken);
    let killed = tokio::task::spawn_blocking(move || {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
    })
    .await
    .unwrap();
    assert!(killed >= 1, "no connection of the controller's was killed");
    // Each writer and each reader may meet its broken connection once.
    let mut failures = 0;
    let mut failed = |e: byoi_controller::db::DbError| {
        assert!(e.is_transient(), "{e}");
        failures += 1;
        assert!(failures <= 7, "the connections are not made again: {e}");
    };
    for _ in 0..16 {
        match db.lease("after", 60).await {
            Ok(held) => assert_ne!(held, Lease::Elsewhere),
            Err(e) => failed(e),
        }
        match db.schema_version().await {
            Ok(v) => assert_eq!(v, 9),
            Err(e) => failed(e),
        }
    }
}

/// Replicas sharing one database: the agent is told each one's URL, in
/// order, whichever replica served the script.
#[tokio::test]
async fn the_agent_is_told_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let urls = vec!["https://byoi-a.lab:8443".to_owned(), "https://byoi-b.lab:8443".to_owned()];
    let app = app_configured(dir.path(), Duration::from_secs(120), Duration::from_secs(900), |cfg| {
        cfg.agent_urls = urls.clone();
    })
    .await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let r =
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://img/x.qcow2"})))
            .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    let (script, token) = netboot(&app, "52-54-00-00-00-01").await;
    assert!(token.is_some(), "{script}");
    assert!(
        script.contains(" byoi.controller=https://byoi-a.lab:8443,https://byoi-b.lab:8443 byoi.token="),
        "{script}"
    );
    // iPXE still fetches its kernel from the listener it asked.
    assert!(script.contains("kernel http://10.0.2.2:8080/artifacts/vmlinuz "), "{script}");
}

/// The database of the test whose files are in `dir`: on PostgreSQL when
/// the run has a cluster (the same suite runs on both), else SQLite.
fn test_database(dir: &Path) -> Database {
    match byoi_testbed::postgres_database(dir) {
        Some(url) => Database::Postgres(url),
        None => Database::Sqlite(dir.join("byoi.sqlite")),
    }
}

/// `/metrics` as the metrics token reads it.
async fn metrics(app: &App) -> String {
    let r = app.handle(Request::new(Method::GET, "/metrics", "").header(AUTHORIZATION, "Bearer metrics-token")).await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// A hello with NICs `macs`, and `disks` disks.
fn machine_hello(macs: &[&str], disks: usize) -> Value {
    let mut hello = inventory();
    let nic = |(i, mac): (usize, &&str)| json!({"name": format!("eth{i}"), "mac": mac, "link": true});
    hello["inventory"]["nics"] = macs.iter().enumerate().map(nic).collect();
    let disk = |i: usize| {
        let mut d = hello["inventory"]["disks"][0].clone();
        d["serial"] = json!(format!("D{i}"));
        d
    };
    hello["inventory"]["disks"] = (0..disks).map(disk).collect();
    hello
}

/// `--enlist`: an unknown MAC netboots the agent in discover mode with a
/// one-use discovery token (a new boot retires the last one); its hello is
/// kept and answered `poweroff`; it then waits in iPXE to be adopted, which
/// makes it a server with its MACs and hardware, unless one of those MACs
/// is taken (then nothing changes). Without --enlist, none of this.
#[tokio::test]
async fn unknown_machines_enlist_and_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let off = app_in(&dir.path().join("off"), Duration::from_secs(60)).await;
    let (script, token) = netboot(&off, "52:54:00:aa:00:01").await;
    assert!(script.contains("unknown MAC") && token.is_none(), "{script}");
    let r = agent(&off, "made-up", Method::POST, "hello", Some(machine_hello(&["52:54:00:aa:00:01"], 1))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let enlist = Enlistment { kernel_args: vec!["console=ttyS0,115200".into()], ..Enlistment::default() };
    let app = app_with(dir.path(), Duration::from_secs(60), Duration::from_secs(600), Some(enlist)).await;
    let (script, first) = netboot(&app, "52-54-00-AA-00-01").await;
    assert!(script.contains("echo byoi: booting the agent for 52:54:00:aa:00:01 (discover)"), "{script}");
    assert!(script.contains(" byoi.mode=discover ") && script.contains(" console=ttyS0,115200\n"), "{script}");
    let (_, token) = netboot(&app, "52:54:00:aa:00:01").await;
    let (first, token) = (first.unwrap(), token.unwrap());
    let hello = machine_hello(&["52:54:00:aa:00:01", "52:54:00:aa:00:02"], 2);
    let r = agent(&app, &first, Method::POST, "hello", Some(hello.clone())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a later boot retired the first token");
    let r = agent(&app, &token, Method::GET, "job", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a discovery token says hello and nothing else");
    let big = machine_hello(&["52:54:00:aa:00:01"], 400);
    let r = agent(&app, &token, Method::POST, "hello", Some(big)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json_body()["message"].as_str().unwrap().contains("a discovered machine's may be 32768"));
    assert_eq!(action(&agent(&app, &token, Method::POST, "hello", Some(hello.clone())).await), "poweroff");
    let r = agent(&app, &token, Method::POST, "hello", Some(machine_hello(&["52:54:00:aa:00:09"], 1))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "one hello: the inventory stays the first");
    let (script, token) = netboot(&app, "52:54:00:aa:00:01").await;
    assert!(token.is_none() && script.contains("waits to be adopted (byoi server adopt)"), "{script}");

    let m = call(&app, Method::GET, "/dedicated/discovered/52-54-00-aa-00-01", None).await.json_body();
    assert_eq!(
        (&m["state"], &m["agentVersion"], &m["versionSkew"]),
        (&json!("reported"), &json!("test"), &json!(true))
    );
    assert_eq!(m["hardware"]["nics"].as_array().unwrap().len(), 2, "{m}");
    assert_eq!(m["hardware"]["diskGroups"][0]["numberOfDisks"], 2, "{m}");

    // A MAC it reported is taken: refused, and nothing is lost.
    add_server(&app, "other", "52:54:00:aa:00:02", json!({"kind": "manual"})).await;
    let adopt = "/dedicated/discovered/52:54:00:aa:00:01/adopt";
    let r = call(&app, Method::POST, adopt, Some(json!({"serviceName": "n1"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.json_body()["message"],
        "MAC 52:54:00:aa:00:02 already belongs to other: 52:54:00:aa:00:01 was not adopted"
    );
    assert_eq!(call(&app, Method::GET, "/dedicated/server/n1", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, Method::GET, "/dedicated/discovered", None).await.json_body(), json!(["52:54:00:aa:00:01"]));
    let r = call(&app, Method::POST, adopt, Some(json!({"serviceName": "n1", "power": {"kind": "ipmi"}}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json_body());
    call(&app, Method::DELETE, "/dedicated/server/other", None).await;

    let power = json!({"kind": "command", "name": "log"});
    let r = call(&app, Method::POST, adopt, Some(json!({"serviceName": "n1", "power": power}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json_body());
    let n1 = r.json_body();
    assert_eq!(n1["macs"], json!(["52:54:00:aa:00:01", "52:54:00:aa:00:02"]));
    assert_eq!(
        (&n1["power"]["kind"], &n1["bootTarget"], &n1["agentVersion"]),
        (&json!("command"), &json!("local"), &json!("test"))
    );
    assert!(n1["sshHostKey"].as_str().unwrap().starts_with("SHA256:"), "{n1}");
    let hw = call(&app, Method::GET, "/dedicated/server/n1/specifications/hardware", None).await.json_body();
    assert_eq!(hw["diskGroups"][0]["numberOfDisks"], 2, "the hardware came along: {hw}");
    assert_eq!(call(&app, Method::GET, "/dedicated/discovered", None).await.json_body(), json!([]));
    let (script, _) = netboot(&app, "52:54:00:aa:00:02").await;
    assert!(script.contains("n1 boots from its local disk"), "{script}");

    // Registering a discovered MAC by hand forgets the machine too.
    netboot(&app, "52:54:00:aa:00:03").await;
    assert_eq!(call(&app, Method::GET, "/dedicated/discovered", None).await.json_body(), json!(["52:54:00:aa:00:03"]));
    add_server(&app, "n3", "52:54:00:aa:00:03", json!({"kind": "manual"})).await;
    assert_eq!(call(&app, Method::GET, "/dedicated/discovered", None).await.json_body(), json!([]));
    let text = metrics(&app).await;
    assert!(text.contains("\nbyoi_discovered_machines 0\n"), "{text}");
}

/// Unknown machines are bounded: once `--enlist-max-machines` are kept,
/// another MAC gets the unknown-MAC script, and those already kept boot
/// on; machines that never said hello within the boot timeout make room.
#[tokio::test]
async fn discovered_machines_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let enlist = Some(Enlistment { max_machines: 3, ..Enlistment::default() });
    let app = app_with(dir.path(), Duration::from_secs(60), Duration::from_secs(600), enlist.clone()).await;
    for i in 1..=3 {
        assert!(netboot(&app, &format!("52:54:00:bb:00:0{i}")).await.1.is_some());
    }
    let (script, token) = netboot(&app, "52:54:00:bb:00:04").await;
    assert!(token.is_none() && script.contains("unknown MAC 52:54:00:bb:00:04"), "{script}");
    assert!(netboot(&app, "52:54:00:bb:00:02").await.1.is_some(), "a kept machine boots on");
    let text = metrics(&app).await;
    assert!(text.contains("\nbyoi_discovered_machines 3\n"), "{text}");

    // With no boot timeout, every token expires at once: those machines
    // can say hello no more, and they make room.
    let app = app_with(&dir.path().join("b"), Duration::from_secs(60), Duration::from_secs(0), enlist).await;
    for i in 1..=3 {
        netboot(&app, &format!("52:54:00:bb:00:0{i}")).await;
    }
    let (_, token) = netboot(&app, "52:54:00:bb:00:04").await;
    assert!(token.is_some());
    let macs = call(&app, Method::GET, "/dedicated/discovered", None).await.json_body();
    assert_eq!(macs, json!(["52:54:00:bb:00:04"]));
}

/// `POST …/inspect`: the server netboots the agent in inspect mode, whose
/// hello gives the hardware view and is answered `poweroff`; the server
/// then boots its disk. Refused while a deployment runs.
#[tokio::test]
async fn inspection_reports_the_hardware_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s2", "52:54:00:00:00:02", json!({"kind": "command", "name": "log"})).await;
    let hw = "/dedicated/server/s2/specifications/hardware";
    assert_eq!(call(&app, Method::GET, hw, None).await.status, StatusCode::NOT_FOUND, "nothing reported yet");
    let r = call(&app, Method::POST, "/dedicated/server/s2/inspect", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    assert_eq!(r.json_body()["powerCycle"], "done");
    assert_eq!(std::fs::read_to_string(dir.path().join("power.log")).unwrap(), "cycle\n");
    let s = call(&app, Method::GET, "/dedicated/server/s2", None).await.json_body();
    assert_eq!((&s["bootTarget"], &s["bootId"]), (&json!("inspect"), &json!(4)));
    let (script, token) = netboot(&app, "52:54:00:00:00:02").await;
    assert!(script.contains("byoi.mode=inspect"), "{script}");
    let token = token.unwrap();
    assert_eq!(action(&agent(&app, &token, Method::POST, "hello", Some(inventory())).await), "poweroff");
    let r = call(&app, Method::GET, hw, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json_body()["diskGroups"].as_array().unwrap().len(), 2);
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s2", None).await.json_body()["bootTarget"], "local");
    // The boot is over: the token is worthless, the script is the disk's.
    assert_eq!(agent(&app, &token, Method::POST, "heartbeat", None).await.status, StatusCode::UNAUTHORIZED);
    let (script, token) = netboot(&app, "52:54:00:00:00:02").await;
    assert!(token.is_none() && !script.contains("byoi.mode"), "{script}");
    // Not while a deployment runs; nor on a server that does not exist.
    call(&app, Method::POST, "/dedicated/server/s2/bringYourOwnImage", Some(json!({"URL": "http://x/i"}))).await;
    let r = call(&app, Method::POST, "/dedicated/server/s2/inspect", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.json_body()["message"].as_str().unwrap().contains("inspect it once the deployment ends"));
    assert_eq!(call(&app, Method::POST, "/dedicated/server/nope/inspect", None).await.status, StatusCode::NOT_FOUND);
}

/// Parses a server-sent event stream into (event, data) pairs.
fn sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("event: ")))
        .map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_owned();
            (field("event: "), serde_json::from_str(&field("data: ")).unwrap())
        })
        .collect()
}

/// `…/events` follows a running deployment: its state at each change, its
/// agent's lines, and the end; `…/logs` has every line, with cursors.
#[tokio::test]
async fn events_follow_a_deployment_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let (token, id) = running_job(&app, json!({"URL": "http://x/i.raw"})).await;
    let stream = {
        let router = app.router.clone();
        let req = http::Request::get("/dedicated/server/s1/events")
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let (started, first) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            use http_body_util::BodyExt;
            let r = router.oneshot(req).await.unwrap();
            assert_eq!(r.headers()[http::header::CONTENT_TYPE], "text/event-stream");
            let mut body = r.into_body();
            // The first event (the state before any report) is in: the
            // reports below come after it.
            let mut text = body.frame().await.unwrap().unwrap().into_data().unwrap().to_vec();
            started.send(()).unwrap();
            text.extend_from_slice(&body.collect().await.unwrap().to_bytes());
            text
        });
        first.await.unwrap();
        task
    };
    let console = |m: &str| json!({"level": "info", "target": "console", "message": m});
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 5, "bytesTotal": 10,
        "logs": [console("target /dev/nvme0n1 (1 TB, serial S1)"), {"level": "warn", "target": "t", "message": "retrying"}]});
    assert_eq!(action(&agent(&app, &token, Method::POST, "progress", Some(p)).await), "continue");
    let done =
        json!({"deploymentId": id, "status": "done", "message": "deployed", "logs": [console("done: deployed")]});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(done)).await), "reboot");
    let body = tokio::time::timeout(Duration::from_secs(60), stream).await.expect("the stream ends").unwrap();
    let events = sse(std::str::from_utf8(&body).unwrap());
    let states: Vec<&str> =
        events.iter().filter(|(e, _)| e == "deployment").map(|(_, d)| d["status"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"doing"), "{events:?}");
    assert_eq!(states.last(), Some(&"done"), "{events:?}");
    let lines: Vec<&str> =
        events.iter().filter(|(e, _)| e == "log").map(|(_, d)| d["message"].as_str().unwrap()).collect();
    assert_eq!(lines, ["target /dev/nvme0n1 (1 TB, serial S1)", "retrying", "done: deployed"]);
    assert_eq!(events.last().unwrap().0, "deployment", "the end state comes last");

    // The log: every line; after a cursor, the rest; the status view keeps
    // warnings and errors only.
    let all = call(&app, Method::GET, "/dedicated/server/s1/logs", None).await.json_body();
    assert_eq!(all["deploymentId"], id);
    let ids: Vec<i64> = all["lines"].as_array().unwrap().iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let rest = call(&app, Method::GET, &format!("/dedicated/server/s1/logs?after={}", ids[0]), None).await.json_body();
    assert_eq!(rest["lines"].as_array().unwrap().len(), 2);
    let view = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    let notable: Vec<&str> =
        view["agentLogs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(notable, ["retrying"]);
    // Nothing runs now: the stream says the state and ends.
    let r = call(&app, Method::GET, "/dedicated/server/s1/events", None).await;
    let events = sse(std::str::from_utf8(&r.body).unwrap());
    assert_eq!(events.last().map(|(e, d)| (e.as_str(), d["status"].clone())), Some(("deployment", json!("done"))));
    assert_eq!(call(&app, Method::GET, "/dedicated/server/nope/events", None).await.status, StatusCode::NOT_FOUND);
}

/// `GET`/`POST …/power` with a command driver: the state, each action,
/// what is refused (a running deployment without force, manual power, bad
/// bodies), and the counts in `/metrics`.
#[tokio::test]
async fn power_status_on_off_and_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s2", "52:54:00:00:00:02", json!({"kind": "command", "name": "log"})).await;
    let log = || std::fs::read_to_string(dir.path().join("power.log")).unwrap_or_default();
    let power = "/dedicated/server/s2/power";
    let r = call(&app, Method::GET, power, None).await;
    assert_eq!((r.status, r.json_body()), (StatusCode::OK, json!({"kind": "command", "state": "on"})));
    for (action, said) in [("off", "s2 powered off"), ("on", "s2 powered on"), ("cycle", "s2 power-cycled")] {
        let r = call(&app, Method::POST, power, Some(json!({"action": action}))).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
        assert_eq!(r.json_body(), json!({"kind": "command", "action": action, "message": said}));
    }
    assert_eq!(log(), "status\noff\non\ncycle\n");
    for bad in [json!({"action": "reboot"}), json!({"action": "on", "now": true}), json!({}), json!("on")] {
        let r = call(&app, Method::POST, power, Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json_body()["class"], "Client::BadRequest");
    }
    let r = call(&app, Method::GET, "/dedicated/server/nope/power", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A running deployment: on is harmless; off and cycle need force.
    let r =
        call(&app, Method::POST, "/dedicated/server/s2/bringYourOwnImage", Some(json!({"URL": "http://x/i"}))).await;
    assert_eq!(r.json_body()["powerCycle"], "done");
    let id = r.json_body()["id"].as_i64().unwrap_or_default();
    assert_eq!(log(), "status\noff\non\ncycle\ncycle\n", "a command driver is not asked to netboot");
    for action in ["off", "cycle"] {
        let r = call(&app, Method::POST, power, Some(json!({"action": action}))).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        let msg = r.json_body()["message"].as_str().unwrap().to_owned();
        assert!(msg.starts_with("A deployment is running on s2 (id "), "{msg}");
        assert!(msg.contains(&format!("byoi power {action} s2 --force")), "{msg}");
    }
    assert_eq!(call(&app, Method::POST, power, Some(json!({"action": "on"}))).await.status, StatusCode::OK);
    let r = call(&app, Method::POST, power, Some(json!({"action": "off", "force": true}))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(log(), "status\noff\non\ncycle\ncycle\non\noff\n");
    let d = call(&app, Method::GET, "/dedicated/server/s2/bringYourOwnImage", None).await.json_body();
    assert_eq!((d["status"].as_str(), d["id"].as_i64().unwrap_or_default()), (Some("doing"), id));

    // Manual power: the state is unknown; actions are the operator's.
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let r = call(&app, Method::GET, "/dedicated/server/s1/power", None).await;
    assert_eq!(r.json_body(), json!({"kind": "manual", "state": "unknown"}));
    let r = call(&app, Method::POST, "/dedicated/server/s1/power", Some(json!({"action": "cycle"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.json_body()["message"],
        "s1 has manual power: byoi cannot power it cycle; do it by hand, or give it a power driver \
         (byoi server set s1 --power …)"
    );

    // A failing driver: 502 with the command's words, counted.
    let broken = json!({"power": {"kind": "command", "name": "broken"}});
    assert_eq!(call(&app, Method::PUT, "/dedicated/server/s2", Some(broken)).await.status, StatusCode::OK);
    let r = call(&app, Method::POST, power, Some(json!({"action": "on"}))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json_body()["message"], "could not power on s2: sh failed (exit status: 1): BMC unreachable");
    let r = call(&app, Method::GET, power, None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json_body()["message"], "could not read the power of s2: sh failed (exit status: 1): BMC unreachable");
    let m = app.handle(Request::new(Method::GET, "/metrics", "").header(AUTHORIZATION, "Bearer metrics-token")).await;
    let m = String::from_utf8(m.body.to_vec()).unwrap();
    for (action, outcome) in [("status", "ok"), ("off", "ok"), ("on", "ok"), ("cycle", "ok"), ("on", "failed")] {
        let line = format!("byoi_power_actions_total{{driver=\"command\",action=\"{action}\",outcome=\"{outcome}\"}}");
        assert!(m.contains(&line), "{line} not in\n{m}");
    }
}

/// Review findings, each pinned: token lifetimes, restarts, races, inputs.
#[tokio::test]
async fn tokens_die_with_their_deployment_and_survive_a_script_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
    let (_, t1) = netboot(&app, "52:54:00:00:00:01").await;
    let t1 = t1.unwrap();
    agent(&app, &t1, Method::POST, "hello", Some(inventory())).await;
    // Anyone fetching the script (no credentials needed) within the boot
    // mints a token, but it does not log out the agent that claimed it.
    let (_, t2) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(t2.is_some());
    assert_eq!(action(&agent(&app, &t1, Method::POST, "heartbeat", None).await), "continue");
    // At most three per boot.
    let (_, t3) = netboot(&app, "52:54:00:00:00:01").await;
    let (script, t4) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(t3.is_some() && t4.is_none(), "{script}");
    let job: JobResponse = serde_json::from_slice(&agent(&app, &t1, Method::GET, "job", None).await.body).unwrap();
    let id = job.job.unwrap().deployment_id;
    let done = json!({"deploymentId": id, "status": "done", "message": "ok"});
    assert_eq!(action(&agent(&app, &t1, Method::POST, "result", Some(done)).await), "reboot");
    // After done, every token of the boot is worthless: the next
    // deployment's secrets are not for them.
    call(
        &app,
        Method::POST,
        "/dedicated/server/s1/bringYourOwnImage",
        Some(json!({"URL": "http://x/2", "httpHeaders": {"Authorization": "secret"}})),
    )
    .await;
    for t in [&t1, &t2.unwrap(), &t3.unwrap()] {
        let r = agent(&app, t, Method::GET, "job", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json_body()["action"], "reboot", "agent errors carry an action too");
    }
}

#[tokio::test]
async fn rescue_tokens_get_no_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
    call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await;
    let (script, rescue) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(script.contains("byoi.mode=rescue"));
    let rescue = rescue.unwrap();
    assert_eq!(action(&agent(&app, &rescue, Method::POST, "hello", Some(inventory())).await), "wait");
    let job: JobResponse = serde_json::from_slice(&agent(&app, &rescue, Method::GET, "job", None).await.body).unwrap();
    assert!(job.job.is_none());
    // A POST expects a new boot: the rescue agent's token is retired and
    // it netboots into the deployment.
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/2"}))).await;
    let r = agent(&app, &rescue, Method::GET, "job", None).await;
    assert_eq!((r.status, &r.json_body()["action"]), (StatusCode::UNAUTHORIZED, &json!("reboot")));
}

#[tokio::test]
async fn a_controller_restart_does_not_fail_running_deployments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = app_in(dir.path(), Duration::from_secs(1)).await;
        add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
        let (_, t) = netboot(&app, "52:54:00:00:00:01").await;
        let t = t.unwrap();
        agent(&app, &t, Method::POST, "hello", Some(inventory())).await;
        agent(&app, &t, Method::GET, "job", None).await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The controller comes back and takes the watchdog's lease, which no
    // one held: the running deployment gets a full timeout first.
    let app = app_in(dir.path(), Duration::from_secs(1)).await;
    assert_eq!(app.state.watch(15).await, Some(Lease::Taken));
    let status = |app: &App| {
        let app = app.state.clone();
        async move {
            let d = app.db.current_deployment("s1").await.unwrap().unwrap();
            (d.status.as_str().to_owned(), d.message)
        }
    };
    assert_eq!(status(&app).await.0, "doing");
    // A second controller on the database leaves the watching to the first.
    let other = app_in(dir.path(), Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(other.state.watch(15).await, Some(Lease::Elsewhere));
    assert_eq!(status(&app).await.0, "doing");
    // The first, renewing its lease, finds the agent silent.
    assert_eq!(app.state.watch(15).await, Some(Lease::Renewed));
    assert_eq!(status(&app).await, ("error".to_owned(), "agent stopped reporting".to_owned()));
}

#[tokio::test]
async fn a_server_that_never_netboots_fails_after_the_boot_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_boot_timeout(dir.path(), Duration::from_secs(60), Duration::from_secs(0)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.expire_silent_agents().await;
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!(
        (st["status"].as_str(), st["message"].as_str()),
        (Some("error"), Some("the server did not netboot into the agent within 0 s"))
    );
}

#[tokio::test]
async fn reports_racing_a_delete_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let (t, id) = running_job(&app, json!({"URL": "http://x/1"})).await;
    call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await;
    let done = json!({"deploymentId": id, "status": "done", "message": "ok"});
    let r = agent(&app, &t, Method::POST, "result", Some(done)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a cancelled disk must not be booted: the agent wipes its ends");
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!((s["bootTarget"].as_str(), s["deployments"][0]["status"].as_str()), (Some("rescue"), Some("error")));
}

#[tokio::test]
async fn every_post_power_cycles_even_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let log = dir.path().join("power.log");
    let power = json!({"kind": "command", "name": "log"});
    add_server(&app, "s1", "52:54:00:00:00:01", power).await;
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
    let (_, t) = netboot(&app, "52:54:00:00:00:01").await;
    let t = t.unwrap();
    agent(&app, &t, Method::POST, "hello", Some(inventory())).await;
    let job: JobResponse = serde_json::from_slice(&agent(&app, &t, Method::GET, "job", None).await.body).unwrap();
    let id = job.job.unwrap().deployment_id;
    let err = json!({"deploymentId": id, "status": "error", "code": "download-failed", "message": "nope"});
    assert_eq!(action(&agent(&app, &t, Method::POST, "result", Some(err)).await), "reboot");
    // The next POST starts a new boot: a power cycle, and a fresh token.
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/2"}))).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "cycle\ncycle\n");
    let r = agent(&app, &t, Method::POST, "heartbeat", Some(json!({"deploymentId": id}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let (_, fresh) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(fresh.is_some());
}

#[tokio::test]
async fn inputs_the_review_found() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    // Duplicate MACs in one request: one MAC, not a 500.
    let r = call(
        &app,
        Method::POST,
        "/dedicated/server",
        Some(json!({"serviceName": "s1", "macs": ["52:54:00:00:00:02", "52-54-00-00-00-02"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json_body()["macs"], json!(["52:54:00:00:00:02"]));
    let r = call(
        &app,
        Method::POST,
        "/dedicated/server",
        Some(json!({"serviceName": "s2", "macs": ["52:54:00:00:00:03"], "kernelArgs": ["evil ${x}"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Lowercase scheme.
    let r = app
        .handle(Request::new(Method::GET, "/dedicated/server", "").header(AUTHORIZATION, &format!("bearer {TOKEN}")))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Ranges: past the end → 416; suffix.
    let r = app.handle(Request::new(Method::GET, "/artifacts/vmlinuz", "").header(RANGE, "bytes=100-")).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = app.handle(Request::new(Method::GET, "/artifacts/vmlinuz", "").header(RANGE, "bytes=-4")).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::PARTIAL_CONTENT, &b"6789"[..]));
    // Absurd sizes from an agent are clamped, not stored negative.
    call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "https://u:p@x/i?sig=1"})))
        .await;
    let (_, t) = netboot(&app, "52:54:00:00:00:02").await;
    let t = t.unwrap();
    agent(&app, &t, Method::POST, "hello", Some(inventory())).await;
    let job: JobResponse = serde_json::from_slice(&agent(&app, &t, Method::GET, "job", None).await.body).unwrap();
    let id = job.job.unwrap().deployment_id;
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": u64::MAX, "bytesTotal": 100});
    agent(&app, &t, Method::POST, "progress", Some(p)).await;
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!(st["percent"], 100.0);
    // Credentials and signatures never come back in the history.
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(s["deployments"][0]["url"], "https://x/i?…");
}

// OVHcloud's current calls: reinstall, tasks, install/status, the server
// object and its hardware in OVHcloud's shape.

/// A `byoi_64` reinstall body with every customization.
fn reinstall_body() -> Value {
    json!({"operatingSystem": "byoi_64", "customizations": {
        "imageURL": "https://img.example/debian.qcow2", "imageType": "qcow2",
        "imageCheckSum": "ab".repeat(32), "imageCheckSumType": "sha256",
        "httpHeaders": {"Authorization": "Basic bG9naW46cGFzc3dvcmQ="},
        "configDriveUserData": "#cloud-config\n", "configDriveMetadata": {"role": "db", "rack": "r1"},
        "efiBootloaderPath": "\\efi\\debian\\grubx64.efi", "hostname": "web1", "sshKey": "ssh-ed25519 AAAA"},
        "storage": [{"diskGroupId": 1}]})
}

/// GET `…/s1/task/{id}`: the task.
async fn task_of(app: &App, server: &str, id: i64) -> Value {
    let r = call(app, Method::GET, &format!("/dedicated/server/{server}/task/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    r.json_body()
}

/// GET `…/s1/task{query}`: the ids.
async fn task_ids(app: &App, query: &str) -> Value {
    let r = call(app, Method::GET, &format!("/dedicated/server/s1/task{query}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {:?}", r.json_body());
    r.json_body()
}

/// Posts `body` to s1's `reinstall`, netboots it, says hello and takes the
/// job: returns (agent token, job).
async fn reinstalled(app: &App, body: Value) -> (String, byoi_wire::agent::Job) {
    let r = call(app, Method::POST, "/dedicated/server/s1/reinstall", Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    let (_, token) = netboot(app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    assert_eq!(action(&agent(app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    let job: JobResponse = serde_json::from_slice(&agent(app, &token, Method::GET, "job", None).await.body).unwrap();
    (token, job.job.unwrap())
}

#[tokio::test]
async fn a_reinstall_is_a_task_that_follows_its_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let r = call(&app, Method::GET, "/dedicated/server/s1/install/status", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json_body()["message"], "Server is not being installed or reinstalled at the moment");

    let r = call(&app, Method::POST, "/dedicated/server/s1/reinstall", Some(reinstall_body())).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json_body());
    let t = r.json_body();
    let id = t["taskId"].as_i64().unwrap();
    assert_eq!((t["function"].as_str(), t["status"].as_str()), (Some("reinstallServer"), Some("todo")));
    assert_eq!((t["comment"].as_str(), t["powerCycle"].as_str()), (Some("starting"), Some("manual")));
    assert!(t["startDate"].as_str().unwrap().ends_with('Z') && t["lastUpdate"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["doneDate"], Value::Null);
    let got = task_of(&app, "s1", id).await;
    assert_eq!((&got["status"], got.get("powerCycle")), (&json!("todo"), None), "{got}");
    assert_eq!(task_ids(&app, "").await, json!([id]));
    // The task is the deployment bringYourOwnImage shows.
    let st = call(&app, Method::GET, "/dedicated/server/s1/bringYourOwnImage", None).await.json_body();
    assert_eq!((st["deploymentId"].as_i64(), st["checksum"].clone()), (Some(id), json!("ab".repeat(32))));
    let r = call(&app, Method::POST, "/dedicated/server/s1/reinstall", Some(reinstall_body())).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let is = call(&app, Method::GET, "/dedicated/server/s1/install/status", None).await.json_body();
    assert!(is["elapsedTime"].as_i64().unwrap() >= 0, "{is}");
    let steps = is["progress"].as_array().unwrap();
    assert_eq!(steps.len(), 5);
    assert_eq!(steps[0], json!({"comment": "Booting the deployment agent", "status": "doing", "error": ""}));
    assert!(steps[1..].iter().all(|s| s["status"] == "todo"), "{is}");

    let (_, token) = netboot(&app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    assert_eq!(action(&agent(&app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    assert_eq!(task_of(&app, "s1", id).await["status"], "todo", "the agent has not taken the job yet");
    let job: JobResponse = serde_json::from_slice(&agent(&app, &token, Method::GET, "job", None).await.body).unwrap();
    let job = job.job.unwrap();
    assert_eq!(job.deployment_id, id);
    assert_eq!(job.spec.url, "https://img.example/debian.qcow2");
    assert_eq!(job.spec.checksum.unwrap().to_string(), format!("sha256:{}", "ab".repeat(32)));
    assert_eq!(job.spec.headers.get("Authorization").map(String::as_str), Some("Basic bG9naW46cGFzc3dvcmQ="));
    assert_eq!(job.spec.efi_loader.as_deref(), Some("\\efi\\debian\\grubx64.efi"));
    let cd = job.spec.configdrive.unwrap();
    let meta: Vec<(&str, &str)> = cd.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(meta, [("rack", "r1"), ("role", "db")], "configDriveMetadata is the ConfigDrive's meta");
    assert_eq!((cd.hostname.as_deref(), cd.ssh_keys), (Some("web1"), vec!["ssh-ed25519 AAAA".to_owned()]));
    assert_eq!(cd.user_data.unwrap().0, b"#cloud-config\n");
    assert_eq!(job.disk.serial, "S1", "storage's disk group 1");
    assert_eq!(task_of(&app, "s1", id).await["status"], "doing");

    let p = json!({"deploymentId": id, "stage": "writing", "bytesDone": 10, "bytesTotal": 10});
    assert_eq!(action(&agent(&app, &token, Method::POST, "progress", Some(p)).await), "continue");
    let is = call(&app, Method::GET, "/dedicated/server/s1/install/status", None).await.json_body();
    let shown: Vec<&str> = is["progress"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(shown, ["done", "done", "doing", "todo", "todo"]);
    assert_eq!(is["progress"][2]["comment"], "Completing the write and verifying the checksum");
    assert_eq!(task_of(&app, "s1", id).await["status"], "doing");

    let done = json!({"deploymentId": id, "status": "done", "message": "deployed"});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(done)).await), "reboot");
    let t = task_of(&app, "s1", id).await;
    assert_eq!((t["status"].as_str(), t["comment"].as_str()), (Some("done"), Some("deployed")));
    assert!(t["doneDate"].as_str().unwrap().ends_with('Z'), "{t}");
    let r = call(&app, Method::GET, "/dedicated/server/s1/install/status", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json_body()["message"], "Server is not being installed or reinstalled at the moment");
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(
        (s["os"].as_str(), s["efiBootloaderPath"].as_str()),
        (Some("byoi_64"), Some("\\efi\\debian\\grubx64.efi"))
    );
    assert_eq!((s["state"].as_str(), s["bootId"].as_u64()), (Some("ok"), Some(1)));
}

#[tokio::test]
async fn failed_and_cancelled_tasks_and_their_filters() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    // The image's fault: customerError, with the agent's message.
    let (token, job) = reinstalled(&app, reinstall_body()).await;
    let first = job.deployment_id;
    let msg = "Bad sha256 for downloaded file, got: aa while expecting bb.";
    let err = json!({"deploymentId": first, "status": "error", "code": "checksum-mismatch", "message": msg});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(err)).await), "reboot");
    let t = task_of(&app, "s1", first).await;
    assert_eq!((t["status"].as_str(), t["comment"].as_str()), (Some("customerError"), Some(msg)));
    assert!(t["doneDate"].as_str().is_some(), "{t}");
    let r = call(&app, Method::GET, "/dedicated/server/s1/install/status", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a failed deployment is not being installed");
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!((s["state"].as_str(), &s["os"], s["bootId"].as_u64()), (Some("error"), &Value::Null, Some(3)));

    // The platform's fault (by the legacy route: a task too): ovhError.
    let (token, second) = running_job_again(&app).await;
    let err = json!({"deploymentId": second, "status": "error", "code": "write-failed", "message": "EIO at 4096"});
    assert_eq!(action(&agent(&app, &token, Method::POST, "result", Some(err)).await), "reboot");
    assert_eq!(task_of(&app, "s1", second).await["status"], "ovhError");

    // Erased while running: cancelled.
    let (_, third) = running_job_again(&app).await;
    assert_eq!(call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await.status, StatusCode::OK);
    let t = task_of(&app, "s1", third).await;
    assert_eq!((t["status"].as_str(), t["comment"].as_str()), (Some("cancelled"), Some("deployment cancelled")));
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    assert_eq!(s["bootId"], 2, "rescue");

    assert_eq!(task_ids(&app, "").await, json!([first, second, third]), "ascending");
    assert_eq!(task_ids(&app, "?function=reinstallServer").await, json!([first, second, third]));
    assert_eq!(task_ids(&app, "?status=customerError").await, json!([first]));
    assert_eq!(task_ids(&app, "?function=reinstallServer&status=ovhError").await, json!([second]));
    assert_eq!(task_ids(&app, "?status=cancelled").await, json!([third]));
    assert_eq!(task_ids(&app, "?status=init").await, json!([]));
    assert_eq!(task_ids(&app, "?function=hardReboot").await, json!([]), "OVHcloud's other functions: no tasks");
    for (query, names) in [
        ("?status=failed", "`init`, `todo`, `doing`, `done`, `customerError`, `ovhError`, `cancelled`"),
        ("?function=hard-reboot", "`reinstallServer`"),
        ("?taskId=1", "`function` or `status`"),
    ] {
        let r = call(&app, Method::GET, &format!("/dedicated/server/s1/task{query}"), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        let m = r.json_body()["message"].as_str().unwrap().to_owned();
        assert!(m.starts_with("Invalid query: ") && m.contains(names), "{query}: {m}");
    }
    // Another server's task, a task that never was, no such server.
    add_server(&app, "s2", "52:54:00:00:00:02", json!({"kind": "manual"})).await;
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s2/task", None).await.json_body(), json!([]));
    for (path, msg) in [
        (
            format!("/dedicated/server/s2/task/{first}"),
            format!("The requested object (taskId = {first}) does not exist"),
        ),
        ("/dedicated/server/s1/task/99".to_owned(), "The requested object (taskId = 99) does not exist".to_owned()),
        (
            "/dedicated/server/nope/task/1".to_owned(),
            "The requested object (serviceName = nope) does not exist".to_owned(),
        ),
        (
            "/dedicated/server/nope/task".to_owned(),
            "The requested object (serviceName = nope) does not exist".to_owned(),
        ),
        (
            "/dedicated/server/nope/install/status".to_owned(),
            "The requested object (serviceName = nope) does not exist".to_owned(),
        ),
    ] {
        let r = call(&app, Method::GET, &path, None).await;
        assert_eq!(
            (r.status, r.json_body()["message"].as_str()),
            (StatusCode::NOT_FOUND, Some(msg.as_str())),
            "{path}"
        );
    }
    let r = call(&app, Method::GET, "/dedicated/server/s1/task/abc", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json_body()["message"], "[taskId] Given data (abc) is not valid for type long");
}

#[tokio::test]
async fn reinstall_takes_byoi_64_only_and_both_loader_names() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let a = &app;
    let bad = |body: Value| async move {
        let r = call(a, Method::POST, "/dedicated/server/s1/reinstall", Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        r.json_body()["message"].as_str().unwrap().to_owned()
    };
    let other = json!({"operatingSystem": "debian12_64", "customizations": {"hostname": "h"}});
    assert_eq!(
        bad(other).await,
        "Operating system \"debian12_64\" is not available on this server: this controller installs only byoi_64"
    );
    // The legacy validation, with OVHcloud's words.
    let mut body = reinstall_body();
    body["customizations"]["imageCheckSumType"] = json!(null);
    assert_eq!(bad(body).await, "Please provide checkSum AND checkSumType or none of them");
    let mut body = reinstall_body();
    body["customizations"]["efiBootloader"] = json!("\\efi\\boot\\bootx64.efi");
    assert_eq!(bad(body).await, "Please provide efiBootloaderPath OR efiBootloader (or the same path in both)");
    let r = call(
        &app,
        Method::POST,
        "/dedicated/server/s1/bringYourOwnImage",
        Some(json!({"URL": "http://x/i", "efiBootloaderPath": "\\efi\\a.efi", "efiBootloader": "\\efi\\b.efi"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&app, Method::GET, "/dedicated/server/s1/task", None).await.json_body(),
        json!([]),
        "nothing started"
    );

    // efiBootloader is the loader the agent registers, by either route.
    let mut body = reinstall_body();
    body["customizations"]["efiBootloaderPath"] = json!(null);
    body["customizations"]["efiBootloader"] = json!("\\efi\\boot\\bootx64.efi");
    let (token, job) = reinstalled(&app, body).await;
    assert_eq!(job.spec.efi_loader.as_deref(), Some("\\efi\\boot\\bootx64.efi"));
    let err =
        json!({"deploymentId": job.deployment_id, "status": "error", "code": "no-efi-partition", "message": "no ESP"});
    agent(&app, &token, Method::POST, "result", Some(err)).await;
    assert_eq!(task_of(&app, "s1", job.deployment_id).await["status"], "customerError");
    let r = call(
        &app,
        Method::POST,
        "/dedicated/server/s1/bringYourOwnImage",
        Some(json!({"URL": "http://x/i", "efiBootloader": "\\efi\\microsoft\\boot\\bootmgfw.efi"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let (_, token) = netboot(&app, "52:54:00:00:00:01").await;
    let token = token.unwrap();
    agent(&app, &token, Method::POST, "hello", Some(inventory())).await;
    let job: JobResponse = serde_json::from_slice(&agent(&app, &token, Method::GET, "job", None).await.body).unwrap();
    assert_eq!(job.job.unwrap().spec.efi_loader.as_deref(), Some("\\efi\\microsoft\\boot\\bootmgfw.efi"));
}

#[tokio::test]
async fn the_server_and_its_hardware_in_ovhcloud_shape() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let r = call(
        &app,
        Method::POST,
        "/dedicated/server",
        Some(json!({"serviceName": "s2", "macs": ["52:54:00:00:00:02"]})),
    )
    .await;
    assert_eq!((r.status, r.json_body()["serverId"].as_i64()), (StatusCode::CREATED, Some(2)));
    let s = call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body();
    let ovh = json!({"name": "s1", "serverId": 1, "state": "ok", "bootId": 1, "os": null, "efiBootloaderPath": null,
        "rescueMail": null, "monitoring": false, "noIntervention": false});
    for (k, v) in ovh.as_object().unwrap() {
        assert_eq!(&s[k], v, "{k}: {s}");
    }
    assert!(s.get("powerState").is_none(), "byoi does not know the power state: {s}");
    assert_eq!((s["serviceName"].as_str(), s["bootTarget"].as_str()), (Some("s1"), Some("local")), "kept");
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s2", None).await.json_body()["serverId"], 2, "stable");

    let r =
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/i"}))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body()["bootId"], 3, "deploy");
    let (_, token) = netboot(&app, "52:54:00:00:00:01").await;
    assert_eq!(action(&agent(&app, &token.unwrap(), Method::POST, "hello", Some(inventory())).await), "continue");
    let hw = call(&app, Method::GET, "/dedicated/server/s1/specifications/hardware", None).await.json_body();
    assert_eq!(hw["bootMode"], "uefi");
    assert_eq!(hw["memorySize"], json!({"unit": "MB", "value": 8192}));
    assert_eq!(hw["memorySizeBytes"], 8u64 << 30);
    let g = &hw["diskGroups"];
    assert_eq!(g.as_array().unwrap().len(), 2);
    for (i, (n, gb, bytes)) in [(2, 1100, 1u64 << 40), (1, 2199, 2u64 << 40)].into_iter().enumerate() {
        assert_eq!(g[i]["diskGroupId"], i + 1);
        assert_eq!((g[i]["diskType"].as_str(), g[i]["numberOfDisks"].as_u64()), (Some("NVMe"), Some(n)));
        assert_eq!(g[i]["diskSize"], json!({"unit": "GB", "value": gb}));
        assert_eq!(g[i]["description"], format!("{n} x {gb} GB NVMe"));
        assert_eq!((&g[i]["raidController"], g[i]["diskSizeBytes"].as_u64()), (&Value::Null, Some(bytes)));
        assert_eq!(g[i]["disks"].as_array().unwrap().len() as u64, n);
    }
    assert_eq!(hw["nics"][0]["mac"], "52:54:00:00:00:01");
}

/// `/readyz` says which check failed (never a path), with 503; `/healthz`
/// answers all the same; neither takes credentials.
#[tokio::test]
async fn readiness_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let get = |path: &str| app.handle(Request::new(Method::GET, path, ""));
    let r = get("/readyz").await;
    assert_eq!((r.status, r.json_body()["status"].as_str()), (StatusCode::OK, Some("ready")));
    std::fs::write(dir.path().join("artifacts/initramfs.img"), b"").unwrap();
    let r = get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json_body(), json!({"status": "not ready", "database": "ok", "artifacts": "failed"}));
    assert!(!String::from_utf8_lossy(&r.body).contains(dir.path().to_str().unwrap()), "no path");
    std::fs::remove_dir_all(dir.path().join("artifacts")).unwrap();
    assert_eq!(get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    assert_eq!(get("/1.0/healthz").await.status, StatusCode::NOT_FOUND, "not an OVHcloud path");
}

/// `/metrics`: OpenMetrics text, for the metrics token (which reads nothing
/// else) or the API token; the database's deployments by status and code,
/// requests by route, power actions; no server name.
#[tokio::test]
async fn metrics_count_requests_deployments_and_power() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "secret-name", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    call(&app, Method::POST, "/dedicated/server/secret-name/bringYourOwnImage", Some(json!({"URL": "http://x/1"})))
        .await;
    let scrape = |token: &str| {
        app.handle(Request::new(Method::GET, "/metrics", "").header(AUTHORIZATION, &format!("Bearer {token}")))
    };
    let r = scrape("metrics-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[http::header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in [
        r#"byoi_deployments{status="doing",error_code=""} 1"#,
        r#"byoi_http_requests_total{route="/dedicated/server/{serviceName}/bringYourOwnImage",method="POST",status="200"} 1"#,
        r#"byoi_power_actions_total{driver="manual",action="cycle",outcome="ok"} 1"#,
        "byoi_servers 1",
        "byoi_agents_online 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    assert!(!text.contains("secret-name"), "no server names");
    assert_eq!(scrape("operator-token").await.status, StatusCode::OK, "the API token reads it too");
    assert_eq!(scrape("wrong").await.status, StatusCode::UNAUTHORIZED);
    let r = app
        .handle(Request::new(Method::GET, "/dedicated/server", "").header(AUTHORIZATION, "Bearer metrics-token"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the metrics token reads nothing else");
}

/// The agent's version, from its hello, in the server view, with the skew
/// against the controller's; a version that is no short word is not kept.
#[tokio::test]
async fn the_server_view_shows_the_agents_version_and_any_skew() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    let view = || async { call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body() };
    assert_eq!(
        (view().await["agentVersion"].clone(), view().await["versionSkew"].clone()),
        (json!(null), json!(false))
    );
    let hello_with = |version: &str| {
        let mut h = inventory();
        h["version"] = json!(version);
        h
    };
    for (said, shown, skew) in [
        ("0.0.1", "0.0.1", true),
        (env!("CARGO_PKG_VERSION"), env!("CARGO_PKG_VERSION"), false),
        ("\u{1b}[31mred", "unknown", true),
    ] {
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
        let (_, token) = netboot(&app, "52:54:00:00:00:01").await;
        let r = agent(&app, &token.unwrap(), Method::POST, "hello", Some(hello_with(said))).await;
        assert_eq!(r.status, StatusCode::OK, "{said:?}");
        let v = view().await;
        assert_eq!((v["agentVersion"].as_str(), v["versionSkew"].as_bool()), (Some(shown), Some(skew)), "{said:?}");
        call(&app, Method::DELETE, "/dedicated/server/s1/bringYourOwnImage", None).await;
    }
}

/// `PUT` and `DELETE /dedicated/server/{name}`: MACs moved between servers
/// only when free, the power driver checked as at registration, a running
/// deployment keeps its server unless `force`, and then its agent is
/// refused.
#[tokio::test]
async fn servers_are_changed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    add_server(&app, "s2", "52:54:00:00:00:02", json!({"kind": "manual"})).await;
    let put = |name: &str, body: Value| {
        let path = format!("/dedicated/server/{name}");
        let app = &app;
        async move { call(app, Method::PUT, &path, Some(body)).await }
    };
    let r = put("s1", json!({"macs": ["52-54-00-00-00-0A", "52:54:00:00:00:0b"]})).await;
    assert_eq!(
        (r.status, &r.json_body()["macs"]),
        (StatusCode::OK, &json!(["52:54:00:00:00:0a", "52:54:00:00:00:0b"]))
    );
    let r = put("s1", json!({"macs": ["52:54:00:00:00:02"]})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json_body()["message"], "MAC 52:54:00:00:00:02 already belongs to s2");
    let r = put("s1", json!({"power": {"kind": "command", "argv": ["/bin/sh"]}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "the API never names a program");
    assert_eq!(put("s1", json!({"kernelArgs": ["a b"]})).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(put("s1", json!({"name": "x"})).await.status, StatusCode::BAD_REQUEST, "unknown field");
    assert_eq!(put("nope", json!({"kernelArgs": []})).await.status, StatusCode::NOT_FOUND);
    let (_, old) = netboot(&app, "52:54:00:00:00:01").await;
    assert!(old.is_none(), "the old MAC is no longer s1's");

    // A running deployment keeps its server, unless forced.
    let r =
        call(&app, Method::POST, "/dedicated/server/s1/bringYourOwnImage", Some(json!({"URL": "http://x/1"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let (script, token) = netboot(&app, "52:54:00:00:00:0a").await;
    let token = token.unwrap_or_else(|| panic!("{script}"));
    assert_eq!(action(&agent(&app, &token, Method::POST, "hello", Some(inventory())).await), "continue");
    let r = call(&app, Method::DELETE, "/dedicated/server/s1", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let m = r.json_body()["message"].as_str().unwrap().to_owned();
    assert!(m.contains("force=true") && m.contains("byoi server delete s1 --force"), "{m}");
    let r = call(&app, Method::DELETE, "/dedicated/server/s1?force=true", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(call(&app, Method::GET, "/dedicated/server/s1", None).await.status, StatusCode::NOT_FOUND);
    let r = agent(&app, &token, Method::POST, "heartbeat", None).await;
    assert_eq!(
        (r.status, &r.json_body()["action"]),
        (StatusCode::UNAUTHORIZED, &json!("reboot")),
        "its agent is refused"
    );
    assert_eq!(call(&app, Method::GET, "/dedicated/server", None).await.json_body(), json!(["s2"]));
    // Its name and MACs are free again.
    add_server(&app, "s1", "52:54:00:00:00:0a", json!({"kind": "manual"})).await;
    assert!(call(&app, Method::GET, "/dedicated/server/s1", None).await.json_body()["deployments"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// `POST /ui/login` with the form `form`: the answer.
async fn login(app: &App, form: &str) -> Response {
    let req = Request::new(Method::POST, "/ui/login", form.to_owned())
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    app.handle(req).await
}

/// A request carrying the session cookie `cookie` (and, for a change,
/// `csrf`).
async fn with_session(
    app: &App,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut req = Request::new(method, path, body.map(|b| b.to_string()).unwrap_or_default())
        .header(http::header::COOKIE, &format!("other=1; byoi_session={cookie}"));
    if let Some(t) = csrf {
        req = req.header(http::header::HeaderName::from_static("x-byoi-csrf"), t);
    }
    app.handle(req).await
}

/// The dashboard's sessions: nothing but the login page without one; the
/// cookie is HttpOnly and SameSite=Strict; a change needs the CSRF token; a
/// credential's session is bounded by its rules and ends with it; logging
/// out ends the session.
#[tokio::test]
async fn dashboard_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    add_server(&app, "s1", "52:54:00:00:00:01", json!({"kind": "manual"})).await;
    for path in ["/ui/", "/ui/app.js", "/ui/app.css", "/"] {
        let r = app.handle(Request::new(Method::GET, path, "")).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        let to = if path == "/" { "/ui/" } else { "/ui/login" };
        assert_eq!(r.headers[http::header::LOCATION], to, "{path}");
    }
    let page = app.handle(Request::new(Method::GET, "/ui/login", "")).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers[http::header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self' 'sha256-"), "{csp}");
    assert_eq!(page.headers[http::header::X_FRAME_OPTIONS], "DENY");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"), "{html}");

    let cross = Request::new(Method::POST, "/ui/login", format!("token={TOKEN}"))
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::HeaderName::from_static("sec-fetch-site"), "cross-site");
    let r = app.handle(cross).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another site's form logs nobody in");
    assert!(r.headers.get(http::header::SET_COOKIE).is_none());
    let r = login(&app, "token=wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&r.body).contains("Wrong token or credential."));
    assert!(r.headers.get(http::header::SET_COOKIE).is_none());
    let r = login(&app, &format!("token={TOKEN}&applicationKey=")).await;
    assert_eq!(
        (r.status, &r.headers[http::header::LOCATION]),
        (StatusCode::SEE_OTHER, &"/ui/".parse::<http::HeaderValue>().unwrap())
    );
    let set = r.headers[http::header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"), "{set}");
    let cookie = set.split(';').next().unwrap().strip_prefix("byoi_session=").unwrap().to_owned();
    let page = with_session(&app, Method::GET, "/ui/", &cookie, None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    let csrf = html.split("name=\"byoi-csrf\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert!(csrf.len() >= 32 && !html.contains(&cookie), "the page holds the CSRF token, never the cookie");
    assert_eq!(with_session(&app, Method::GET, "/ui/app.js", &cookie, None, None).await.status, StatusCode::OK);

    // The API takes the cookie; a change needs the CSRF token too.
    let r = with_session(&app, Method::GET, "/dedicated/server", &cookie, None, None).await;
    assert_eq!((r.status, r.json_body()), (StatusCode::OK, json!(["s1"])));
    let new = json!({"serviceName": "s2", "macs": ["52:54:00:00:00:02"]});
    let r = with_session(&app, Method::POST, "/dedicated/server", &cookie, None, Some(new.clone())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.json_body()["message"].as_str().unwrap().contains("CSRF"));
    let r = with_session(&app, Method::POST, "/dedicated/server", &cookie, Some("forged"), Some(new.clone())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = with_session(&app, Method::POST, "/dedicated/server", &cookie, Some(&csrf), Some(new)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json_body());
    let r = with_session(&app, Method::GET, "/dedicated/server", "made-up", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json_body()["message"], "Your dashboard session has ended: log in again");

    // A credential that may only read.
    let made = call(
        &app,
        Method::POST,
        "/me/api/application",
        Some(json!({"name": "viewer", "rules": [{"method": "GET", "path": "/*"}]})),
    )
    .await
    .json_body();
    let keys = ["applicationKey", "applicationSecret", "consumerKey"].map(|k| made[k].as_str().unwrap().to_owned());
    let wrong =
        login(&app, &format!("applicationKey={}&applicationSecret=nope&consumerKey={}", keys[0], keys[2])).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let r =
        login(&app, &format!("applicationKey={}&applicationSecret={}&consumerKey={}", keys[0], keys[1], keys[2])).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let viewer = r.headers[http::header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap()
        ["byoi_session=".len()..]
        .to_owned();
    let html =
        String::from_utf8(with_session(&app, Method::GET, "/ui/", &viewer, None, None).await.body.to_vec()).unwrap();
    let viewer_csrf = html.split("name=\"byoi-csrf\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert_eq!(
        with_session(&app, Method::GET, "/dedicated/server/s1", &viewer, None, None).await.status,
        StatusCode::OK
    );
    let r = with_session(&app, Method::DELETE, "/dedicated/server/s2", &viewer, Some(&viewer_csrf), None).await;
    assert_eq!((r.status, &r.json_body()["errorCode"]), (StatusCode::FORBIDDEN, &json!("NOT_GRANTED_CALL")));
    call(&app, Method::DELETE, &format!("/me/api/application/{}", made["applicationId"]), None).await;
    let r = with_session(&app, Method::GET, "/dedicated/server", &viewer, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a revoked credential's session ends");

    // Logging out needs the CSRF token, and ends the session.
    let logout = |csrf: String| {
        let req = Request::new(Method::POST, "/ui/logout", format!("csrf={csrf}"))
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::COOKIE, &format!("byoi_session={cookie}"));
        app.handle(req)
    };
    assert_eq!(logout("forged".into()).await.status, StatusCode::FORBIDDEN);
    let r = logout(csrf).await;
    assert_eq!((r.status, r.headers[http::header::LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/login"));
    assert!(r.headers[http::header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(
        with_session(&app, Method::GET, "/dedicated/server", &cookie, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(with_session(&app, Method::GET, "/ui/", &cookie, None, None).await.status, StatusCode::SEE_OTHER);
}

/// `GET /dedicated/events`: every server and discovered machine, `ready`,
/// then each change (a deployment's progress, a server added or deleted).
#[tokio::test]
async fn the_fleet_streams_its_changes() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path(), Duration::from_secs(60)).await;
    let (token, id) = running_job(&app, json!({"URL": "http://x/i.raw"})).await;
    add_server(&app, "s0", "52:54:00:00:00:00", json!({"kind": "manual"})).await;
    let req = http::Request::get("/dedicated/events")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let r = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(r.headers()[http::header::CONTENT_TYPE], "text/event-stream");
    let mut body = r.into_body();
    let mut text = String::new();
    // Reads until `until` is in the stream.
    let mut read_until = async |until: &str| {
        while !text.contains(until) {
            let frame =
                tokio::time::timeout(Duration::from_secs(20), body.frame()).await.expect("an event").unwrap().unwrap();
            text.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
        }
        sse(&text)
    };
    let events = read_until("event: ready").await;
    let kinds: Vec<(&str, &Value)> = events.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(
        (kinds[0].0, &kinds[0].1["serviceName"], &kinds[0].1["state"]),
        ("server", &json!("s0"), &json!("idle"))
    );
    let s1 = kinds[1].1;
    assert_eq!(
        (&s1["state"], &s1["stage"], &s1["deploymentId"]),
        (&json!("deploying"), &json!("downloading"), &json!(id))
    );
    assert_eq!(s1["disks"], json!(["2 x 1100 GB NVMe", "1 x 2199 GB NVMe"]), "{s1}");
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 5, "bytesTotal": 10});
    assert_eq!(action(&agent(&app, &token, Method::POST, "progress", Some(p)).await), "continue");
    let events = read_until("\"percent\":50.0").await;
    let (kind, last) = events.last().unwrap();
    assert_eq!((kind.as_str(), &last["serviceName"], &last["percent"]), ("server", &json!("s1"), &json!(50.0)));
    call(&app, Method::DELETE, "/dedicated/server/s0", None).await;
    let events = read_until("event: removed").await;
    assert_eq!(events.last().unwrap(), &("removed".to_owned(), json!({"serviceName": "s0"})));
}
