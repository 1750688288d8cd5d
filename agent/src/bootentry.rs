//! The boot entry the agent installs on a UEFI server, as a plan: the
//! `Boot####` load option, `BootOrder` and `BootNext` to write, worked out
//! from the firmware's current variables. Variables are read and written
//! through the [`EfiVars`] trait: efivarfs and directories in its format are
//! [`crate::efivars`]'s, [`MemVars`] keeps them in memory for tests. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Mutex, PoisonError};

use crate::efi::{self, LoadOption};

/// `EFI_GLOBAL_VARIABLE`, the vendor GUID of `Boot####`, `BootOrder` and
/// `BootNext` (UEFI §3.3).
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const ATTRS_NV_BS_RT: u32 = 0x7;

/// A store of EFI variables, each named by its name and vendor GUID (in
/// efivarfs's lowercase text form). `Display` says where it is, for
/// messages.
pub trait EfiVars: fmt::Debug + fmt::Display + Send + Sync {
    /// Variable `name` of vendor `guid`: its attributes and data; `None` if
    /// there is none.
    fn read(&self, name: &str, guid: &str) -> io::Result<Option<(u32, Vec<u8>)>>;
    /// Creates or replaces variable `name` of vendor `guid`.
    fn write(&self, name: &str, guid: &str, attrs: u32, data: &[u8]) -> io::Result<()>;
    /// The names of the variables of vendor `guid`, in no particular order.
    fn names(&self, guid: &str) -> io::Result<Vec<String>>;
}

/// All `Boot####` entries of `vars` that decode, by number.
pub fn boot_entries(vars: &dyn EfiVars) -> io::Result<Vec<(u16, LoadOption)>> {
    let mut out = Vec::new();
    for name in vars.names(GLOBAL)? {
        let Some(num) = name.strip_prefix("Boot") else { continue };
        let Ok(n) = u16::from_str_radix(num, 16) else { continue };
        if num.len() != 4 {
            continue;
        }
        if let Some((_, data)) = vars.read(&format!("Boot{n:04X}"), GLOBAL)? {
            if let Some(opt) = efi::parse_load_option(&data) {
                out.push((n, opt));
            }
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// The variables that make the firmware boot our entry next, and after the
/// network entries from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// The `Boot####` number: the entry that already says
    /// [`efi::DESCRIPTION`], else the lowest free one.
    pub number: u16,
    /// The `EFI_LOAD_OPTION` it holds.
    pub load_option: Vec<u8>,
    /// The new `BootOrder`: ours right after the network entries.
    pub boot_order: Vec<u16>,
}

impl BootPlan {
    /// Plans `load_option` against the firmware's `entries` (see
    /// [`boot_entries`]) and `BootOrder`; `None` when all 65536 numbers are
    /// taken.
    pub fn new(load_option: Vec<u8>, entries: &[(u16, LoadOption)], order: &[u16]) -> Option<BootPlan> {
        let number = entries
            .iter()
            .find(|(_, o)| o.description == efi::DESCRIPTION)
            .map(|(n, _)| *n)
            .or_else(|| (0..=0xffffu16).find(|n| !entries.iter().any(|(m, _)| m == n)))?;
        let network = |n: u16| entries.iter().any(|(m, o)| *m == n && efi::is_network(o));
        let boot_order = efi::boot_order_with(order, number, network);
        Some(BootPlan { number, load_option, boot_order })
    }

    /// Reads the firmware's entries and `BootOrder` from `vars`, and plans
    /// `load_option` against them.
    pub fn read(vars: &dyn EfiVars, load_option: Vec<u8>) -> io::Result<BootPlan> {
        let entries = boot_entries(vars)?;
        let order = vars.read("BootOrder", GLOBAL)?.map(|(_, d)| efi::parse_boot_order(&d)).unwrap_or_default();
        BootPlan::new(load_option, &entries, &order).ok_or_else(|| io::Error::other("no free Boot#### number"))
    }

    /// The variables to write, in order: `Boot####`, `BootOrder`, `BootNext`
    /// (all global, [`ATTRS_NV_BS_RT`]). The entry comes first, so that
    /// neither list ever names a number that does not exist.
    pub fn variables(&self) -> [(String, Vec<u8>); 3] {
        [
            (format!("Boot{:04X}", self.number), self.load_option.clone()),
            ("BootOrder".to_owned(), efi::encode_boot_order(&self.boot_order)),
            ("BootNext".to_owned(), self.number.to_le_bytes().to_vec()),
        ]
    }

    /// Writes [`BootPlan::variables`] to `vars`, in order.
    pub fn write(&self, vars: &dyn EfiVars) -> io::Result<()> {
        for (name, data) in self.variables() {
            vars.write(&name, GLOBAL, ATTRS_NV_BS_RT, &data)?;
        }
        Ok(())
    }
}

/// Variables by (name, vendor GUID): attributes and data.
type Store = BTreeMap<(String, String), (u32, Vec<u8>)>;

/// EFI variables in memory, for tests: it also records the names written,
/// in order.
#[derive(Debug, Default)]
pub struct MemVars {
    vars: Mutex<Store>,
    written: Mutex<Vec<String>>,
}

impl MemVars {
    /// No variables.
    pub fn new() -> Self {
        MemVars::default()
    }

    /// The names written so far, in order.
    pub fn written(&self) -> Vec<String> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl fmt::Display for MemVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory")
    }
}

impl EfiVars for MemVars {
    fn read(&self, name: &str, guid: &str) -> io::Result<Option<(u32, Vec<u8>)>> {
        let vars = self.vars.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(vars.get(&(name.to_owned(), guid.to_owned())).cloned())
    }

    fn write(&self, name: &str, guid: &str, attrs: u32, data: &[u8]) -> io::Result<()> {
        let mut vars = self.vars.lock().unwrap_or_else(PoisonError::into_inner);
        vars.insert((name.to_owned(), guid.to_owned()), (attrs, data.to_vec()));
        self.written.lock().unwrap_or_else(PoisonError::into_inner).push(name.to_owned());
        Ok(())
    }

    fn names(&self, guid: &str) -> io::Result<Vec<String>> {
        let vars = self.vars.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(vars.keys().filter(|(_, g)| g == guid).map(|(n, _)| n.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PXE entry as OVMF writes it: `MAC()/IPv4()`.
    fn pxe() -> Vec<u8> {
        let mut path = vec![0x03, 0x0b, 0x25, 0x00, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        path.extend([0u8; 26]);
        path.push(1);
        path.extend([0x03, 0x0c, 0x1b, 0x00]);
        path.extend([0u8; 23]);
        path.extend([0x7f, 0xff, 0x04, 0x00]);
        efi::load_option(efi::LOAD_OPTION_ACTIVE, "UEFI PXEv4", &path)
    }

    fn disk(description: &str) -> Vec<u8> {
        efi::load_option(efi::LOAD_OPTION_ACTIVE, description, &[0x7f, 0xff, 0x04, 0x00])
    }

    fn vars(entries: &[(u16, Vec<u8>)], order: &[u16]) -> MemVars {
        let v = MemVars::new();
        for (n, option) in entries {
            v.write(&format!("Boot{n:04X}"), GLOBAL, ATTRS_NV_BS_RT, option).unwrap();
        }
        v.write("BootOrder", GLOBAL, ATTRS_NV_BS_RT, &efi::encode_boot_order(order)).unwrap();
        v.write("Other", "00000000-0000-0000-0000-000000000000", 0, b"x").unwrap();
        v
    }

    #[test]
    fn plans_number_and_order_from_the_firmware_variables() {
        let ours = disk(efi::DESCRIPTION);
        // (existing entries, BootOrder) → (number, new BootOrder)
        type Case = (Vec<(u16, Vec<u8>)>, Vec<u16>, u16, Vec<u16>);
        let cases: [Case; 4] = [
            (vec![], vec![], 0, vec![0]),
            (vec![(0, pxe()), (1, disk("UEFI Misc Device"))], vec![0, 1], 2, vec![0, 2, 1]),
            (vec![(1, pxe()), (2, disk("UEFI Misc Device"))], vec![1, 2], 0, vec![1, 0, 2]),
            // Our entry from an earlier deployment is reused, not repeated.
            (
                vec![(0, disk("UEFI Misc Device")), (3, disk(efi::DESCRIPTION)), (5, pxe())],
                vec![3, 5, 0],
                3,
                vec![5, 3, 0],
            ),
        ];
        for (entries, order, number, boot_order) in cases {
            let v = vars(&entries, &order);
            let plan = BootPlan::read(&v, ours.clone()).unwrap();
            assert_eq!((plan.number, &plan.boot_order), (number, &boot_order), "{entries:?} {order:?}");
            assert_eq!(plan.load_option, ours);
        }
    }

    #[test]
    fn writes_the_entry_then_the_order_then_boot_next() {
        let v = vars(&[(1, pxe())], &[1]);
        let plan = BootPlan::read(&v, disk(efi::DESCRIPTION)).unwrap();
        let before = v.written().len();
        plan.write(&v).unwrap();
        assert_eq!(v.written()[before..], ["Boot0000", "BootOrder", "BootNext"]);
        assert_eq!(v.read("Boot0000", GLOBAL).unwrap(), Some((ATTRS_NV_BS_RT, disk(efi::DESCRIPTION))));
        assert_eq!(efi::parse_boot_order(&v.read("BootOrder", GLOBAL).unwrap().unwrap().1), [1, 0]);
        assert_eq!(v.read("BootNext", GLOBAL).unwrap(), Some((ATTRS_NV_BS_RT, vec![0, 0])));
    }
}
