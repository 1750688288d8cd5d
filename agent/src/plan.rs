//! From a [`DeploySpec`] and the host to what [`deploy`](crate::deploy)
//! runs: the one place a spec becomes a [`DeployRequest`] and its
//! [`Finishing`] steps, for `byoi-agent deploy` and the netbooted agent
//! alike. A new image option is a field of the spec, its check in
//! `DeploySpec::validate`, and its line here.

use std::sync::Arc;

use byoi_wire::{BootMode, DeploySpec};

use crate::bootentry::EfiVars;
use crate::configdrive::ConfigDrive;
use crate::deploy::DeployRequest;
use crate::finish::{Finishing, Firmware};
use crate::source::SourceOptions;

/// What the agent knows of the machine it deploys on.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// The firmware the host booted with, used when the spec names none.
    pub firmware: Option<BootMode>,
    /// Where to write the boot entry (UEFI only); `None` writes none.
    pub efivars: Option<Arc<dyn EfiVars>>,
    /// The firmware's device path of the target disk (see
    /// [`Finishing::efi_disk`]).
    pub efi_disk: Vec<u8>,
}

/// The request and finishing steps for `spec` on `host`, fetching with
/// `source` (timeouts, retries, trust roots: the host's policy). The
/// spec's headers are added to `source`'s.
pub fn plan(spec: &DeploySpec, host: &Host, mut source: SourceOptions) -> (DeployRequest, Finishing) {
    source.headers.extend(spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let req = DeployRequest {
        url: spec.url.clone(),
        image_type: spec.image_type,
        checksum: spec.checksum.clone(),
        source,
        ova_disk: spec.ova_disk.as_ref().map(ToString::to_string),
    };
    let firmware = match spec.firmware.or(host.firmware) {
        Some(BootMode::Uefi) => Firmware::Uefi,
        Some(BootMode::Legacy) | None => Firmware::Legacy,
    };
    let uefi = firmware == Firmware::Uefi;
    let finishing = Finishing {
        configdrive: spec.configdrive.as_ref().map(ConfigDrive::from_spec),
        firmware,
        efi_loader: spec.efi_loader.clone(),
        efivars: if uefi { host.efivars.clone() } else { None },
        efi_disk: if uefi { host.efi_disk.clone() } else { Vec::new() },
        outcome: None,
    };
    (req, finishing)
}

#[cfg(test)]
mod tests {
    use byoi_wire::spec::{Blob, ConfigDriveSpec, OvaDisk};
    use byoi_wire::{Checksum, ImageType};

    use super::*;
    use crate::bootentry::MemVars;

    #[test]
    fn every_field_of_the_spec_arrives() {
        let spec = DeploySpec {
            checksum: Some(Checksum::new("md5", "d41d8cd98f00b204e9800998ecf8427e").unwrap()),
            image_type: Some(ImageType::Ova),
            ova_disk: Some(OvaDisk::Index(2)),
            headers: [("X-Auth".to_owned(), "k".to_owned())].into(),
            configdrive: Some(ConfigDriveSpec {
                instance_id: Some("i-1".into()),
                hostname: Some("h".into()),
                user_data: Some(Blob(b"#cloud-config\n".to_vec())),
                ..Default::default()
            }),
            efi_loader: Some("\\EFI\\x.efi".into()),
            firmware: None,
            ..DeploySpec::new("http://x/i.ova")
        };
        let vars: Arc<dyn EfiVars> = Arc::new(MemVars::default());
        let host = Host { firmware: Some(BootMode::Uefi), efivars: Some(vars.clone()), efi_disk: vec![1, 2] };
        let source = SourceOptions { headers: vec![("User-Agent".into(), "t".into())], ..SourceOptions::default() };
        let (req, fin) = plan(&spec, &host, source);
        assert_eq!(req.url, "http://x/i.ova");
        assert_eq!(req.checksum, spec.checksum);
        assert_eq!(req.image_type, Some(ImageType::Ova));
        assert_eq!(req.ova_disk.as_deref(), Some("2"));
        assert_eq!(req.source.headers, [("User-Agent".into(), "t".into()), ("X-Auth".into(), "k".into())]);
        let cd = fin.configdrive.unwrap();
        assert_eq!((cd.instance_id.as_str(), cd.hostname.as_deref()), ("i-1", Some("h")));
        assert_eq!(cd.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(fin.firmware, Firmware::Uefi);
        assert_eq!(fin.efi_loader.as_deref(), Some("\\EFI\\x.efi"));
        assert!(fin.efivars.is_some_and(|v| Arc::ptr_eq(&v, &vars)));
        assert_eq!(fin.efi_disk, vec![1, 2]);
    }

    #[test]
    fn the_spec_firmware_wins_and_legacy_touches_no_variable() {
        let spec = DeploySpec { firmware: Some(BootMode::Legacy), ..DeploySpec::new("http://x/i") };
        let host =
            Host { firmware: Some(BootMode::Uefi), efivars: Some(Arc::new(MemVars::default())), efi_disk: vec![1] };
        let (_, fin) = plan(&spec, &host, SourceOptions::default());
        assert_eq!((fin.firmware, fin.efivars.is_none(), fin.efi_disk.len()), (Firmware::Legacy, true, 0));
        assert!(fin.configdrive.is_none());
    }
}
