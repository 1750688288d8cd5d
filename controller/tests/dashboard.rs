//! The dashboard in a real browser: Debian's headless Chromium, driven
//! through chromedriver (WebDriver, fantoccini), against a real `byoi serve`
//! whose agents are simulated over the agent protocol. Screenshots of each
//! view go to `target/screenshots/`.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use byoi_testbed::{children, timed, TimedChild};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

mod common;

use common::{agent_token, http, start_with, token_in, Controller};

/// chromedriver, and the Chromium it starts; dropping it ends them all.
struct Driver {
    child: TimedChild,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = timed(Duration::from_secs(600), "chromedriver");
        cmd.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        let child = TimedChild::spawn(&mut cmd).expect("chromedriver (cargo xtask setup installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port, _profile: tempfile::tempdir().unwrap() }
    }

    /// A browser session: headless, no sandbox (tests run as root), its
    /// profile in a temporary directory, `width` × `height`.
    async fn browser(&self, width: u32, height: u32) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--no-zygote",
                         "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", self._profile.path().display())],
            },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // A closed session has ended its Chromium; a failed test may not
        // have closed it. Chromium ends its own processes on SIGTERM, and
        // chromedriver reaps it: ask it to, then stop chromedriver
        // (TimedChild), so that no process, not even a zombie, is left.
        let chromedriver = children(self.child.id()).unwrap_or_default();
        let browsers: Vec<u32> = chromedriver.iter().flat_map(|p| children(*p).unwrap_or_default()).collect();
        if browsers.is_empty() {
            return;
        }
        let pids: Vec<String> = browsers.iter().map(u32::to_string).collect();
        let _ = std::process::Command::new("kill").arg("-TERM").args(&pids).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && browsers.iter().any(|p| Path::new(&format!("/proc/{p}/exe")).exists()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The text on the page whose contrast with its background is below WCAG
/// AA's (4.5:1, 3:1 for large text); disabled controls are exempt.
const LOW_CONTRAST: &str = "
    const lum = (c) => {
        const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
            v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const background = (el) => {
        for (; el; el = el.parentElement) {
            const c = getComputedStyle(el).backgroundColor;
            if (c !== 'transparent' && !/^rgba\\(.*, 0\\)$/.test(c)) return c;
        }
        return 'rgb(255, 255, 255)';
    };
    const low = [];
    for (const el of document.querySelectorAll('body *')) {
        const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (!own || !el.getClientRects().length || el.closest(':disabled, [aria-disabled=true]')) continue;
        const s = getComputedStyle(el);
        const [a, b] = [lum(s.color), lum(background(el))];
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        const size = parseFloat(s.fontSize);
        const large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
        if (ratio < (large ? 3 : 4.5)) low.push(`${el.tagName}.${el.className}: ${ratio.toFixed(2)}`);
    }
    return low;";

/// Where screenshots go.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Runs `script` (a JavaScript function body) until it returns `want`.
async fn until(b: &Client, script: &str, want: Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = b.execute(script, vec![]).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{script} is {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the element at `css`, once there.
async fn text(b: &Client, css: &str) -> String {
    let el = b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await.unwrap();
    el.text().await.unwrap()
}

/// A simulated agent holding `server`'s boot: netboots, says hello and
/// takes the job; returns its token and the deployment id.
fn agent_takes_the_job(c: &Controller, mac: &str) -> (String, i64) {
    let token = agent_token(c, mac);
    let disk = json!({"name": "nvme0n1", "sizeBytes": 480_103_981_056u64, "serial": "S1", "transport": "nvme"});
    let nic = json!({"name": "eth0", "mac": mac, "link": true, "speedMbps": 10000});
    let inv = json!({"version": env!("CARGO_PKG_VERSION"),
        "inventory": {"firmware": "uefi", "memoryBytes": 64u64 << 30, "disks": [disk], "nics": [nic]}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(&token), Some(&inv)).0, 200);
    let (_, job) = http(&c.addr, "GET", "/agent/v1/job", Some(&token), None);
    let id = serde_json::from_str::<Value>(&job).unwrap()["job"]["deploymentId"].as_i64().unwrap();
    (token, id)
}

fn progress(c: &Controller, token: &str, id: i64, done: u64, line: &str) {
    let p = json!({"deploymentId": id, "stage": "writing", "bytesDone": done, "bytesTotal": 4_000_000_000u64,
        "logs": [{"level": "info", "target": "console", "message": line}]});
    let (status, answer) = http(&c.addr, "POST", "/agent/v1/progress", Some(token), Some(&p));
    assert_eq!((status, answer.as_str()), (200, r#"{"action":"continue"}"#));
}

/// Log in, watch a deployment's bar move and another's error, look at a
/// server, cancel its deployment, and submit the deploy form with a bad
/// checksum; the same pages on a phone's screen; everything labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start_with(&data, &["--enlist".as_ref()], "http");
    let artifacts = data.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("vmlinuz"), b"k").unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"i").unwrap();
    for (name, mac) in [("web1", "52:54:00:00:00:01"), ("web2", "52:54:00:00:00:02"), ("db1", "52:54:00:00:00:03")] {
        let server = json!({"serviceName": name, "macs": [mac]});
        assert_eq!(http(&c.addr, "POST", "/dedicated/server", Some(&c.token), Some(&server)).0, 201);
    }
    for name in ["web1", "web2"] {
        let image = json!({"URL": format!("https://images.example/{name}.qcow2"), "checkSumType": "sha256",
            "checkSum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"});
        let path = format!("/dedicated/server/{name}/bringYourOwnImage");
        assert_eq!(http(&c.addr, "POST", &path, Some(&c.token), Some(&image)).0, 200);
    }
    let (web1, web1_id) = agent_takes_the_job(&c, "52:54:00:00:00:01");
    let (web2, web2_id) = agent_takes_the_job(&c, "52:54:00:00:00:02");
    let found = agent_token(&c, "52:54:00:00:00:99");
    let base = format!("http://{}", c.addr);

    let driver = Driver::start();
    let b = driver.browser(1280, 900).await;

    // Nothing but the login page without a session.
    b.goto(&format!("{base}/ui/")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/login");
    screenshot(&b, "login").await;
    b.find(Locator::Css("#token")).await.unwrap().send_keys("wrong").await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    until(&b, "return document.querySelector('.error').textContent", json!("Wrong token or credential.")).await;
    b.find(Locator::Css("#token")).await.unwrap().send_keys(&c.token).await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();

    // The fleet, live: a bar that moves, an error's message.
    until(&b, "return document.body.dataset.fleet === 'ready'", json!(true)).await;
    assert_eq!(text(&b, "#row-web1 .badge").await, "deploying");
    assert_eq!(text(&b, "#row-mac_52_54_00_00_00_99 .badge").await, "discovered");
    progress(&c, &web1, web1_id, 1_000_000_000, "writing to /dev/nvme0n1");
    until(&b, "return document.querySelector('#row-web1 progress').value", json!(25)).await;
    progress(&c, &web1, web1_id, 3_000_000_000, "75% written");
    until(&b, "return document.querySelector('#row-web1 progress').value", json!(75)).await;
    // An agent's words are text, never markup.
    let said = "the image's sha256 is 0c8f…, not 9f86d0… <img src=x onerror=\"document.title='owned'\">";
    let failed = json!({"deploymentId": web2_id, "status": "error", "code": "checksum", "message": said});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/result", Some(&web2), Some(&failed)).0, 200);
    assert_eq!(text(&b, "#row-web2 .message.error").await, said);
    assert_eq!(b.execute("return document.querySelectorAll('main img').length", vec![]).await.unwrap(), json!(0));
    assert_eq!(text(&b, "#row-web2 .badge").await, "error");
    screenshot(&b, "fleet").await;
    // Filter and search, without a reload.
    b.find(Locator::Css("#search")).await.unwrap().send_keys("web").await.unwrap();
    assert_eq!(text(&b, "#fleet-count").await, "2 of 4 shown");
    let set = "const [id, value, event] = arguments; const e = document.getElementById(id); e.value = value; \
        e.dispatchEvent(new Event(event)); return 1";
    b.execute(set, vec![json!("search"), json!(""), json!("input")]).await.unwrap();
    b.execute(set, vec![json!("filter"), json!("error"), json!("change")]).await.unwrap();
    assert_eq!(text(&b, "#fleet-count").await, "1 of 4 shown");
    assert_eq!(
        b.execute("return [...document.querySelectorAll('#fleet-body tr:not([hidden])')].map(r => r.id)", vec![])
            .await
            .unwrap(),
        json!(["row-web2"])
    );

    // A server: hardware, the agent's log live, then cancel.
    b.goto(&format!("{base}/ui/#/server/web1")).await.unwrap();
    until(&b, "return document.querySelector('main h1')?.textContent ?? null", json!("web1")).await;
    assert_eq!(text(&b, "#hw-h + .facts dd").await, "uefi");
    until(&b, "return document.getElementById('power-state').textContent", json!("manual: unknown")).await;
    until(
        &b,
        "return [...document.querySelectorAll('#agent-log li')].map(l => l.textContent.slice(9)).join('|')",
        json!("writing to /dev/nvme0n1|75% written"),
    )
    .await;
    progress(&c, &web1, web1_id, 3_500_000_000, "87% written");
    until(&b, "return document.querySelector('#current progress').value", json!(87.5)).await;
    until(&b, "return document.querySelectorAll('#agent-log li').length", json!(3)).await;
    screenshot(&b, "server").await;
    b.find(Locator::Css("#cancel")).await.unwrap().click().await.unwrap();
    b.accept_alert().await.unwrap();
    // The DELETE's message.
    until(&b, "return document.getElementById('action-message')?.textContent.includes('rescue') ?? false", json!(true))
        .await;
    let (_, status) = http(&c.addr, "GET", "/dedicated/server/web1", Some(&c.token), None);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["bootTarget"], "rescue", "{status}");
    until(&b, "return document.querySelector('#history tbody tr .badge')?.textContent ?? null", json!("error")).await;
    // The rescue agent comes up: the page says how to log in to it.
    let (_, script) = http(&c.addr, "GET", "/boot/52:54:00:00:00:01", None, None);
    assert!(script.contains("byoi.mode=rescue"), "{script}");
    let rescue = token_in(&script);
    let hello = json!({"inventory": {"firmware": "uefi", "memoryBytes": 1u64 << 30, "disks": [], "nics": []}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(&rescue), Some(&hello)).0, 200);
    b.refresh().await.unwrap();
    let ssh = text(&b, "#rescue-ssh").await;
    assert!(ssh.starts_with("ssh root@127.0.0.1\n# host key SHA256:"), "{ssh}");
    // The view is drawn (the rescue section is in it): its history row.
    let history = "return [...document.querySelectorAll('#history th, #history tbody tr:first-child td')].map(c => c.textContent)";
    let row = b.execute(history, vec![]).await.unwrap();
    let row: Vec<&str> = row.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(row[..6], ["#", "Image", "Status", "Started", "Took", "Throughput"]);
    assert_eq!(row[6..8], [web1_id.to_string().as_str(), "https://images.example/web1.qcow2"]);
    assert!(row[8].starts_with("error") && row[10].ends_with(" s") && row[11].ends_with("B/s"), "{row:?}");

    // The deploy form: the API's message next to its field.
    b.goto(&format!("{base}/ui/#/server/db1/deploy")).await.unwrap();
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("#deploy-form")).await.unwrap();
    b.find(Locator::Css("#url")).await.unwrap().send_keys("https://images.example/db.qcow2").await.unwrap();
    b.execute("document.getElementById('checksum-type').value = 'sha256'; return 1", vec![]).await.unwrap();
    b.find(Locator::Css("#checksum")).await.unwrap().send_keys("abc").await.unwrap();
    b.find(Locator::Css("#deploy")).await.unwrap().click().await.unwrap();
    let bad = "Bad checkSum, expected 64 hexadecimal digits for sha256.";
    until(&b, "return document.getElementById('checksum-error').textContent", json!(bad)).await;
    let invalid = b
        .execute("return document.activeElement.id + ':' + document.activeElement.getAttribute('aria-invalid')", vec![])
        .await
        .unwrap();
    assert_eq!(invalid, json!("checksum:true"), "the focus is on the field at fault");
    screenshot(&b, "deploy").await;
    let (code, _) = http(&c.addr, "GET", "/dedicated/server/db1/bringYourOwnImage", Some(&c.token), None);
    assert_eq!(code, 404, "nothing was deployed");

    // A discovered machine: adopted once it has reported.
    b.goto(&format!("{base}/ui/#/")).await.unwrap();
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("#filter")).await.unwrap();
    b.execute(set, vec![json!("filter"), json!("discovered"), json!("change")]).await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#row-mac_52_54_00_00_00_99 a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#adopt-name"))
        .await
        .unwrap()
        .send_keys("db2")
        .await
        .unwrap();
    b.find(Locator::Css("#adopt")).await.unwrap().click().await.unwrap();
    let refused = "52:54:00:00:00:99 has not reported its hardware yet: adopt it once its agent said hello";
    until(&b, "return document.getElementById('adopt-name-error').textContent", json!(refused)).await;
    let disk = json!({"name": "sda", "sizeBytes": 960_197_124_096u64, "serial": "D2", "transport": "sata"});
    let inv = json!({"inventory": {"firmware": "legacy", "memoryBytes": 32u64 << 30, "disks": [disk],
        "nics": [{"name": "eno1", "mac": "52:54:00:00:00:99", "link": true}]}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(&found), Some(&inv)).0, 200);
    b.refresh().await.unwrap();
    assert_eq!(text(&b, "#hw-h + .facts dd").await, "legacy");
    screenshot(&b, "discovered").await;
    b.find(Locator::Css("#adopt-name")).await.unwrap().send_keys("db2").await.unwrap();
    b.find(Locator::Css("#adopt")).await.unwrap().click().await.unwrap();
    until(&b, "return document.querySelector('main h1')?.textContent ?? null", json!("db2")).await;
    assert_eq!(text(&b, "#hw-h + .facts dd").await, "legacy", "the server has the machine's hardware");

    // Every control has a label, text has WCAG AA contrast, nothing is out
    // of the keyboard's reach, nothing comes from another origin.
    for (page, title) in [("#/", "Fleet"), ("#/server/web1", "web1"), ("#/server/db1/deploy", "Deploy an image on db1")]
    {
        b.goto(&format!("{base}/ui/{page}")).await.unwrap();
        until(&b, "return document.querySelector('main h1')?.textContent ?? null", json!(title)).await;
        assert_eq!(b.execute(LOW_CONTRAST, vec![]).await.unwrap(), json!([]), "{page}");
        let unreachable = "return [...document.querySelectorAll('a, button, input, select, textarea')]
            .filter(e => e.tabIndex < 0 && !e.disabled && e.type !== 'hidden').map(e => e.outerHTML)";
        assert_eq!(b.execute(unreachable, vec![]).await.unwrap(), json!([]), "{page}");
    }
    // The contrast check sees faint text.
    let faint = "const p = document.createElement('p'); p.className = 'faint'; p.textContent = 'faint'; \
        p.style.color = '#aaa'; document.querySelector('main').append(p); return 1";
    b.execute(faint, vec![]).await.unwrap();
    assert_eq!(b.execute(LOW_CONTRAST, vec![]).await.unwrap(), json!(["P.faint: 2.32"]));
    let unlabelled = "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)";
    assert_eq!(b.execute(unlabelled, vec![]).await.unwrap(), json!([]));
    let foreign =
        "return performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith(location.origin))";
    assert_eq!(b.execute(foreign, vec![]).await.unwrap(), json!([]));
    b.close().await.unwrap();

    // A phone's screen: the fleet as cards, nothing wider than the screen.
    let phone = driver.browser(390, 844).await;
    phone.goto(&format!("{base}/ui/login")).await.unwrap();
    phone.find(Locator::Css("#token")).await.unwrap().send_keys(&c.token).await.unwrap();
    phone.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    until(&phone, "return document.body.dataset.fleet === 'ready'", json!(true)).await;
    until(&phone, "return document.documentElement.scrollWidth <= window.innerWidth", json!(true)).await;
    screenshot(&phone, "fleet-phone").await;
    phone.close().await.unwrap();
}
