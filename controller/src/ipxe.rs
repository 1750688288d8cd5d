//! The iPXE scripts, rendered from the templates under `ipxe/`.

/// Which script a server gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script<'a> {
    /// The entry script (`/boot.ipxe`).
    Boot,
    /// Boot the agent to deploy or for rescue.
    Agent {
        /// Server name.
        server: &'a str,
        /// `deploy` or `rescue`.
        mode: &'a str,
        /// The per-boot agent token.
        token: &'a str,
        /// Extra kernel arguments.
        kernel_args: &'a [String],
    },
    /// Boot the local disk.
    Local {
        /// Server name.
        server: &'a str,
    },
    /// Wanted in the agent, but no boot is expected: nothing is minted;
    /// ask again later.
    Idle {
        /// Server name.
        server: &'a str,
        /// `deploy` or `rescue`.
        mode: &'a str,
    },
    /// The kernel or initramfs is missing.
    Missing {
        /// Where they were looked for.
        dir: &'a str,
    },
    /// No server has this MAC.
    Unknown {
        /// The MAC asked for.
        mac: &'a str,
    },
}

const BOOT: &str = include_str!("../../ipxe/boot.ipxe");
const AGENT: &str = include_str!("../../ipxe/deploy.ipxe");
const LOCAL: &str = include_str!("../../ipxe/local.ipxe");
const IDLE: &str = include_str!("../../ipxe/idle.ipxe");
const MISSING: &str = include_str!("../../ipxe/missing.ipxe");
const UNKNOWN: &str = include_str!("../../ipxe/unknown.ipxe");

/// Keeps a value from breaking out of its place in a script: iPXE splits
/// on spaces and expands `${…}`.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '$' | '{' | '}' | '\\' | '"' | '\'' | '|' | '&' | '#'))
        .collect()
}

/// Renders a script; `base` is the controller's URL as the server sees it.
pub fn render(script: &Script<'_>, base: &str) -> String {
    let base = clean(base.trim_end_matches('/'));
    match script {
        Script::Boot => BOOT.replace("{{base}}", &base),
        Script::Agent { server, mode, token, kernel_args } => {
            let extra: String = kernel_args.iter().map(|a| format!(" {}", clean(a))).collect();
            AGENT
                .replace("{{base}}", &base)
                .replace("{{server}}", &clean(server))
                .replace("{{mode}}", &clean(mode))
                .replace("{{token}}", &clean(token))
                .replace("{{kernel_args}}", &extra)
        }
        Script::Local { server } => LOCAL.replace("{{server}}", &clean(server)),
        Script::Idle { server, mode } => {
            IDLE.replace("{{base}}", &base).replace("{{server}}", &clean(server)).replace("{{mode}}", &clean(mode))
        }
        Script::Missing { dir } => MISSING.replace("{{base}}", &base).replace("{{dir}}", &clean(dir)),
        Script::Unknown { mac } => UNKNOWN.replace("{{mac}}", &clean(mac)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot: the deploy script exactly as iPXE receives it.
    #[test]
    fn deploy_script_snapshot() {
        let args = vec!["console=ttyS0,115200".to_owned(), "evil ${x}".to_owned()];
        let s = render(
            &Script::Agent { server: "srv1", mode: "deploy", token: "abc123", kernel_args: &args },
            "http://10.0.2.2:8080/",
        );
        assert_eq!(
            s,
            "#!ipxe\n# byoi: srv1 boots the in-memory agent (deploy).\necho byoi: booting the agent for srv1 (deploy)\n\
kernel http://10.0.2.2:8080/artifacts/vmlinuz initrd=initramfs.img byoi.controller=http://10.0.2.2:8080 byoi.token=abc123 byoi.mode=deploy ip=${ip}::${gateway}:${netmask} nameserver=${dns} BOOTIF=01-${netX/mac:hexhyp} console=ttyS0,115200 evilx\n\
initrd http://10.0.2.2:8080/artifacts/initramfs.img\nboot\n"
        );
    }

    #[test]
    fn other_scripts_snapshot() {
        assert_eq!(render(&Script::Boot, "http://h:1"), "#!ipxe\n# byoi: first script. DHCP (or the firmware) chains here; hand over to the\n# per-server script, keyed by the MAC of the interface that booted.\nchain http://h:1/boot/${netX/mac:hexhyp}\n");
        let local = render(&Script::Local { server: "s" }, "http://h:1");
        assert!(local.ends_with("echo byoi: s boots from its local disk\niseq ${platform} efi && exit || sanboot --no-describe --drive 0x80\n"), "{local}");
        let missing = render(&Script::Missing { dir: "/var/lib/byoi/artifacts" }, "http://h:1");
        assert!(missing.contains("echo byoi: no vmlinuz/initramfs.img in /var/lib/byoi/artifacts\nsleep 10\nchain http://h:1/boot/${netX/mac:hexhyp}\n"), "{missing}");
        let idle = render(&Script::Idle { server: "s", mode: "rescue" }, "http://h:1");
        assert!(idle.ends_with("echo byoi: nothing to do for s (rescue): no boot is expected; asking again in 60 s\nsleep 60\nchain http://h:1/boot/${netX/mac:hexhyp}\n"), "{idle}");
        assert!(render(&Script::Unknown { mac: "52-54-00-00-00-01" }, "x")
            .ends_with("echo byoi: unknown MAC 52-54-00-00-00-01\nexit\n"));
    }
}
