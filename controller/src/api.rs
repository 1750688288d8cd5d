//! The controller's HTTP surface as a plain async function of a request:
//! the BYOI API (operator token), the netboot side (no token), the agent
//! protocol (per-boot agent tokens). `server.rs` puts it on a socket; tests
//! call [`App::handle`] directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use byoi_wire::agent::{
    Action, ActionResponse, ConfigDriveJob, Disk, DiskSelector, Hello, Inventory, Job, JobResponse, ProgressReport,
    RescueResponse, ResultReport,
};
use byoi_wire::Status;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::db::{self, Db, DeploymentRow, ServerRow};
use crate::ipxe::{self, Script};
use crate::model::{self, ByoiRequest, NewServer, ValidRequest};
use crate::power::{Power, PowerAction};

/// Largest request body: 16 MiB of user data, base64 encoded, and room.
pub const MAX_BODY: usize = 24 << 20;

/// How the controller is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operator's API token.
    pub api_token: String,
    /// Where `vmlinuz` and `initramfs.img` are.
    pub artifacts: PathBuf,
    /// The URL servers reach the controller at; else from `Host`.
    pub public_url: Option<String>,
    /// Scheme for URLs derived from `Host`.
    pub scheme: &'static str,
    /// Silence after which a running deployment fails.
    pub agent_timeout: Duration,
    /// Time for a server to netboot into the agent after a POST.
    pub boot_timeout: Duration,
}

/// A request, body read.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Request {
    /// A request with no headers (tests).
    pub fn new(method: Method, path: &str, body: impl Into<Bytes>) -> Request {
        Request { method, path: path.to_owned(), headers: HeaderMap::new(), body: body.into() }
    }

    /// Adds a header.
    pub fn header(mut self, name: http::header::HeaderName, value: &str) -> Request {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    fn bearer(&self) -> Option<&str> {
        // The scheme is case-insensitive (RFC 7235 §2.1).
        let v = self.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Content type.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(http::header::HeaderName, String)>,
    /// Body.
    pub body: Bytes,
}

impl Response {
    fn json(status: StatusCode, v: &impl Serialize) -> Response {
        let body = serde_json::to_vec(v).unwrap_or_default();
        Response { status, content_type: "application/json", headers: Vec::new(), body: body.into() }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Response {
        Response::json(status, &json!({ "message": message.into() }))
    }

    fn text(body: String) -> Response {
        Response {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The body as JSON (tests).
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What went wrong in a handler.
type Handled = Result<Response, Response>;

fn internal(e: db::DbError) -> Response {
    tracing::error!(error = %e, "database error");
    Response::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| Response::error(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {e}")))
}

/// Constant-time comparison of tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hex SHA-256 of an agent token: only hashes are stored.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 UTC from Unix seconds.
pub fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A group of identical disks, as `specifications/hardware` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskGroup {
    /// From 1.
    pub disk_group_id: u32,
    /// `SSD`, `HDD`, `NVMe`.
    pub disk_type: String,
    /// Disks in the group.
    pub number_of_disks: usize,
    /// Size of each.
    pub disk_size_bytes: u64,
    /// The disks, by serial.
    pub disks: Vec<Disk>,
}

/// Groups disks of equal model, size and transport, numbered from 1 in an
/// order that does not depend on kernel names: USB disks (virtual media,
/// sticks) last, then smallest first, then model, then transport; disks in
/// a group by serial, then WWN.
pub fn disk_groups(inv: &Inventory) -> Vec<DiskGroup> {
    let mut groups: BTreeMap<(bool, u64, String, String), Vec<Disk>> = BTreeMap::new();
    for d in &inv.disks {
        let key = (d.transport == "usb", d.size_bytes, d.model.clone(), d.transport.clone());
        groups.entry(key).or_default().push(d.clone());
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((_, size, _, transport), mut disks))| {
            disks.sort_by(|a, b| (&a.serial, &a.wwn).cmp(&(&b.serial, &b.wwn)));
            let disk_type = if transport == "nvme" {
                "NVMe"
            } else if disks[0].rotational {
                "HDD"
            } else {
                "SSD"
            };
            DiskGroup {
                disk_group_id: i as u32 + 1,
                disk_type: disk_type.into(),
                number_of_disks: disks.len(),
                disk_size_bytes: size,
                disks,
            }
        })
        .collect()
}

/// The controller.
#[derive(Debug)]
pub struct App {
    db: Db,
    cfg: Config,
    /// Artifacts in memory, shared by every download (reference counted),
    /// reloaded when the file changes.
    artifacts: std::sync::Mutex<BTreeMap<String, (std::time::SystemTime, u64, Bytes)>>,
}

impl App {
    /// A controller on `db`.
    pub fn new(db: Db, cfg: Config) -> App {
        App { db, cfg, artifacts: std::sync::Mutex::new(BTreeMap::new()) }
    }

    /// An artifact's bytes, from the cache while the file is unchanged.
    async fn artifact_bytes(&self, name: &str) -> std::io::Result<Bytes> {
        let path = self.cfg.artifacts.join(name);
        let meta = tokio::fs::metadata(&path).await?;
        let stamp = (meta.modified()?, meta.len());
        {
            let cache = self.artifacts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((m, l, b)) = cache.get(name) {
                if (*m, *l) == stamp {
                    return Ok(b.clone());
                }
            }
        }
        let data = Bytes::from(tokio::fs::read(&path).await?);
        self.artifacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (stamp.0, stamp.1, data.clone()));
        Ok(data)
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Fails running deployments whose agent went silent; run periodically.
    pub fn expire_silent_agents(&self) {
        match self.db.expire_silent(self.cfg.agent_timeout.as_secs() as i64, self.cfg.boot_timeout.as_secs() as i64) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(deployments = n, "agents stopped reporting"),
            Err(e) => tracing::error!(error = %e, "expiring silent agents"),
        }
    }

    /// Handles one request. Never panics on input; errors are JSON
    /// `{"message": …}` with a 4xx status.
    pub async fn handle(&self, req: Request) -> Response {
        if req.body.len() > MAX_BODY {
            return Response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body larger than {} MiB", MAX_BODY >> 20),
            );
        }
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let method = req.method.clone();
        let r = match (method.as_str(), segments.as_slice()) {
            ("GET", ["boot.ipxe"]) => Ok(self.boot_ipxe(&req)),
            ("GET", ["boot", mac]) => self.boot_script(&req, mac),
            ("GET" | "HEAD", ["artifacts", name]) => self.artifact(&req, name).await,
            ("GET", ["openapi.json"]) => Ok(Response {
                status: StatusCode::OK,
                content_type: "application/json",
                headers: Vec::new(),
                body: Bytes::from_static(crate::OPENAPI.as_bytes()),
            }),
            (_, ["agent", "v1", what]) => self.agent(&req, what).await,
            (_, ["dedicated", "server", ..]) => match self.check_api_token(&req) {
                Err(e) => Err(e),
                Ok(()) => self.api(&req, &segments[2..]).await,
            },
            _ => Err(Response::error(StatusCode::NOT_FOUND, format!("No route for {} {}", req.method, req.path))),
        };
        r.unwrap_or_else(|e| e)
    }

    fn check_api_token(&self, req: &Request) -> Result<(), Response> {
        match req.bearer() {
            Some(t) if same(t, &self.cfg.api_token) => Ok(()),
            _ => {
                Err(Response::error(StatusCode::UNAUTHORIZED, "Missing or invalid API token (Authorization: Bearer …)"))
            }
        }
    }

    /// The URL servers use to reach us.
    fn base_url(&self, req: &Request) -> String {
        if let Some(u) = &self.cfg.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
        format!("{}://{host}", self.cfg.scheme)
    }

    // ---- Netboot side ----

    fn boot_ipxe(&self, req: &Request) -> Response {
        Response::text(ipxe::render(&Script::Boot, &self.base_url(req)))
    }

    fn boot_script(&self, req: &Request, mac: &str) -> Handled {
        let base = self.base_url(req);
        let Some(mac_norm) = model::normalize_mac(mac) else {
            return Ok(Response::text(ipxe::render(&Script::Unknown { mac }, &base)));
        };
        let Some(name) = self.db.server_by_mac(&mac_norm).map_err(internal)? else {
            return Ok(Response::text(ipxe::render(&Script::Unknown { mac }, &base)));
        };
        let server =
            self.db.server(&name).map_err(internal)?.ok_or_else(|| Response::error(StatusCode::NOT_FOUND, "gone"))?;
        let script = match server.boot_target.as_str() {
            "deploy" | "rescue" => {
                let missing = ["vmlinuz", "initramfs.img"].iter().any(|f| !self.cfg.artifacts.join(f).is_file());
                if missing {
                    let dir = self.cfg.artifacts.display().to_string();
                    return Ok(Response::text(ipxe::render(&Script::Missing { dir: &dir }, &base)));
                }
                let token = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
                let dep = self.db.current_deployment(&name).map_err(internal)?.map(|d| d.id);
                let keep_live = self.cfg.agent_timeout.as_secs() as i64;
                self.db
                    .store_token(&token_hash(&token), &name, dep, &server.boot_target, keep_live)
                    .map_err(internal)?;
                ipxe::render(
                    &Script::Agent {
                        server: &name,
                        mode: &server.boot_target,
                        token: &token,
                        kernel_args: &server.kernel_args,
                    },
                    &base,
                )
            }
            _ => ipxe::render(&Script::Local { server: &name }, &base),
        };
        tracing::info!(server = %name, target = %server.boot_target, "served boot script");
        Ok(Response::text(script))
    }

    async fn artifact(&self, req: &Request, name: &str) -> Handled {
        if !matches!(name, "vmlinuz" | "initramfs.img") {
            return Err(Response::error(StatusCode::NOT_FOUND, format!("No artifact {name}")));
        }
        let path = self.cfg.artifacts.join(name);
        let data = self
            .artifact_bytes(name)
            .await
            .map_err(|e| Response::error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display())))?;
        let len = data.len() as u64;
        // `bytes=START-[END]` or `bytes=-SUFFIX`; one range.
        let spec = req
            .headers
            .get(http::header::RANGE)
            .and_then(|r| r.to_str().ok())
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .map(|(s, e)| (s.trim().to_owned(), e.trim().to_owned()));
        let range = match &spec {
            None => None,
            Some((s, e)) if s.is_empty() => match e.parse::<u64>() {
                Ok(n) if n > 0 && len > 0 => Some((len.saturating_sub(n), len - 1)),
                _ => return Err(unsatisfiable(len)),
            },
            Some((s, e)) => {
                let start: u64 = s.parse().map_err(|_| unsatisfiable(len))?;
                let end = if e.is_empty() {
                    len.saturating_sub(1)
                } else {
                    e.parse::<u64>().map_err(|_| unsatisfiable(len))?
                };
                if start >= len || start > end {
                    return Err(unsatisfiable(len));
                }
                Some((start, end.min(len - 1)))
            }
        };
        let mut resp = Response {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            headers: vec![(http::header::ACCEPT_RANGES, "bytes".into())],
            body: data,
        };
        if let Some((start, end)) = range {
            resp.status = StatusCode::PARTIAL_CONTENT;
            resp.headers.push((http::header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
            resp.body = resp.body.slice(start as usize..end as usize + 1);
        }
        if req.method == Method::HEAD {
            resp.headers.push((http::header::CONTENT_LENGTH, resp.body.len().to_string()));
            resp.body = Bytes::new();
        }
        Ok(resp)
    }

    // ---- Agent protocol ----

    async fn agent(&self, req: &Request, what: &str) -> Handled {
        // Every agent response carries an action, errors included: a
        // refused token means "netboot again", anything else "wait".
        let with_action = |mut r: Response, a: Action| {
            let mut v = r.json_body();
            v["action"] = json!(a);
            r.body = serde_json::to_vec(&v).unwrap_or_default().into();
            r
        };
        let unauthorized = || {
            with_action(
                Response::error(StatusCode::UNAUTHORIZED, "Missing, wrong or stale agent token"),
                Action::Reboot,
            )
        };
        let token = req.bearer().ok_or_else(unauthorized)?;
        let (server, mode) = self.db.use_token(&token_hash(token)).map_err(internal)?.ok_or_else(unauthorized)?;
        self.agent_call(req, what, &server, &mode).await.map_err(|e| with_action(e, Action::Wait))
    }

    async fn agent_call(&self, req: &Request, what: &str, server: &str, mode: &str) -> Handled {
        let current = self.db.current_deployment(server).map_err(internal)?;
        // A rescue boot never runs deployments.
        let running = current.filter(|d| d.status == "doing" && mode != "rescue");
        // The server is wanted in the other mode (rescue after a DELETE, a
        // deployment posted during rescue): the agent netboots again, as the
        // power cycle would have made it do.
        let target = self.server(server)?.boot_target;
        let elsewhere = mode != target && target != "local";
        let action = |a: Action| Ok(Response::json(StatusCode::OK, &ActionResponse { action: a }));
        let size = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        match (req.method.as_str(), what) {
            ("POST", "hello") => {
                let hello: Hello = parse(&req.body)?;
                let inv = serde_json::to_value(&hello.inventory).unwrap_or_default();
                self.db.touch_server(server, Some(&inv)).map_err(internal)?;
                self.db.reported_server(server).map_err(internal)?;
                tracing::info!(%server, %mode, version = %hello.version, disks = hello.inventory.disks.len(), "agent said hello");
                if elsewhere {
                    return action(Action::Reboot);
                }
                action(if running.is_some() { Action::Continue } else { Action::Wait })
            }
            ("POST", "heartbeat") => {
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Beat {
                    deployment_id: Option<i64>,
                }
                let beat: Beat = if req.body.is_empty() { Beat { deployment_id: None } } else { parse(&req.body)? };
                self.db.touch_server(server, None).map_err(internal)?;
                self.db.reported_server(server).map_err(internal)?;
                if let Some(id) = beat.deployment_id.filter(|id| running.as_ref().is_none_or(|d| d.id != *id)) {
                    // Working on a deployment that is no longer the running
                    // one: abort only if it was cancelled.
                    let cancelled = self
                        .db
                        .deployment(id)
                        .map_err(internal)?
                        .is_some_and(|d| d.error_code.as_deref() == Some("aborted"));
                    if cancelled {
                        return action(Action::Abort);
                    }
                }
                if elsewhere && beat.deployment_id.is_none() {
                    return action(Action::Reboot);
                }
                action(if running.is_some() { Action::Continue } else { Action::Wait })
            }
            ("GET", "job") => {
                self.db.touch_server(server, None).map_err(internal)?;
                let Some(d) = running else {
                    let a = if elsewhere { Action::Reboot } else { Action::Wait };
                    return Ok(Response::json(StatusCode::OK, &JobResponse { action: a, job: None }));
                };
                match self.job_for(server, &d) {
                    Ok(job) => {
                        if !self.db.progress(d.id, "downloading", 0, None).map_err(internal)? {
                            return Ok(Response::json(
                                StatusCode::OK,
                                &JobResponse { action: Action::Wait, job: None },
                            ));
                        }
                        Ok(Response::json(StatusCode::OK, &JobResponse { action: Action::Continue, job: Some(job) }))
                    }
                    Err(msg) => {
                        self.db.finish(d.id, "error", Some("invalid-request"), &msg).map_err(internal)?;
                        Ok(Response::json(StatusCode::OK, &JobResponse { action: Action::Wait, job: None }))
                    }
                }
            }
            ("POST", "progress") => {
                let p: ProgressReport = parse(&req.body)?;
                self.db.touch_server(server, None).map_err(internal)?;
                let total = p.bytes_total.map(size);
                match running {
                    Some(d) if d.id == p.deployment_id => {
                        let done = size(p.bytes_done).min(total.unwrap_or(i64::MAX));
                        let still = self.db.progress(d.id, p.stage.as_str(), done, total).map_err(internal)?;
                        action(if still { Action::Continue } else { Action::Abort })
                    }
                    _ => action(Action::Abort),
                }
            }
            ("POST", "result") => {
                let r: ResultReport = parse(&req.body)?;
                self.db.touch_server(server, None).map_err(internal)?;
                let Some(d) = running.filter(|d| d.id == r.deployment_id) else {
                    // A disk finished after its deployment was cancelled
                    // must not boot.
                    return action(match r.status {
                        Status::Done => Action::Abort,
                        _ if elsewhere => Action::Reboot,
                        _ => Action::Wait,
                    });
                };
                let (status, code) = match r.status {
                    Status::Done => ("done", None),
                    _ => ("error", Some(r.code.map_or("internal", |c| c.as_str()))),
                };
                let message = if status == "done" && r.message.is_empty() { "done".to_owned() } else { r.message };
                if !self.db.finish(d.id, status, code, &message).map_err(internal)? {
                    // Cancelled while the agent finished: the disk must
                    // not boot.
                    return action(Action::Abort);
                }
                tracing::info!(%server, deployment = d.id, status, %message, "deployment ended");
                action(if status == "done" { Action::Reboot } else { Action::Wait })
            }
            ("GET", "rescue") => {
                self.db.touch_server(server, None).map_err(internal)?;
                let history = self.db.history(server).map_err(internal)?;
                let keys: Vec<String> = history
                    .iter()
                    .filter_map(|d| d.request.pointer("/configdrive/sshKeys")?.as_array().cloned())
                    .find(|k| !k.is_empty())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect();
                Ok(Response::json(StatusCode::OK, &RescueResponse { action: Action::Wait, ssh_keys: keys }))
            }
            _ => Err(Response::error(StatusCode::NOT_FOUND, format!("No agent call {} {what}", req.method))),
        }
    }

    /// The job for a deployment, with the disk chosen from the inventory.
    fn job_for(&self, server: &str, d: &DeploymentRow) -> Result<Job, String> {
        let req: ValidRequest =
            serde_json::from_value(d.request.clone()).map_err(|e| format!("stored request: {e}"))?;
        let srv = self.db.server(server).map_err(|e| e.to_string())?.ok_or("server gone")?;
        let inv: Inventory =
            srv.inventory.and_then(|v| serde_json::from_value(v).ok()).ok_or("the agent has not sent its inventory")?;
        let groups = disk_groups(&inv);
        let group = groups.iter().find(|g| g.disk_group_id == req.disk_group_id).ok_or_else(|| {
            format!("diskGroupId {} does not exist on {server} ({} disk groups)", req.disk_group_id, groups.len())
        })?;
        let disk = &group.disks[0];
        Ok(Job {
            deployment_id: d.id,
            url: req.url,
            checksum: req.checksum,
            image_type: req.image_type,
            ova_disk: req.ova_disk,
            headers: req.headers,
            disk: DiskSelector { serial: disk.serial.clone(), wwn: disk.wwn.clone(), size_bytes: disk.size_bytes },
            configdrive: req.configdrive.map(|c| ConfigDriveJob {
                hostname: c.hostname,
                ssh_keys: c.ssh_keys,
                user_data_base64: c.user_data_base64,
                meta: c.meta,
                instance_id: format!("byoi-{server}-{}", d.id),
            }),
            efi_loader: req.efi_loader,
        })
    }

    // ---- BYOI API ----

    async fn api(&self, req: &Request, rest: &[&str]) -> Handled {
        match (req.method.as_str(), rest) {
            ("GET", []) => {
                let names: Vec<String> = self.db.servers().map_err(internal)?.into_iter().map(|s| s.name).collect();
                Ok(Response::json(StatusCode::OK, &names))
            }
            ("POST", []) => self.add_server(req),
            ("GET", [name]) => {
                let s = self.server(name)?;
                let history = self.db.history(name).map_err(internal)?;
                Ok(Response::json(StatusCode::OK, &server_json(&s, &history)))
            }
            ("GET", [name, "specifications", "hardware"]) => {
                let s = self.server(name)?;
                let inv: Option<Inventory> = s.inventory.and_then(|v| serde_json::from_value(v).ok());
                let Some(inv) = inv else {
                    return Err(Response::error(
                        StatusCode::NOT_FOUND,
                        format!("No hardware inventory for {name} yet: the agent reports it when the server netboots"),
                    ));
                };
                Ok(Response::json(
                    StatusCode::OK,
                    &json!({
                        "bootMode": inv.firmware,
                        "memorySize": inv.memory_bytes,
                        "diskGroups": disk_groups(&inv),
                        "nics": inv.nics,
                    }),
                ))
            }
            ("GET", [name, "bringYourOwnImage"]) => {
                self.server(name)?;
                match self.db.current_deployment(name).map_err(internal)? {
                    Some(d) => Ok(Response::json(StatusCode::OK, &status_json(&d))),
                    None => Err(Response::error(StatusCode::NOT_FOUND, format!("No deployment on {name}"))),
                }
            }
            ("POST", [name, "bringYourOwnImage"]) => self.post_byoi(req, name).await,
            ("DELETE", [name, "bringYourOwnImage"]) => {
                self.server(name)?;
                let Some(cur) = self.db.cancel(name).map_err(internal)? else {
                    return Err(Response::error(StatusCode::NOT_FOUND, format!("No deployment on {name}")));
                };
                let power = self.power_cycle(name).await;
                let mut body =
                    json!({ "message": "deployment erased; the server boots into rescue", "deploymentId": cur.id });
                if let Err(e) = power {
                    body["powerError"] = json!(e);
                }
                Ok(Response::json(StatusCode::OK, &body))
            }
            (_, [] | [_] | [_, "bringYourOwnImage"] | [_, "specifications", "hardware"]) => {
                Err(Response::error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here", req.method)))
            }
            _ => Err(Response::error(StatusCode::NOT_FOUND, format!("No route for {} {}", req.method, req.path))),
        }
    }

    fn server(&self, name: &str) -> Result<ServerRow, Response> {
        self.db.server(name).map_err(internal)?.ok_or_else(|| {
            Response::error(
                StatusCode::NOT_FOUND,
                format!("The requested object (serviceName = {name}) does not exist"),
            )
        })
    }

    fn add_server(&self, req: &Request) -> Handled {
        let n: NewServer = parse(&req.body)?;
        if !model::valid_name(&n.service_name) {
            return Err(Response::error(
                StatusCode::BAD_REQUEST,
                format!("Bad serviceName {:?}: letters, digits, '-', '_', '.'", n.service_name),
            ));
        }
        let mut macs = Vec::new();
        for m in &n.macs {
            macs.push(
                model::normalize_mac(m)
                    .ok_or_else(|| Response::error(StatusCode::BAD_REQUEST, format!("Bad MAC address {m:?}")))?,
            );
        }
        macs.sort();
        macs.dedup();
        if macs.is_empty() {
            return Err(Response::error(StatusCode::BAD_REQUEST, "A server needs at least one MAC address"));
        }
        if let Some(bad) = n.kernel_args.iter().find(|a| !model::valid_kernel_arg(a)) {
            return Err(Response::error(
                StatusCode::BAD_REQUEST,
                format!("Bad kernelArgs entry {bad:?}: one word, no quotes, no $ {{ }} \\ | & #"),
            ));
        }
        let power = n.power.unwrap_or_else(|| json!({"kind": "manual"}));
        Power::from_json(&power).map_err(|e| Response::error(StatusCode::BAD_REQUEST, e))?;
        let row = ServerRow {
            name: n.service_name.clone(),
            macs,
            power,
            kernel_args: n.kernel_args,
            boot_target: "local".into(),
            inventory: None,
            last_seen: None,
            created_at: db::now(),
        };
        match self.db.add_server(&row).map_err(internal)? {
            Ok(()) => Ok(Response::json(StatusCode::CREATED, &server_json(&row, &[]))),
            Err(conflict) => Err(Response::error(StatusCode::CONFLICT, conflict)),
        }
    }

    async fn post_byoi(&self, req: &Request, name: &str) -> Handled {
        let before = self.server(name)?;
        let r: ByoiRequest = parse(&req.body)?;
        let valid = r.validate().map_err(|m| Response::error(StatusCode::BAD_REQUEST, m))?;
        let stored = serde_json::to_value(&valid).unwrap_or_default();
        let d = match self.db.start_deployment(name, &stored, valid.checksum.as_deref()).map_err(internal)? {
            Ok(d) => d,
            Err(running) => {
                return Err(Response::error(
                    StatusCode::CONFLICT,
                    format!("A deployment is already in progress on {name} (id {}, {})", running.id, running.stage),
                ))
            }
        };
        tracing::info!(server = name, deployment = d.id, url = %model::redact_url(&valid.url), "deployment requested");
        // An agent that is up and waiting (after an error) picks the job up
        // at its next heartbeat: no reboot.
        let timeout = self.cfg.agent_timeout.as_secs() as i64;
        let agent_waiting =
            before.boot_target == "deploy" && before.last_seen.is_some_and(|t| db::now() - t <= timeout);
        if agent_waiting {
            tracing::info!(server = name, "the agent is waiting; no power cycle");
        } else if let Err(e) = self.power_cycle(name).await {
            let msg = format!("could not power-cycle {name}: {e}");
            self.db.finish(d.id, "error", Some("power-failed"), &msg).map_err(internal)?;
            return Err(Response::error(StatusCode::BAD_GATEWAY, msg));
        }
        let d = self.db.deployment(d.id).map_err(internal)?.unwrap_or(d);
        Ok(Response::json(StatusCode::OK, &status_json(&d)))
    }

    async fn power_cycle(&self, name: &str) -> Result<(), String> {
        let s = self.db.server(name).map_err(|e| e.to_string())?.ok_or("server gone")?;
        let power = Power::from_json(&s.power)?;
        match power.run(PowerAction::Cycle).await {
            Ok(true) => {
                tracing::info!(server = name, "power-cycled");
                Ok(())
            }
            Ok(false) => {
                tracing::info!(server = name, "manual power: reboot the server by hand");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// 416 for a range outside the file (RFC 9110 §15.5.17).
fn unsatisfiable(len: u64) -> Response {
    let mut r = Response::error(StatusCode::RANGE_NOT_SATISFIABLE, format!("Range outside the file ({len} bytes)"));
    r.headers.push((http::header::CONTENT_RANGE, format!("bytes */{len}")));
    r
}

fn status_json(d: &DeploymentRow) -> serde_json::Value {
    let percent = match (d.bytes_total, d.status.as_str()) {
        (_, "done") => Some(100.0),
        (Some(t), _) if t > 0 => Some((d.bytes_done as f64 * 100.0 / t as f64 * 10.0).round() / 10.0),
        _ => None,
    };
    json!({
        "status": d.status,
        "message": d.message,
        "checksum": d.checksum.as_ref().and_then(|c| c.split_once(':').map(|(_, h)| h.to_owned())),
        "servername": d.server,
        "description": d.request.get("description").cloned().unwrap_or(serde_json::Value::Null),
        "deploymentId": d.id,
        "stage": d.stage,
        "bytesDone": d.bytes_done,
        "bytesTotal": d.bytes_total,
        "percent": percent,
        "errorCode": d.error_code,
        "createdAt": rfc3339(d.created_at),
        "updatedAt": rfc3339(d.updated_at),
        "finishedAt": d.finished_at.map(rfc3339),
    })
}

fn server_json(s: &ServerRow, history: &[DeploymentRow]) -> serde_json::Value {
    let firmware = s.inventory.as_ref().and_then(|i| i.get("firmware")).cloned();
    json!({
        "serviceName": s.name,
        "macs": s.macs,
        "power": { "kind": s.power.get("kind").cloned().unwrap_or(json!("manual")) },
        "kernelArgs": s.kernel_args,
        "bootTarget": s.boot_target,
        "firmware": firmware,
        "lastSeen": s.last_seen.map(rfc3339),
        "createdAt": rfc3339(s.created_at),
        "deployments": history.iter().map(|d| {
            let mut j = status_json(d);
            j["url"] = json!(model::redact_url(d.request.get("url").and_then(|u| u.as_str()).unwrap_or_default()));
            j["current"] = json!(d.current);
            j
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn disk_groups_ignore_kernel_names() {
        let d = |name: &str, size: u64, serial: &str| Disk {
            name: name.into(),
            size_bytes: size,
            model: "M".into(),
            serial: serial.into(),
            transport: "sata".into(),
            ..Default::default()
        };
        let a = Inventory {
            disks: vec![d("sdb", 2000, "B"), d("sda", 1000, "Z"), d("sdc", 1000, "A")],
            ..Default::default()
        };
        let b = Inventory {
            disks: vec![d("sda", 1000, "A"), d("sdc", 2000, "B"), d("sdb", 1000, "Z")],
            ..Default::default()
        };
        assert_eq!(
            disk_groups(&a),
            disk_groups(&b)
                .into_iter()
                .map(|mut g| {
                    for (x, y) in g.disks.iter_mut().zip(disk_groups(&a)[g.disk_group_id as usize - 1].disks.iter()) {
                        x.name = y.name.clone();
                    }
                    g
                })
                .collect::<Vec<_>>()
        );
        let g = disk_groups(&a);
        assert_eq!(g[0].disk_size_bytes, 1000);
        assert_eq!(g[0].disks[0].serial, "A");
        assert_eq!(g[1].number_of_disks, 1);
    }
}
