//! The iPXE scripts, rendered from the templates under `ipxe/`.
//!
//! A script names two URLs ([`Urls`]): the netboot listener's, which iPXE
//! fetches scripts, kernel and initramfs from (plain HTTP: iPXE builds
//! rarely carry the operator's CA), and the controller's, which the agent
//! is told on its kernel command line (HTTPS with a private CA, trusted
//! through the CA baked into the initramfs).

/// Where a server reaches the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    /// Scripts, kernel and initramfs, fetched by iPXE.
    pub netboot: String,
    /// The agent protocol, for `byoi.controller=`: one URL, or each
    /// replica's (the agent fails over in this order).
    pub controllers: Vec<String>,
}

/// Which script a server gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script<'a> {
    /// The entry script (`/boot.ipxe`).
    Boot,
    /// Boot the agent to deploy or for rescue.
    Agent {
        /// Server name (a discovered machine's MAC).
        server: &'a str,
        /// `deploy`, `rescue`, `inspect` or `discover`.
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
    /// No server has this MAC; its machine reported its hardware in
    /// discover mode and waits to be adopted: ask again later.
    Discovered {
        /// Its MAC.
        mac: &'a str,
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
const DISCOVERED: &str = include_str!("../../ipxe/discovered.ipxe");

/// Keeps a value from breaking out of its place in a script: iPXE splits
/// on spaces and expands `${…}`.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '$' | '{' | '}' | '\\' | '"' | '\'' | '|' | '&' | '#'))
        .collect()
}

/// Renders a script with the URLs as the server sees them.
pub fn render(script: &Script<'_>, urls: &Urls) -> String {
    let base = clean(urls.netboot.trim_end_matches('/'));
    let controller = urls
        .controllers
        .iter()
        .map(|u| clean(u.trim_end_matches('/')))
        .filter(|u| !u.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    match script {
        Script::Boot => BOOT.replace("{{base}}", &base),
        Script::Agent { server, mode, token, kernel_args } => {
            let extra: String = kernel_args.iter().map(|a| format!(" {}", clean(a))).collect();
            AGENT
                .replace("{{base}}", &base)
                .replace("{{controller}}", &controller)
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
        Script::Discovered { mac } => DISCOVERED.replace("{{base}}", &base).replace("{{mac}}", &clean(mac)),
        Script::Unknown { mac } => UNKNOWN.replace("{{mac}}", &clean(mac)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One listener: both URLs the same.
    fn one(base: &str) -> Urls {
        Urls { netboot: base.to_owned(), controllers: vec![base.to_owned()] }
    }

    /// Snapshot: the deploy script exactly as iPXE receives it.
    #[test]
    fn deploy_script_snapshot() {
        let args = vec!["console=ttyS0,115200".to_owned(), "evil ${x}".to_owned()];
        let s = render(
            &Script::Agent { server: "srv1", mode: "deploy", token: "abc123", kernel_args: &args },
            &one("http://10.0.2.2:8080/"),
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
        assert_eq!(render(&Script::Boot, &one("http://h:1")), "#!ipxe\n# byoi: first script. DHCP (or the firmware) chains here; hand over to the\n# per-server script, keyed by the MAC of the interface that booted.\nchain http://h:1/boot/${netX/mac:hexhyp}\n");
        let local = render(&Script::Local { server: "s" }, &one("http://h:1"));
        assert!(local.ends_with("echo byoi: s boots from its local disk\niseq ${platform} efi && exit || sanboot --no-describe --drive 0x80\n"), "{local}");
        let missing = render(&Script::Missing { dir: "/var/lib/byoi/artifacts" }, &one("http://h:1"));
        assert!(missing.contains("echo byoi: no vmlinuz/initramfs.img in /var/lib/byoi/artifacts\nsleep 10\nchain http://h:1/boot/${netX/mac:hexhyp}\n"), "{missing}");
        let idle = render(&Script::Idle { server: "s", mode: "rescue" }, &one("http://h:1"));
        assert!(idle.ends_with("echo byoi: nothing to do for s (rescue): no boot is expected; asking again in 60 s\nsleep 60\nchain http://h:1/boot/${netX/mac:hexhyp}\n"), "{idle}");
        let discovered = render(&Script::Discovered { mac: "52:54:00:00:00:01" }, &one("http://h:1"));
        assert!(discovered.ends_with("echo byoi: 52:54:00:00:00:01 is discovered and waits to be adopted (byoi server adopt); asking again in 60 s\nsleep 60\nchain http://h:1/boot/${netX/mac:hexhyp}\n"), "{discovered}");
        assert!(render(&Script::Unknown { mac: "52-54-00-00-00-01" }, &one("x"))
            .ends_with("echo byoi: unknown MAC 52-54-00-00-00-01\nexit\n"));
    }

    /// Split listeners: iPXE fetches from the netboot URL, the agent is
    /// pointed at the controller's.
    #[test]
    fn split_urls_send_the_agent_to_the_controller() {
        let urls = Urls {
            netboot: "http://10.0.2.2:8081".to_owned(),
            controllers: vec!["https://byoi.lab:8443/".to_owned(), "https://b.byoi.lab:8443".to_owned()],
        };
        let s = render(&Script::Agent { server: "s", mode: "deploy", token: "t", kernel_args: &[] }, &urls);
        assert!(s.contains("\nkernel http://10.0.2.2:8081/artifacts/vmlinuz initrd=initramfs.img byoi.controller=https://byoi.lab:8443,https://b.byoi.lab:8443 byoi.token=t "), "{s}");
        assert!(s.contains("\ninitrd http://10.0.2.2:8081/artifacts/initramfs.img\n"), "{s}");
        let missing = render(&Script::Missing { dir: "d" }, &urls);
        assert!(missing.contains("chain http://10.0.2.2:8081/boot/"), "{missing}");
    }
}
