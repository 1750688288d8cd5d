//! A holder of the API token: what a POST may not smuggle past the
//! controller. Bodies the agent would refuse later are refused at once,
//! with a 400 naming the field and never echoing a secret, and nothing is
//! stored; the `command` power driver runs only what the controller's own
//! `--power-commands` file names, in a clean environment.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common::Controller;

/// Secret-looking content the answers must never echo.
const SECRET: &str = "s3cret-value";

/// Registers `name` with manual power.
fn add_manual(c: &Controller, name: &str) {
    let r = c.api("POST", "/dedicated/server", Some(&json!({"serviceName": name, "macs": ["52:54:00:00:00:01"]})));
    assert_eq!(r.status, 201, "{}", r.text());
}

/// The controller's power commands, as its operator would write them.
fn commands_file(dir: &Path, commands: &Value) -> PathBuf {
    let path = dir.join("power-commands.json");
    std::fs::write(&path, commands.to_string()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

#[test]
fn deployments_the_agent_would_refuse_are_refused_at_post() {
    let c = Controller::start(&[]);
    add_manual(&c, "web1");
    let url = "http://img.example/debian.qcow2";
    let efi = "; expected a path on the EFI system partition such as \\efi\\debian\\grubx64.efi.";
    // 15 MiB of user data fit once, not four times (one copy per OpenStack
    // metadata version) in the 64 MiB ConfigDrive.
    let user_data = SECRET.repeat((15 << 20) / SECRET.len() + 1);
    let cases: Vec<(Value, String)> = vec![
        (
            json!({"URL": url, "httpHeaders": {"Host": SECRET}}),
            "Bad httpHeader \"Host\": the image download sets it itself.".into(),
        ),
        (
            json!({"URL": url, "httpHeader": {"range": "bytes=0-"}}),
            "Bad httpHeader \"range\": the image download sets it itself.".into(),
        ),
        (
            json!({"URL": url, "httpHeaders": {"Content-Length": "1"}}),
            "Bad httpHeader \"Content-Length\": the image download sets it itself.".into(),
        ),
        (
            json!({"URL": url, "httpHeaders": {"Transfer-Encoding": "chunked"}}),
            "Bad httpHeader \"Transfer-Encoding\": the image download sets it itself.".into(),
        ),
        (
            json!({"URL": url, "httpHeaders": {"Authorization": format!("Bearer {SECRET}\r\nX-Evil: 1")}}),
            "Bad httpHeader \"Authorization\": its value holds a control character.".into(),
        ),
        (
            json!({"URL": url, "httpHeaders": {"Authorization": format!("Bearer {SECRET}\u{1b}[2J")}}),
            "Bad httpHeader \"Authorization\": its value holds a control character.".into(),
        ),
        (
            json!({"URL": url, "httpHeaders": {"X-Evil\r\nHost": "x"}}),
            "Bad httpHeader \"X-Evil\\r\\nHost\": not a valid header name.".into(),
        ),
        (
            json!({"URL": url, "configdrive": {"enable": true, "sshKey": "ssh-ed25519 AAAA a\nssh-rsa BBBB evil"}}),
            "Bad sshKey: one public key on one line, as in authorized_keys.".into(),
        ),
        (
            json!({"URL": url, "configdrive": {"enable": true, "sshKey": "ssh-ed25519 AAAA a\u{2028}ssh-rsa B"}}),
            "Bad sshKey: one public key on one line, as in authorized_keys.".into(),
        ),
        (
            json!({"URL": url, "configdrive": {"enable": true, "userData": user_data}}),
            format!(
                "The configdrive does not fit in its 64 MiB partition: userData ({} bytes), networkData (0 bytes) \
                 and metadata (up to 512 bytes) are written 4 times, {} bytes in all, at most 62914560.",
                user_data.len(),
                (user_data.len() + 512) * 4
            ),
        ),
        (
            json!({"URL": url, "efiBootloaderPath": "\\EFI\\..\\..\\x.efi"}),
            format!("Bad efiBootloaderPath \"\\\\EFI\\\\..\\\\..\\\\x.efi\": '.' and '..' are not file names{efi}"),
        ),
        (
            json!({"URL": url, "efiBootloaderPath": "\\EFI\\x\u{1}.efi"}),
            format!(
                "Bad efiBootloaderPath \"\\\\EFI\\\\x\\u{{1}}.efi\": a name may hold printable ASCII but not \" * : < > ? |{efi}"
            ),
        ),
        (
            json!({"URL": url, "efiBootloaderPath": "\\"}),
            format!("Bad efiBootloaderPath \"\\\\\": no file name{efi}"),
        ),
        (
            json!({"URL": url, "description": "debian\u{1b}]0;owned\u{7}"}),
            "Bad description: control characters are not allowed.".into(),
        ),
    ];
    for (body, want) in cases {
        let r = c.api("POST", "/dedicated/server/web1/bringYourOwnImage", Some(&body));
        let shown = r.text();
        let shown = &shown[..shown.len().min(300)];
        assert_eq!(r.status, 400, "{shown}");
        assert_eq!(r.json()["message"], want, "{shown}");
        assert!(!r.text().contains(SECRET), "a secret was echoed: {shown}");
    }
    // Nothing was stored, nothing was started.
    let r = c.api("GET", "/dedicated/server/web1/bringYourOwnImage", None);
    assert_eq!((r.status, r.json()["message"].as_str()), (404, Some("No deployment on web1")));
    let r = c.api("GET", "/dedicated/server/web1", None);
    assert_eq!(r.json()["deployments"], json!([]));
    assert_eq!(r.json()["bootTarget"], "local");
    // The same spec, valid, is taken.
    let ok =
        json!({"URL": url, "efiBootloaderPath": "/EFI/debian/shimx64.efi", "httpHeaders": {"Authorization": SECRET}});
    let r = c.api("POST", "/dedicated/server/web1/bringYourOwnImage", Some(&ok));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn server_names_that_mean_something_else_are_refused() {
    let c = Controller::start(&[]);
    for name in [".", "..", "-rf", "a/b", "a\nb", "\u{1b}[2J"] {
        let body = json!({"serviceName": name, "macs": ["52:54:00:00:00:01"]});
        let r = c.api("POST", "/dedicated/server", Some(&body));
        assert_eq!(r.status, 400, "{name:?}: {}", r.text());
        let want = format!(
            "Bad serviceName {name:?}: letters, digits, '-', '_' and '.', at most 128, not '.' or '..', not starting with '-'"
        );
        assert_eq!(r.json()["message"], want);
    }
    assert_eq!(c.api("GET", "/dedicated/server", None).json(), json!([]));
}

/// The API cannot make the controller run a program: an argv or an
/// ipmitool path is refused, a command is one the controller's
/// configuration names, and it runs without the controller's environment.
#[test]
fn power_commands_come_from_the_controllers_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("env");
    let pwned = work.path().join("pwned");
    let script = format!("env > {0}; echo {{server}} {{action}} >> {0}", out.display());
    let commands = commands_file(work.path(), &json!({"dump-env": ["sh", "-c", script]}));
    // The token is in the controller's environment too: it must not leak.
    let token = "t0ken-in-the-environment";
    std::fs::write(dir.path().join("api-token"), token).unwrap();
    let c = Controller::start_with_env(
        dir,
        &["--power-commands", commands.to_str().unwrap()],
        &[("BYOI_HOSTILE_MARKER", "inherited"), ("BYOI_API_TOKEN", token), ("LD_PRELOAD", "")],
    );
    assert_eq!(c.token, token);

    let server = |power: Value| json!({"serviceName": "web1", "macs": ["52:54:00:00:00:01"], "power": power});
    let refused = [
        (
            json!({"kind": "command", "argv": ["sh", "-c", format!("touch {}", pwned.display())]}),
            "bad power settings: a command driver names a power command of the controller's configuration \
             ({\"kind\": \"command\", \"name\": …}); the API cannot give an argv",
        ),
        (
            json!({"kind": "command", "name": "dump-env", "argv": ["sh"]}),
            "bad power settings: a command driver names a power command of the controller's configuration \
             ({\"kind\": \"command\", \"name\": …}); the API cannot give an argv",
        ),
        (
            json!({"kind": "command", "name": "lab-pdu"}),
            "no power command named \"lab-pdu\" in the controller's configuration (byoi serve --power-commands)",
        ),
        (
            json!({"kind": "ipmi", "host": "h", "user": "u", "password": SECRET, "tool": "/bin/sh"}),
            "bad power settings: the ipmitool to run is the controller's (byoi serve --ipmitool); \
             the API cannot choose it",
        ),
    ];
    for (power, want) in refused {
        let r = c.api("POST", "/dedicated/server", Some(&server(power)));
        assert_eq!((r.status, r.json()["message"].as_str()), (400, Some(want)), "{}", r.text());
        assert!(!r.text().contains(SECRET));
    }
    assert_eq!(c.api("GET", "/dedicated/server", None).json(), json!([]));
    assert!(!pwned.exists());

    // The configured command, by name, runs at the deployment's power cycle.
    let r = c.api("POST", "/dedicated/server", Some(&server(json!({"kind": "command", "name": "dump-env"}))));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["power"], json!({"kind": "command"}));
    let r = c.api("POST", "/dedicated/server/web1/bringYourOwnImage", Some(&json!({"URL": "http://img.example/i"})));
    assert_eq!((r.status, r.json()["powerCycle"].as_str()), (200, Some("done")), "{}", r.text());
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(env.ends_with("\nweb1 cycle\n"), "{env}");
    let mut names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=')).map(|(n, _)| n).collect();
    // What sh sets for itself.
    names.retain(|n| !matches!(*n, "PWD" | "OLDPWD" | "SHLVL" | "_"));
    assert_eq!(names, ["PATH"], "{env}");
    assert!(env.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"), "{env}");
    assert!(!env.contains(token) && !env.contains("inherited"), "{env}");
}
