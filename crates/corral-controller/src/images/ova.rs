//! OVA files as the image library takes them. An OVA is a tar holding an OVF descriptor (an
//! XML file, first), an optional manifest of digests (`.mf`) and the disks. The descriptor is
//! read into memory (bounded) and parsed as XML into what an image needs ([`Ovf`]): its one
//! virtual system's first disk, and the vCPUs, memory and firmware that become the image's
//! defaults. The manifest's digests of the descriptor and the disk are checked, and exactly
//! that disk's entry is copied to a file the caller names, for the usual examination.
//!
//! No name read from the archive is ever used as a host path: entries are matched by name and
//! copied by content, so an entry called `../../etc/passwd` is only a string that matches
//! nothing (or is copied to the caller's file like any other).

use std::io::{Read, Write};
use std::path::Path;

use corral_api::image::Firmware;
use corral_api::types::{check_memory_mib, check_vcpus};
use sha2::digest::DynDigest;

/// The largest OVF descriptor read (real ones are a few KiB).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// The largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The most XML nodes a descriptor may have.
const MAX_XML_NODES: u32 = 100_000;

/// Whether a file starts like a tar archive (POSIX ustar or GNU: "ustar" at offset 257).
pub fn is_ova(head: &[u8]) -> bool {
    head.get(257..262) == Some(&b"ustar"[..])
}

/// Why an OVA is refused (each says what is wrong and, where it can, what to do).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OvaError {
    #[error("the OVA is not a readable tar archive: {0}")]
    Tar(String),
    #[error("the OVA holds no .ovf descriptor: an OVA is a tar whose first file is the OVF (for a plain disk image, give its --format)")]
    NoDescriptor,
    #[error("the OVA holds two OVF descriptors ({0:?} and {1:?}): import an OVA of one appliance")]
    TwoDescriptors(String, String),
    #[error("the OVF descriptor {0:?} is larger than {MAX_DESCRIPTOR_BYTES} bytes: it is not a real descriptor")]
    DescriptorTooLarge(String),
    #[error("the manifest {0:?} is larger than {MAX_MANIFEST_BYTES} bytes: it is not a real manifest")]
    ManifestTooLarge(String),
    #[error("the OVF descriptor is not XML: {0}")]
    NotXml(String),
    #[error("the OVF descriptor's root element is <{0}>, not an OVF <Envelope>")]
    NotOvf(String),
    #[error("the OVF describes no VirtualSystem: it has no VM to import")]
    NoSystem,
    #[error("the OVF describes {0} virtual systems: only an OVA of one VirtualSystem is supported; export the VMs one by one")]
    SeveralSystems(usize),
    #[error("the OVF names no disk (no DiskSection Disk with an ovf:fileRef): there is nothing to boot from")]
    NoDisk,
    #[error("the OVF's disk {disk:?} refers to file {file_ref:?}, which its References section does not list")]
    UnknownFile { disk: String, file_ref: String },
    #[error("the OVF's virtual system attaches disk {0:?}, which its DiskSection does not describe")]
    UnknownDisk(String),
    #[error("the OVA lacks the disk file {0:?} its OVF names")]
    MissingDisk(String),
    #[error("the OVA holds two entries named {0:?}: it is ambiguous which is the disk")]
    Duplicate(String),
    #[error(
        "the OVA's entry {0:?} is not a regular file (a link, a directory or a sparse file): re-export the appliance"
    )]
    NotAFile(String),
    #[error(
        "the OVA's entry {name:?} is {size} bytes, larger than this controller takes ({limit} bytes, --max-image-size)"
    )]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("the OVA's entry {0:?} is cut short: the file is truncated")]
    Truncated(String),
    #[error(
        "the manifest gives {algo} {want} for {file:?}, but the file's is {got}: the OVA is damaged or was altered"
    )]
    Mismatch { algo: &'static str, file: String, want: String, got: String },
    #[error("the OVF's {what} is not usable: {why}")]
    BadValue { what: &'static str, why: String },
    #[error("cannot write the OVA's disk out: {0}")]
    Io(String),
}

/// What an OVF descriptor says that an image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovf {
    /// The name (`ovf:href`) of its first disk's file in the archive.
    pub disk_file: String,
    /// Its vCPUs (ResourceType 3), checked as a VM's.
    pub vcpus: Option<u32>,
    /// Its memory in MiB (ResourceType 4, in its allocation units), checked as a VM's.
    pub memory_mib: Option<u64>,
    /// The firmware it boots with, when it says.
    pub firmware: Option<Firmware>,
}

/// The local name of an element or attribute, whatever its namespace: OVF 1 and 2, VMware's
/// and VirtualBox's extensions spell the same things in different namespaces.
fn named<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name
}

fn children<'a, 'i: 'a>(n: roxmltree::Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    n.children().filter(move |c| named(*c, name))
}

fn attr<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attributes().find(|a| a.name() == name).map(|a| a.value())
}

/// The trimmed text of `n`'s child element `name`.
fn child_text<'a>(n: roxmltree::Node<'a, '_>, name: &'a str) -> Option<&'a str> {
    children(n, name).next().and_then(|c| c.text()).map(str::trim)
}

/// Parses an OVF descriptor.
pub fn parse_ovf(text: &str) -> Result<Ovf, OvaError> {
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_XML_NODES };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| OvaError::NotXml(e.to_string()))?;
    let root = doc.root_element();
    if !named(root, "Envelope") {
        return Err(OvaError::NotOvf(root.tag_name().name().to_string()));
    }
    let systems: Vec<_> = root.descendants().filter(|n| named(*n, "VirtualSystem")).collect();
    let system = match systems.as_slice() {
        [] => return Err(OvaError::NoSystem),
        [one] => *one,
        more => return Err(OvaError::SeveralSystems(more.len())),
    };
    // File id -> its name in the archive; disk id -> its file id.
    let files: Vec<(&str, &str)> = children(root, "References")
        .flat_map(|r| children(r, "File"))
        .filter_map(|f| Some((attr(f, "id")?, attr(f, "href")?)))
        .collect();
    let disks: Vec<(&str, &str)> = children(root, "DiskSection")
        .flat_map(|s| children(s, "Disk"))
        .filter_map(|d| Some((attr(d, "diskId")?, attr(d, "fileRef")?)))
        .collect();
    let hardware = children(system, "VirtualHardwareSection").next();
    let items: Vec<_> = hardware.into_iter().flat_map(|h| h.children().filter(|c| c.is_element())).collect();
    let resource = |n: roxmltree::Node| child_text(n, "ResourceType").and_then(|t| t.parse::<u32>().ok());

    // The first disk drive (ResourceType 17) the system attaches, else the first disk.
    let attached = items.iter().filter(|i| resource(**i) == Some(17)).find_map(|i| child_text(*i, "HostResource"));
    let file_ref = match attached {
        Some(res) if res.contains("/file/") => res.rsplit('/').next().unwrap_or_default().to_string(),
        Some(res) => {
            let id = res.rsplit('/').next().unwrap_or_default();
            let (_, f) = disks.iter().find(|(d, _)| *d == id).ok_or_else(|| OvaError::UnknownDisk(id.to_string()))?;
            f.to_string()
        }
        None => disks.first().map(|(_, f)| f.to_string()).ok_or(OvaError::NoDisk)?,
    };
    let disk_file =
        files.iter().find(|(id, _)| *id == file_ref).map(|(_, href)| href.to_string()).ok_or_else(|| {
            let disk = disks.iter().find(|(_, f)| *f == file_ref).map(|(d, _)| d.to_string()).unwrap_or_default();
            OvaError::UnknownFile { disk, file_ref: file_ref.clone() }
        })?;

    let mut vcpus = None;
    let mut memory_mib = None;
    for i in &items {
        let quantity = || child_text(*i, "VirtualQuantity").unwrap_or_default();
        match resource(*i) {
            Some(3) if vcpus.is_none() => {
                let bad = |why: String| OvaError::BadValue { what: "vCPU count (ResourceType 3)", why };
                let n = quantity().parse::<u32>().map_err(|_| bad(format!("{:?} is not a number", quantity())))?;
                vcpus = Some(check_vcpus(n).map_err(bad)?);
            }
            Some(4) if memory_mib.is_none() => {
                let units = child_text(*i, "AllocationUnits").unwrap_or_default();
                memory_mib = Some(memory(quantity(), units)?);
            }
            _ => {}
        }
    }
    Ok(Ovf { disk_file, vcpus, memory_mib, firmware: firmware(system) })
}

/// Memory of `quantity` in `units` (DMTF programmatic units such as `byte * 2^20`, or the
/// names `MegaBytes`, `MB`, ...; MiB when absent, as ovftool and VirtualBox mean), in MiB.
pub fn memory(quantity: &str, units: &str) -> Result<u64, OvaError> {
    let bad = |why: String| OvaError::BadValue { what: "memory size (ResourceType 4)", why };
    let n: u64 = quantity.parse().map_err(|_| bad(format!("{quantity:?} is not a number")))?;
    let unit = unit_bytes(units).ok_or_else(|| bad(format!("unknown allocation units {units:?}")))?;
    let bytes = n.checked_mul(unit).ok_or_else(|| bad(format!("{n} × {units} is too large")))?;
    check_memory_mib(bytes >> 20).map_err(bad)
}

/// Bytes in one allocation unit.
fn unit_bytes(units: &str) -> Option<u64> {
    let s: String = units.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    let named = match s.as_str() {
        "" | "megabytes" | "megabyte" | "mb" | "mib" => Some(1 << 20),
        "byte" | "bytes" | "b" => Some(1),
        "kilobytes" | "kilobyte" | "kb" | "kib" => Some(1 << 10),
        "gigabytes" | "gigabyte" | "gb" | "gib" => Some(1 << 30),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let (base, exp) = s.strip_prefix("byte*")?.split_once('^')?;
    let exp: u32 = exp.parse().ok()?;
    match base {
        "2" if exp < 63 => Some(1 << exp),
        "10" => 10u64.checked_pow(exp),
        _ => None,
    }
}

/// The firmware the system says it boots with: VMware's `<vmw:Config vmw:key="firmware"
/// vmw:value="efi"/>`, VirtualBox's `<Firmware type="EFI"/>`, or an `efi` word in its
/// VirtualSystemType.
fn firmware(system: roxmltree::Node) -> Option<Firmware> {
    let word = |v: &str| {
        let v = v.trim().to_ascii_lowercase();
        if v.starts_with("efi") || v == "uefi" {
            Some(Firmware::Uefi)
        } else if v == "bios" {
            Some(Firmware::Bios)
        } else {
            None
        }
    };
    let nodes = || system.descendants().filter(|n| n.is_element());
    let vmware = nodes()
        .filter(|n| named(*n, "Config") && attr(*n, "key") == Some("firmware"))
        .find_map(|n| attr(n, "value").and_then(word));
    let vbox = || nodes().filter(|n| named(*n, "Firmware")).find_map(|n| attr(n, "type").and_then(word));
    let system_type = || {
        nodes()
            .filter(|n| named(*n, "VirtualSystemType"))
            .filter_map(|n| n.text())
            .flat_map(|t| t.split(|c: char| c.is_whitespace() || c == ',').map(str::to_string).collect::<Vec<_>>())
            .find_map(|w| word(&w).filter(|f| *f == Firmware::Uefi))
    };
    vmware.or_else(vbox).or_else(system_type)
}

/// A digest algorithm a manifest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha1,
    Sha256,
    Sha512,
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
            Algo::Sha512 => "SHA512",
        }
    }

    fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Algo::Sha1 => Box::new(<sha1::Sha1 as sha2::Digest>::new()),
            Algo::Sha256 => Box::new(<sha2::Sha256 as sha2::Digest>::new()),
            Algo::Sha512 => Box::new(<sha2::Sha512 as sha2::Digest>::new()),
        }
    }
}

/// One line of a manifest: `SHA256(disk1.vmdk)= 0123...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algo: Algo,
    pub file: String,
    pub hex: String,
}

/// The digests a manifest lists; lines of another form or algorithm are passed over.
pub fn parse_manifest(text: &str) -> Vec<Digest> {
    text.lines()
        .filter_map(|line| {
            let (lhs, hex) = line.rsplit_once('=')?;
            let (algo, file) = lhs.trim().split_once('(')?;
            let file = file.strip_suffix(')')?;
            let algo = match algo.trim().to_ascii_uppercase().as_str() {
                "SHA1" => Algo::Sha1,
                "SHA256" => Algo::Sha256,
                "SHA512" => Algo::Sha512,
                _ => return None,
            };
            let hex = hex.trim().to_ascii_lowercase();
            hex.bytes().all(|b| b.is_ascii_hexdigit()).then(|| Digest { algo, file: file.to_string(), hex })
        })
        .collect()
}

/// Hashes a file's bytes as the manifest's lines for it ask, then checks them.
struct Check<'a> {
    file: &'a str,
    hashers: Vec<(&'a Digest, Box<dyn DynDigest + Send>)>,
}

impl<'a> Check<'a> {
    fn new(digests: &'a [Digest], file: &'a str) -> Self {
        Check { file, hashers: digests.iter().filter(|d| d.file == file).map(|d| (d, d.algo.hasher())).collect() }
    }

    fn update(&mut self, bytes: &[u8]) {
        for (_, h) in &mut self.hashers {
            h.update(bytes);
        }
    }

    fn verify(self) -> Result<(), OvaError> {
        for (d, h) in self.hashers {
            let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if got != d.hex {
                return Err(OvaError::Mismatch {
                    algo: d.algo.name(),
                    file: self.file.to_string(),
                    want: d.hex.clone(),
                    got,
                });
            }
        }
        Ok(())
    }
}

/// An entry's name as the OVF refers to it (without a leading `./`).
fn entry_name<R: Read>(e: &tar::Entry<R>) -> String {
    let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
    raw.strip_prefix("./").map(str::to_string).unwrap_or(raw)
}

fn tar_err(e: std::io::Error) -> OvaError {
    OvaError::Tar(e.to_string())
}

/// Reads a whole entry of at most `limit` bytes.
fn read_small<R: Read>(e: &mut tar::Entry<R>, limit: u64) -> Result<Option<Vec<u8>>, OvaError> {
    if e.size() > limit {
        return Ok(None);
    }
    let mut b = Vec::with_capacity(e.size() as usize);
    e.take(limit + 1).read_to_end(&mut b).map_err(tar_err)?;
    Ok(Some(b))
}

/// Reads the OVA at `ova` (its entries at most `limit` bytes each), parses its descriptor,
/// checks the manifest's digests, and copies its first disk to `out` (created here).
/// Blocking: run it off the async runtime.
pub fn extract_disk(ova: &Path, out: &Path, limit: u64) -> Result<Ovf, OvaError> {
    let open = || std::fs::File::open(ova).map_err(|e| OvaError::Io(e.to_string()));
    let mut archive = tar::Archive::new(open()?);
    let mut descriptor: Option<(String, Vec<u8>)> = None;
    let mut manifest: Option<String> = None;
    // Every entry: its name and whether it is a regular file.
    let mut names: Vec<(String, bool)> = Vec::new();
    for e in archive.entries_with_seek().map_err(tar_err)? {
        let mut e = e.map_err(tar_err)?;
        let name = entry_name(&e);
        let file = e.header().entry_type().is_file();
        if e.size() > limit {
            return Err(OvaError::TooLarge { name, size: e.size(), limit });
        }
        let lower = name.to_ascii_lowercase();
        if file && lower.ends_with(".ovf") {
            if let Some((first, _)) = &descriptor {
                return Err(OvaError::TwoDescriptors(first.clone(), name));
            }
            let text = read_small(&mut e, MAX_DESCRIPTOR_BYTES)?.ok_or(OvaError::DescriptorTooLarge(name.clone()))?;
            descriptor = Some((name.clone(), text));
        } else if file && lower.ends_with(".mf") && manifest.is_none() {
            let text = read_small(&mut e, MAX_MANIFEST_BYTES)?.ok_or(OvaError::ManifestTooLarge(name.clone()))?;
            manifest = Some(String::from_utf8_lossy(&text).into_owned());
        }
        names.push((name, file));
    }
    let (ovf_name, ovf_bytes) = descriptor.ok_or(OvaError::NoDescriptor)?;
    let digests = manifest.as_deref().map(parse_manifest).unwrap_or_default();
    let mut check = Check::new(&digests, &ovf_name);
    check.update(&ovf_bytes);
    check.verify()?;
    let text = std::str::from_utf8(&ovf_bytes).map_err(|e| OvaError::NotXml(format!("it is not UTF-8: {e}")))?;
    let ovf = parse_ovf(text)?;

    match names.iter().filter(|(n, _)| *n == ovf.disk_file).collect::<Vec<_>>().as_slice() {
        [] => return Err(OvaError::MissingDisk(ovf.disk_file.clone())),
        [(_, true)] => {}
        [(n, false)] => return Err(OvaError::NotAFile(n.clone())),
        _ => return Err(OvaError::Duplicate(ovf.disk_file.clone())),
    }
    let mut archive = tar::Archive::new(open()?);
    for e in archive.entries_with_seek().map_err(tar_err)? {
        let mut e = e.map_err(tar_err)?;
        if entry_name(&e) != ovf.disk_file {
            continue;
        }
        let size = e.size();
        let mut check = Check::new(&digests, &ovf.disk_file);
        let mut f = std::fs::File::create(out).map_err(|e| OvaError::Io(e.to_string()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut copied: u64 = 0;
        loop {
            let n = e.read(&mut buf).map_err(tar_err)?;
            if n == 0 {
                break;
            }
            check.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(|e| OvaError::Io(e.to_string()))?;
            copied += n as u64;
        }
        if copied != size {
            return Err(OvaError::Truncated(ovf.disk_file.clone()));
        }
        f.sync_all().map_err(|e| OvaError::Io(e.to_string()))?;
        check.verify()?;
        return Ok(ovf);
    }
    Err(OvaError::MissingDisk(ovf.disk_file.clone()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A descriptor as VMware's ovftool writes it (trimmed of sections Corral ignores).
    const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool 4.4.1 (build-16812187), UTC time: 2024-03-01T10:00:00.000Z-->
<Envelope vmw:buildId="build-16812187" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="web-disk1.vmdk" ovf:id="file1" ovf:size="1048576"/>
    <File ovf:href="web-disk2.vmdk" ovf:id="file2" ovf:size="65536"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="0"/>
    <Disk ovf:capacity="10" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="1048576"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web">
    <Info>A virtual machine</Info>
    <Name>web</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest"><Info>The kind of installed guest operating system</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>web</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">1</vmw:CoresPerSocket>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>1536MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1536</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 2</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

    /// A descriptor as VirtualBox writes it (OVF 1.0, its own section carrying the firmware).
    const VIRTUALBOX: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="Ubuntu-disk001.vmdk"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="10737418240" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="0b7d2d8a-8c5e-4f0e-9e0f-000000000001"/>
  </DiskSection>
  <VirtualSystem ovf:id="Ubuntu">
    <Info>A virtual machine</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>Ubuntu</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>4 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>4 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>4096 MB of memory</rasd:Caption>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{6a3f0e4c-0000-0000-0000-000000000001}" name="Ubuntu">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="4"/>
        <Memory RAMSize="4096"/>
        <Firmware type="EFI"/>
      </Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"#;

    #[test]
    fn a_vmware_descriptor_gives_its_first_attached_disk_cpus_memory_and_firmware() {
        let ovf = parse_ovf(VMWARE).unwrap();
        assert_eq!(
            ovf,
            Ovf {
                disk_file: "web-disk1.vmdk".into(),
                vcpus: Some(2),
                memory_mib: Some(1536),
                firmware: Some(Firmware::Uefi)
            }
        );
    }

    #[test]
    fn a_virtualbox_descriptor_too() {
        let ovf = parse_ovf(VIRTUALBOX).unwrap();
        assert_eq!(ovf.disk_file, "Ubuntu-disk001.vmdk");
        assert_eq!((ovf.vcpus, ovf.memory_mib, ovf.firmware), (Some(4), Some(4096), Some(Firmware::Uefi)));
        // Without its Firmware element it says nothing of firmware (the image boots BIOS).
        let bios = parse_ovf(&VIRTUALBOX.replace(r#"<Firmware type="EFI"/>"#, "")).unwrap();
        assert_eq!(bios.firmware, None);
        let typed = VIRTUALBOX.replace(r#"<Firmware type="EFI"/>"#, "").replace("virtualbox-2.2", "vmx-19 efi");
        assert_eq!(parse_ovf(&typed).unwrap().firmware, Some(Firmware::Uefi));
    }

    #[test]
    fn memory_honours_its_allocation_units() {
        assert_eq!(memory("1536", "byte * 2^20"), Ok(1536));
        assert_eq!(memory("2", "byte * 2^30"), Ok(2048));
        assert_eq!(memory("2", "GigaBytes"), Ok(2048));
        assert_eq!(memory("512", "MegaBytes"), Ok(512));
        assert_eq!(memory("512", ""), Ok(512));
        assert_eq!(memory("1073741824", "byte"), Ok(1024));
        assert_eq!(memory("1048576", "byte*2^10"), Ok(1024));
        for (q, u, why) in [
            ("16", "byte * 2^20", "invalid memory size"),
            ("lots", "MegaBytes", "not a number"),
            ("1", "hertz * 10^6", "unknown allocation units"),
            ("18446744073709551615", "byte * 2^30", "too large"),
        ] {
            let e = memory(q, u).unwrap_err().to_string();
            assert!(e.contains(why), "{q} {u}: {e}");
        }
    }

    #[test]
    fn descriptors_that_cannot_be_imported_are_refused_with_the_reason() {
        let two = VMWARE.replace(
            "</VirtualSystem>\n</Envelope>",
            "</VirtualSystem>\n<VirtualSystem ovf:id=\"db\"><Info>x</Info></VirtualSystem>\n</Envelope>",
        );
        let two = two.replacen(
            "<VirtualSystem ovf:id=\"web\">",
            "<VirtualSystemCollection><VirtualSystem ovf:id=\"web\">",
            1,
        );
        let two = two.replacen("</Envelope>", "</VirtualSystemCollection></Envelope>", 1);
        let no_disk = VIRTUALBOX
            .replace(r#"<Disk ovf:capacity="10737418240" ovf:diskId="vmdisk1" ovf:fileRef="file1""#, "<Other")
            .replace("<rasd:ResourceType>17</rasd:ResourceType>", "<rasd:ResourceType>15</rasd:ResourceType>");
        let no_file = VIRTUALBOX.replace(r#"ovf:id="file1" "#, r#"ovf:id="file9" "#);
        let too_many_cpus = VIRTUALBOX.replace(
            "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>",
            "<rasd:VirtualQuantity>999</rasd:VirtualQuantity>",
        );
        let bad_cpus = VIRTUALBOX.replace(
            "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>",
            "<rasd:VirtualQuantity>-1</rasd:VirtualQuantity>",
        );
        let dtd = format!(
            "<!DOCTYPE Envelope [<!ENTITY x \"y\">]>\n{}",
            VIRTUALBOX.trim_start_matches("<?xml version=\"1.0\"?>\n")
        );
        for (text, why) in [
            ("this is not XML", "not XML"),
            ("<Envelope><a></b></Envelope>", "not XML"),
            (dtd.as_str(), "not XML"),
            ("<Project xmlns=\"http://maven.apache.org/POM/4.0.0\"/>", "not an OVF <Envelope>"),
            ("<Envelope/>", "no VirtualSystem"),
            (two.as_str(), "only an OVA of one VirtualSystem is supported"),
            (no_disk.as_str(), "names no disk"),
            (no_file.as_str(), "References section does not list"),
            (too_many_cpus.as_str(), "invalid vCPU count 999"),
            (bad_cpus.as_str(), "not a number"),
        ] {
            let e = parse_ovf(text).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        let unknown = VIRTUALBOX.replace("<rasd:HostResource>/disk/vmdisk1", "<rasd:HostResource>/disk/vmdisk7");
        assert_eq!(parse_ovf(&unknown).unwrap_err(), OvaError::UnknownDisk("vmdisk7".into()));
    }

    #[test]
    fn manifests_are_read_line_by_line() {
        let m = "SHA256(web.ovf)= 0A1b\nSHA1(web-disk1.vmdk) = ff00\nMD5(x)= 00\ngarbage\nSHA256(y)= not-hex\n";
        assert_eq!(
            parse_manifest(m),
            vec![
                Digest { algo: Algo::Sha256, file: "web.ovf".into(), hex: "0a1b".into() },
                Digest { algo: Algo::Sha1, file: "web-disk1.vmdk".into(), hex: "ff00".into() },
            ]
        );
    }

    fn hex(algo: Algo, b: &[u8]) -> String {
        let mut h = algo.hasher();
        h.update(b);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A tar of `entries` (name, bytes), as `tar` writes them.
    fn ova(dir: &Path, entries: &[(&str, &[u8])]) -> std::path::PathBuf {
        let p = dir.join("a.ova");
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Set by bytes: the builder's own setter refuses `..`, and a hostile file need not.
            h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        p
    }

    #[test]
    fn the_disk_named_by_the_descriptor_is_copied_out_and_its_digests_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let ovf = VIRTUALBOX.as_bytes();
        let disk = b"KDMV a disk, to the tar at least".repeat(100);
        let mf = format!(
            "SHA256(u.ovf)= {}\nSHA1(Ubuntu-disk001.vmdk)= {}\n",
            hex(Algo::Sha256, ovf),
            hex(Algo::Sha1, &disk)
        );
        let p = ova(tmp.path(), &[("u.ovf", ovf), ("u.mf", mf.as_bytes()), ("./Ubuntu-disk001.vmdk", &disk)]);
        assert!(is_ova(&std::fs::read(&p).unwrap()));
        let out = tmp.path().join("disk.out");
        let got = extract_disk(&p, &out, 1 << 20).unwrap();
        assert_eq!(got.disk_file, "Ubuntu-disk001.vmdk");
        assert_eq!(std::fs::read(&out).unwrap(), disk);

        // A manifest that disagrees with the disk, or with the descriptor.
        let bad = mf.replace(&hex(Algo::Sha1, &disk), &"0".repeat(40));
        let p = ova(tmp.path(), &[("u.ovf", ovf), ("u.mf", bad.as_bytes()), ("Ubuntu-disk001.vmdk", &disk)]);
        let e = extract_disk(&p, &out, 1 << 20).unwrap_err();
        assert!(matches!(&e, OvaError::Mismatch { algo: "SHA1", file, .. } if file == "Ubuntu-disk001.vmdk"), "{e}");
        let altered = VIRTUALBOX.replace("4096", "8192");
        let p =
            ova(tmp.path(), &[("u.ovf", altered.as_bytes()), ("u.mf", mf.as_bytes()), ("Ubuntu-disk001.vmdk", &disk)]);
        assert!(matches!(extract_disk(&p, &out, 1 << 20), Err(OvaError::Mismatch { algo: "SHA256", .. })));
    }

    #[test]
    fn archives_that_cannot_be_imported_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("disk.out");
        let ovf = VIRTUALBOX.as_bytes();
        let disk = vec![7u8; 4096];
        type Case<'a> = (Vec<(&'a str, &'a [u8])>, u64, OvaError);
        let cases: Vec<Case> = vec![
            (vec![("Ubuntu-disk001.vmdk", &disk)], 1 << 20, OvaError::NoDescriptor),
            (vec![("u.ovf", ovf)], 1 << 20, OvaError::MissingDisk("Ubuntu-disk001.vmdk".into())),
            (
                vec![("u.ovf", ovf), ("Ubuntu-disk001.vmdk", &disk), ("Ubuntu-disk001.vmdk", &disk)],
                1 << 20,
                OvaError::Duplicate("Ubuntu-disk001.vmdk".into()),
            ),
            (vec![("u.ovf", ovf), ("v.ovf", ovf)], 1 << 20, OvaError::TwoDescriptors("u.ovf".into(), "v.ovf".into())),
            (
                vec![("u.ovf", ovf), ("Ubuntu-disk001.vmdk", &disk)],
                1024,
                OvaError::TooLarge { name: "u.ovf".into(), size: ovf.len() as u64, limit: 1024 },
            ),
            (vec![("u.ovf", b"<Envelope><VirtualSystem/></Envelope>")], 1 << 20, OvaError::NoDisk),
        ];
        for (entries, limit, want) in cases {
            let p = ova(tmp.path(), &entries);
            assert_eq!(extract_disk(&p, &out, limit).unwrap_err(), want);
        }
        // A disk whose name climbs out of the directory is only a name: matched, copied to `out`.
        let climbing = VIRTUALBOX.replace("Ubuntu-disk001.vmdk", "../../../tmp/evil.vmdk");
        let p = ova(tmp.path(), &[("u.ovf", climbing.as_bytes()), ("../../../tmp/evil.vmdk", &disk)]);
        extract_disk(&p, &out, 1 << 20).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), disk);
        // Not a tar at all.
        let junk = tmp.path().join("junk");
        std::fs::write(&junk, vec![1u8; 2000]).unwrap();
        assert!(matches!(extract_disk(&junk, &out, 1 << 20), Err(OvaError::Tar(_) | OvaError::NoDescriptor)));
    }
}
