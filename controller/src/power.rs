//! Power control of servers: `manual` (the operator does it), `command`
//! (an argv template, `{action}` = on/off/cycle), `ipmi` (ipmitool over
//! lanplus).

use std::time::Duration;

use serde::Deserialize;

/// What to do with the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power on.
    On,
    /// Power off.
    Off,
    /// Reset / power cycle.
    Cycle,
}

impl PowerAction {
    /// Lowercase name, as substituted for `{action}`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
        }
    }
}

/// A power driver's settings, as stored with the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Power {
    /// Nothing automatic.
    Manual,
    /// Run a command.
    Command {
        /// argv; `{action}` is replaced.
        argv: Vec<String>,
    },
    /// `ipmitool -I lanplus`.
    Ipmi {
        /// BMC address.
        host: String,
        /// User.
        user: String,
        /// Password (passed through the environment, not argv).
        password: String,
    },
}

/// How long a power command may take.
const TIMEOUT: Duration = Duration::from_secs(60);

impl Power {
    /// Parses and checks stored settings.
    pub fn from_json(v: &serde_json::Value) -> Result<Power, String> {
        let p: Power = serde_json::from_value(v.clone()).map_err(|e| format!("bad power settings: {e}"))?;
        if let Power::Command { argv } = &p {
            if argv.is_empty() {
                return Err("bad power settings: argv is empty".into());
            }
        }
        Ok(p)
    }

    /// Performs `action`. `Ok(false)` for manual: nothing was done.
    pub async fn run(&self, action: PowerAction) -> Result<bool, String> {
        let (argv, env): (Vec<String>, Vec<(&str, String)>) = match self {
            Power::Manual => return Ok(false),
            Power::Command { argv } => (argv.iter().map(|a| a.replace("{action}", action.as_str())).collect(), vec![]),
            Power::Ipmi { host, user, password } => {
                let verb = match action {
                    PowerAction::On => "on",
                    PowerAction::Off => "off",
                    PowerAction::Cycle => "cycle",
                };
                let argv = ["ipmitool", "-I", "lanplus", "-H", host, "-U", user, "-E", "chassis", "power", verb];
                (argv.iter().map(|s| s.to_string()).collect(), vec![("IPMI_PASSWORD", password.clone())])
            }
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(env).kill_on_drop(true);
        let out = tokio::time::timeout(TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("{} did not finish within {}s", argv[0], TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{} failed ({}): {}", argv[0], out.status, err.trim()));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_driver_substitutes_the_action() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let p = Power::from_json(&serde_json::json!({"kind": "command", "argv": ["sh", "-c", format!("echo {{action}} >> {}", log.display())]})).unwrap();
        assert!(p.run(PowerAction::Cycle).await.unwrap());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "cycle\n");
        let bad = Power::from_json(&serde_json::json!({"kind": "command", "argv": ["false"]})).unwrap();
        assert!(bad.run(PowerAction::On).await.unwrap_err().starts_with("false failed"));
        assert!(!Power::Manual.run(PowerAction::Cycle).await.unwrap());
        assert!(Power::from_json(&serde_json::json!({"kind": "telepathy"})).is_err());
    }
}
