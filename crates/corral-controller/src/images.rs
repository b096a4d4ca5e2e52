//! The image library's imports and deletions. An uploaded disk image is received into a
//! temporary file (see [`receive`]: its size bounded, its SHA-256 checked when one was
//! given), examined with `qemu-img info` (typed, see [`ImgInfo`]) and refused when its format
//! is not a disk format Corral takes, when it is corrupt (`qemu-img check`), or when it would
//! make QEMU open other host files (a backing file, an external data file, VMDK extents
//! outside it); then it is converted to qcow2 and its metadata written last, so a cut import
//! never looks like an image.
//! An OVA (see [`ova`]) is unpacked first: its first disk goes through the same checks, and
//! its descriptor's vCPUs, memory and firmware become the image's defaults.

pub mod ova;
mod receive;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use corral_api::image::{Boot, DiskFormat, ImportFormat, ImportImage, DISK_FORMATS};
use corral_api::template_dir::Meta;
use corral_api::{ApiError, Template};

use crate::service::{store_err, Controller};
use crate::tables::VMS;

/// How long examining or converting one image may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(1800);

/// What `qemu-img info --output=json` says of a file: the fields Corral decides on.
#[derive(Debug, Deserialize)]
pub struct ImgInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<FormatSpecific>,
}

/// The format's own details.
#[derive(Debug, Deserialize)]
pub struct FormatSpecific {
    #[serde(default)]
    pub data: FormatData,
}

/// The parts of the format's details that name other files.
#[derive(Debug, Default, Deserialize)]
pub struct FormatData {
    /// qcow2: an external data file.
    #[serde(rename = "data-file", default)]
    pub data_file: Option<String>,
    /// vmdk: the files holding its data.
    #[serde(default)]
    pub extents: Vec<Extent>,
}

#[derive(Debug, Deserialize)]
pub struct Extent {
    pub filename: String,
}

/// Why an image is refused (each says what to do).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    #[error(
        "the file is {0} format, which Corral does not take: give a qcow2, raw, vmdk, vhdx, vpc or vdi disk image"
    )]
    Format(String),
    #[error("the image has a backing file ({0}): it would make QEMU open a file of the controller; flatten it first (qemu-img convert -O qcow2 IN OUT)")]
    Backing(String),
    #[error("the image keeps its data in another file ({0}): flatten it first (qemu-img convert -O qcow2 IN OUT)")]
    DataFile(String),
    #[error("the raw file has no partition table (no MBR or GPT): it is not a bootable disk image; check the file, or give --format")]
    NotADisk,
    #[error("the file is a VMDK descriptor, whose data lives in other files: give a single-file VMDK (monolithicSparse or streamOptimized) or convert it first")]
    Descriptor,
    #[error("the image is corrupt: {0}")]
    Corrupt(String),
    #[error("qemu-img cannot read the file: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Ova(#[from] ova::OvaError),
}

/// Scratch files of one import, removed however it ends (refused, failed, or abandoned when
/// the client goes away mid-upload and the request is dropped).
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The first bytes of a file (up to 1 KiB).
fn head(path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut head = vec![0u8; 1024];
    let n = std::io::Read::read(
        &mut std::fs::File::open(path).map_err(|e| ImageError::Unreadable(e.to_string()))?,
        &mut head,
    )
    .map_err(|e| ImageError::Unreadable(e.to_string()))?;
    head.truncate(n);
    Ok(head)
}

/// Checks what `qemu-img info` found: a known format, and no other file it would open.
pub fn check_info(info: &ImgInfo, path: &Path) -> Result<(), ImageError> {
    if !DISK_FORMATS.contains(&info.format.as_str()) {
        return Err(ImageError::Format(info.format.clone()));
    }
    if let Some(b) = &info.backing_filename {
        return Err(ImageError::Backing(b.clone()));
    }
    if let Some(data) = info.format_specific.as_ref().map(|f| &f.data) {
        if let Some(d) = &data.data_file {
            return Err(ImageError::DataFile(d.clone()));
        }
        let own = path.display().to_string();
        if let Some(e) = data.extents.iter().find(|e| e.filename != own) {
            return Err(ImageError::DataFile(e.filename.clone()));
        }
    }
    Ok(())
}

/// Whether a raw image starts like a disk: an MBR boot signature or a GPT header.
pub fn looks_like_a_disk(head: &[u8]) -> bool {
    let mbr = head.get(510..512) == Some(&[0x55, 0xAA][..]);
    let gpt = head.get(512..520) == Some(&b"EFI PART"[..]);
    mbr || gpt
}

/// Runs `qemu-img ARGS`; its standard output, or its error.
async fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, ImageError> {
    let run = tokio::process::Command::new("qemu-img").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, run)
        .await
        .map_err(|_| ImageError::Unreadable(format!("qemu-img took longer than {} s", QEMU_IMG_TIMEOUT.as_secs())))?
        .map_err(|e| ImageError::Unreadable(format!("cannot run qemu-img: {e}")))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(ImageError::Unreadable(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// `qemu-img info` of a file, as `format` or probed.
pub async fn info(path: &Path, format: Option<&str>) -> Result<ImgInfo, ImageError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["info".as_ref(), "--output=json".as_ref()];
    if let Some(f) = format {
        args.push("-f".as_ref());
        args.push(std::ffi::OsStr::new(f));
    }
    args.push(path.as_os_str());
    let out = qemu_img(&args).await?;
    serde_json::from_slice(&out).map_err(|e| ImageError::Unreadable(format!("unexpected qemu-img info output: {e}")))
}

/// Examines a received file (as `format`, a checked one, or probed) and converts it to the
/// library's qcow2 at `out`; answers its virtual size.
pub async fn examine_and_convert(path: &Path, format: Option<&DiskFormat>, out: &Path) -> Result<u64, ImageError> {
    // A text VMDK descriptor names its data files; qemu-img would open them to read it.
    let head = &head(path)?;
    if head.starts_with(b"# Disk DescriptorFile") {
        return Err(ImageError::Descriptor);
    }
    let info = info(path, format.map(|f| &**f)).await?;
    check_info(&info, path)?;
    if info.format == "raw" && !looks_like_a_disk(head) {
        return Err(ImageError::NotADisk);
    }
    if matches!(info.format.as_str(), "qcow2" | "vmdk" | "vhdx" | "vdi") {
        let f = info.format.as_str();
        if let Err(ImageError::Unreadable(why)) =
            qemu_img(&["check".as_ref(), "-f".as_ref(), f.as_ref(), path.as_os_str()]).await
        {
            return Err(ImageError::Corrupt(why));
        }
    }
    let f = info.format.as_str();
    qemu_img(&[
        "convert".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        f.as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        path.as_os_str(),
        out.as_os_str(),
    ])
    .await?;
    Ok(info.virtual_size)
}

impl Controller {
    fn library_dir(&self) -> Result<PathBuf, ApiError> {
        self.settings
            .templates_dir
            .clone()
            .ok_or_else(|| ApiError::unavailable("this controller has no image library: start it with --templates DIR"))
    }

    /// Imports an image from `body` into the library as `req.name`: a disk image, or an OVA
    /// (`format = ova`, or a tar when no format is given) whose first disk is imported.
    pub async fn import_image(
        &self,
        name: &corral_api::types::Name,
        req: &ImportImage,
        mut body: impl futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
    ) -> Result<Template, ApiError> {
        let dir = self.library_dir()?;
        let name = name.as_str();
        let limit = self.settings.max_image_bytes;
        let too_large = || {
            ApiError::bad_request(format!(
                "the image is larger than this controller takes ({limit} bytes, --max-image-size)"
            ))
        };
        if self.library().iter().any(|t| t.name == name) {
            return Err(ApiError::already_exists(format!(
                "the library already has an image {name:?}: delete it first or choose another name"
            )));
        }
        if req.boot == Some(Boot::Direct) {
            return Err(ApiError::bad_request(
                "boot = direct needs a kernel and an initrd, which an import does not carry: use bios or uefi",
            ));
        }
        if req.size.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        // Named apart per import, so two imports of one name never share a scratch file.
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tmp = dir.join(format!(".import-{name}-{id}.partial"));
        let disk_tmp = dir.join(format!(".import-{name}-{id}.disk.partial"));
        let converted = dir.join(format!(".import-{name}-{id}.qcow2.partial"));
        let _scratch = Scratch(vec![tmp.clone(), disk_tmp.clone(), converted.clone()]);
        let got = receive::receive(&mut body, &tmp, limit, req.sha256.is_some()).await.map_err(|e| match e {
            receive::ReceiveError::TooLarge(_) => too_large(),
            receive::ReceiveError::Cut(_) => ApiError::bad_request(e.to_string()),
            receive::ReceiveError::Io(_) => ApiError::internal(e.to_string()),
        })?;
        let n = got.bytes;
        if let Some(want) = req.size.filter(|want| *want != n) {
            return Err(ApiError::bad_request(format!(
                "the upload was cut: {n} of its {want} bytes arrived; nothing was imported"
            )));
        }
        if let (Some(want), Some(got)) = (req.sha256.as_ref().map(|s| &s.0), got.sha256) {
            if !got.eq_ignore_ascii_case(want) {
                return Err(ApiError::bad_request(format!(
                    "checksum mismatch: the file's SHA-256 is {got}, not {want}; nothing was imported"
                )));
            }
        }
        let refused = |e: ImageError| ApiError::bad_request(format!("image {name:?} refused: {e}"));
        let is_ova = match &req.format {
            Some(ImportFormat::Ova) => true,
            Some(ImportFormat::Disk(_)) => false,
            None => ova::is_ova(&head(&tmp).map_err(refused)?),
        };
        let (disk, format, ovf) = if is_ova {
            let (from, to) = (tmp.clone(), disk_tmp.clone());
            let ovf = tokio::task::spawn_blocking(move || ova::extract_disk(&from, &to, limit))
                .await
                .map_err(|e| ApiError::internal(format!("the OVA's unpacking failed: {e}")))?
                .map_err(|e| refused(e.into()))?;
            // Its disk is out: the archive's room is given back before the conversion.
            let _ = std::fs::remove_file(&tmp);
            (&disk_tmp, None, Some(ovf))
        } else {
            let format = match &req.format {
                Some(ImportFormat::Disk(d)) => Some(d),
                _ => None,
            };
            (&tmp, format, None)
        };
        let size = examine_and_convert(disk, format, &converted).await.map_err(refused)?;
        let _ = std::fs::remove_file(disk);
        let file = format!("{name}.qcow2");
        // An explicit --boot wins over what the OVF says.
        let boot = req.boot.or(ovf.as_ref().and_then(|o| o.firmware).map(Boot::from)).unwrap_or(Boot::Bios);
        let mut firmware = req.firmware.clone().map(|f| f.0).unwrap_or_default();
        if let Some(f) = boot.firmware().filter(|f| !firmware.contains(f)) {
            firmware.insert(0, f);
        }
        let meta = Meta {
            name: name.to_string(),
            kernel: None,
            initrd: None,
            disk: file.clone(),
            boot,
            firmware,
            guest_agent: req.guest_agent.unwrap_or(corral_api::image::GuestAgentKind::Qemu),
            kernel_version: String::new(),
            os: req.os.as_ref().map(|o| o.0.clone()).unwrap_or_else(|| "imported".into()),
            size_bytes: size,
            vcpus: ovf.as_ref().and_then(|o| o.vcpus),
            memory_mib: ovf.as_ref().and_then(|o| o.memory_mib),
            default_user: req.default_user.clone(),
        };
        let done = (|| -> std::io::Result<()> {
            std::fs::rename(&converted, dir.join(&file))?;
            let m = dir.join(format!(".{name}-{id}.json.partial"));
            let written = std::fs::write(&m, serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?)
                .and_then(|()| std::fs::rename(&m, dir.join(format!("{name}.json"))));
            if written.is_err() {
                let _ = std::fs::remove_file(&m);
            }
            written
        })();
        if let Err(e) = done {
            let _ = std::fs::remove_file(dir.join(&file));
            return Err(ApiError::internal(format!("cannot store image {name:?}: {e}")));
        }
        let from = if ovf.is_some() { " from an OVA" } else { "" };
        self.event("image.imported", name, format!("image {name} imported{from} ({size} bytes virtual)"));
        self.templates()?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ApiError::internal("the imported image is not in the library"))
    }

    /// Removes an image from the library; refused while a VM uses it. Hosts keep their copies
    /// until they are re-imaged.
    pub fn delete_image(&self, name: &str) -> Result<(), ApiError> {
        let dir = self.library_dir()?;
        let t = self
            .library()
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ApiError::not_found(format!("the library has no image {name:?}")))?;
        let users: Vec<String> = VMS
            .list(&*self.store)
            .map_err(store_err)?
            .into_iter()
            .filter(|v| v.def.template.as_str() == name)
            .map(|v| v.def.name.to_string())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "image {name:?} is used by VMs {}: delete them first",
                users.join(", ")
            )));
        }
        std::fs::remove_file(dir.join(format!("{name}.json"))).map_err(|e| ApiError::internal(e.to_string()))?;
        for f in t.t.files() {
            let _ = std::fs::remove_file(f);
        }
        self.event("image.deleted", name, format!("image {name} deleted from the library"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(v: serde_json::Value) -> ImgInfo {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn files_that_would_open_other_files_are_refused() {
        let p = Path::new("/lib/.import-x.partial");
        let ok = parsed(
            serde_json::json!({"format": "qcow2", "virtual-size": 1, "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}),
        );
        assert_eq!(check_info(&ok, p), Ok(()));
        let backing =
            parsed(serde_json::json!({"format": "qcow2", "virtual-size": 1, "backing-filename": "/etc/shadow"}));
        assert!(matches!(check_info(&backing, p), Err(ImageError::Backing(_))));
        let data = parsed(
            serde_json::json!({"format": "qcow2", "virtual-size": 1, "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}),
        );
        assert!(matches!(check_info(&data, p), Err(ImageError::DataFile(_))));
        let vmdk = parsed(
            serde_json::json!({"format": "vmdk", "virtual-size": 1, "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/etc/passwd"}]}}}),
        );
        assert!(matches!(check_info(&vmdk, p), Err(ImageError::DataFile(_))));
        let own = parsed(
            serde_json::json!({"format": "vmdk", "virtual-size": 1, "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/lib/.import-x.partial"}]}}}),
        );
        assert_eq!(check_info(&own, p), Ok(()));
        let iso = parsed(serde_json::json!({"format": "dmg", "virtual-size": 1}));
        assert!(matches!(check_info(&iso, p), Err(ImageError::Format(_))));
    }

    #[test]
    fn a_raw_disk_starts_with_a_partition_table() {
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(looks_like_a_disk(&mbr));
        let mut gpt = vec![0u8; 1024];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert!(looks_like_a_disk(&gpt));
        assert!(!looks_like_a_disk(b"just some text, not a disk"));
    }
}
