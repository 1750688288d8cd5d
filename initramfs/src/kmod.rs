//! Kernel modules, pure: `modules.dep` (which `.ko` files a module needs,
//! for the initramfs and for loading in order) and `modules.alias` (which
//! module drives a device's `modalias`, for coldplug).

use std::collections::{BTreeMap, BTreeSet};

/// A module's name from its path: `kernel/drivers/net/virtio_net.ko.xz` →
/// `virtio_net` (dashes and underscores are the same to the kernel).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module path → the paths it depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    /// Dependencies by path, as the file lists them.
    pub deps: BTreeMap<String, Vec<String>>,
    /// Path by module name.
    pub by_name: BTreeMap<String, String>,
}

impl ModulesDep {
    /// Parses `modules.dep` (`path: dep dep …` per line).
    pub fn parse(text: &str) -> ModulesDep {
        let mut m = ModulesDep::default();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let path = path.trim().to_owned();
            m.by_name.insert(module_name(&path), path.clone());
            m.deps.insert(path, deps.split_whitespace().map(str::to_owned).collect());
        }
        m
    }

    /// The paths needed to load `names`, dependencies first (a load
    /// order). Unknown names are returned in the second list.
    pub fn closure<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        for name in names {
            match self.by_name.get(&name.replace('-', "_")) {
                Some(path) => self.visit(path, &mut seen, &mut order),
                None => missing.push(name.to_owned()),
            }
        }
        (order, missing)
    }

    fn visit(&self, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        // modules.dep lists the full closure already, but in no load order:
        // recurse so each dependency comes before its users.
        for dep in self.deps.get(path).into_iter().flatten() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_owned());
    }

    /// `modules.dep` restricted to `paths` (the modules in the initramfs).
    pub fn render_subset(&self, paths: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for (path, deps) in &self.deps {
            if paths.contains(path) {
                out.push_str(path);
                out.push(':');
                for d in deps {
                    out.push(' ');
                    out.push_str(d);
                }
                out.push('\n');
            }
        }
        out
    }
}

/// `modules.alias`: (glob pattern, module name) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    entries: Vec<(String, String)>,
}

impl Aliases {
    /// Parses `alias PATTERN MODULE` lines.
    pub fn parse(text: &str) -> Aliases {
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "alias").then_some(())?;
                Some((w.next()?.to_owned(), w.next()?.replace('-', "_")))
            })
            .collect();
        Aliases { entries }
    }

    /// Keeps the aliases of `modules` only.
    pub fn subset(&self, modules: &BTreeSet<String>) -> Aliases {
        Aliases { entries: self.entries.iter().filter(|(_, m)| modules.contains(m)).cloned().collect() }
    }

    /// Renders `modules.alias`.
    pub fn render(&self) -> String {
        self.entries.iter().map(|(p, m)| format!("alias {p} {m}\n")).collect()
    }

    /// The modules whose aliases match a device's `modalias`.
    pub fn matching(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter(|(p, _)| glob(p.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.clone())
            .collect();
        out.dedup();
        out
    }
}

/// `fnmatch(3)` without flags: `*`, `?`, `[…]` (with ranges and `!`/`^`).
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pat` (`[…]`); returns
/// (matched, bytes of the class) or `None` if it is not a class.
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pat.len() {
        if pat[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            if (pat[i]..=pat[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if pat[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/nls/nls_cp437.ko:
";

    #[test]
    fn closure_puts_dependencies_first() {
        let m = ModulesDep::parse(DEP);
        let (order, missing) = m.closure(["virtio_net", "virtio-blk", "nope"]);
        assert_eq!(missing, ["nope"]);
        let pos = |n: &str| order.iter().position(|p| module_name(p) == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_net"));
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert_eq!(order.len(), 6, "{order:?}");
        let subset: BTreeSet<String> = order.into_iter().collect();
        assert!(!m.render_subset(&subset).contains("nls_cp437"));
    }

    #[test]
    fn modalias_matching_like_modprobe() {
        let a = Aliases::parse(
            "# Aliases extracted from modules themselves.
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000001v* virtio_net
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias fs-vfat vfat
alias usb:v*p*d*dc*dsc*dp*ic09isc00ip0[0-2]in* hub",
        );
        assert_eq!(a.matching("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"), ["virtio_pci"]);
        assert_eq!(a.matching("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert_eq!(a.matching("pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02"), ["nvme"]);
        assert_eq!(a.matching("usb:v1D6Bp0002d0601dc09dsc00dp01ic09isc00ip01in00"), ["hub"]);
        assert!(a.matching("usb:v1D6Bp0002d0601dc09dsc00dp01ic09isc00ip05in00").is_empty());
        assert!(a.matching("pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00").is_empty());
        let keep: BTreeSet<String> = ["nvme".to_owned()].into();
        assert_eq!(a.subset(&keep).render(), "alias pci:v*d*sv*sd*bc01sc08i02* nvme\n");
    }

    #[test]
    fn glob_edge_cases() {
        for (p, t, want) in [
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("[!a]x", "bx", true),
            ("[!a]x", "ax", false),
            ("[a-c]", "b", true),
            ("[]]", "]", true),
            ("[", "[", true),
            ("a?c", "abc", true),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} vs {t}");
        }
        assert_eq!(module_name("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz"), "e1000e");
        assert_eq!(module_name("kernel/fs/nls/nls-cp437.ko"), "nls_cp437");
    }
}
