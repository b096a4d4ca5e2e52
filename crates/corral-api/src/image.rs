//! How an image boots and how Corral reaches into its guests: the boot method (a kernel handed
//! to QEMU, or the disk's own boot loader under BIOS or UEFI firmware), the guest agent it
//! carries, and the SSH keys given to cloud-init. Each is parsed and checked on the way in.

use serde::{Deserialize, Serialize};

/// How an image starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Boot {
    /// QEMU loads the image's kernel and initrd (Corral's own busybox guest).
    #[default]
    Direct,
    /// SeaBIOS runs the boot loader on the disk.
    Bios,
    /// OVMF (UEFI) runs the boot loader on the disk's EFI system partition.
    Uefi,
}

words!(wire Boot, "boot method", "direct, bios or uefi", { Direct => "direct", Bios => "bios", Uefi => "uefi" });

impl Boot {
    /// The firmware this boot method runs, if any.
    pub fn firmware(self) -> Option<Firmware> {
        match self {
            Boot::Direct => None,
            Boot::Bios => Some(Firmware::Bios),
            Boot::Uefi => Some(Firmware::Uefi),
        }
    }
}

/// The firmware a disk-booted VM starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    Bios,
    Uefi,
}

words!(wire Firmware, "firmware", "bios or uefi", { Bios => "bios", Uefi => "uefi" });

impl From<Firmware> for Boot {
    fn from(f: Firmware) -> Self {
        match f {
            Firmware::Bios => Boot::Bios,
            Firmware::Uefi => Boot::Uefi,
        }
    }
}

/// The agent inside an image's guests, through which Corral knows the guest is up and runs
/// commands in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GuestAgentKind {
    /// Corral's own (`corral-guest`, port `org.corral.guest.0`), in the busybox image.
    #[default]
    Corral,
    /// The standard QEMU guest agent (`qemu-guest-agent`, port `org.qemu.guest_agent.0`).
    Qemu,
    /// None: the guest is up when QEMU runs, and commands cannot be run in it.
    None,
}

words!(wire GuestAgentKind, "guest agent", "corral, qemu or none", {
    Corral => "corral",
    Qemu => "qemu",
    None => "none",
});

/// A live stream into a VM (`/v1/vms/{name}/streams/{kind}`, a websocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Its serial console, read and write.
    Console,
    /// Its graphical display, as VNC (RFB).
    Vnc,
}

words!(wire StreamKind, "stream", "console or vnc", { Console => "console", Vnc => "vnc" });

/// The query of `PUT /v1/images/{name}` (the body is the image file itself).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportImage {
    /// The file's format (qcow2, raw, vmdk, vhdx, vpc, vdi, or ova: a tar of an OVF
    /// descriptor and its disks); probed when absent.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub format: Option<ImportFormat>,
    /// How it boots: bios (default) or uefi.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub boot: Option<Boot>,
    /// Every firmware it boots under, comma-separated (e.g. `bios,uefi`); `boot`'s when absent.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub firmware: Option<FirmwareList>,
    /// The agent in its guests: qemu (default), none or corral.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub guest_agent: Option<GuestAgentKind>,
    /// The file's SHA-256 (64 hex digits): the import is refused if it differs.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub sha256: Option<Sha256Hex>,
    /// What it is, shown in lists (printable, at most 64 characters).
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub os: Option<Label>,
    /// The file's size in bytes, when the sender knows it: an import larger than the
    /// controller takes is refused before any of it is sent, and one that arrives shorter is
    /// refused as cut.
    #[serde(default)]
    pub size: Option<u64>,
    /// The user cloud-init makes in its guests (`vm ssh` logs in as it by default).
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub default_user: Option<LoginUser>,
}

/// What an import is: a disk image in one of [`DISK_FORMATS`], or an OVA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportFormat {
    Disk(DiskFormat),
    /// An OVA: a tar holding an OVF descriptor (first), an optional manifest and the disks.
    Ova,
}

/// A disk image format Corral imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFormat(String);

impl std::ops::Deref for DiskFormat {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// The formats [`DiskFormat`] takes (`qemu-img`'s names).
pub const DISK_FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "vhdx", "vpc", "vdi"];

/// Several firmware, as `bios,uefi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareList(pub Vec<Firmware>);

/// A SHA-256 as 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(pub String);

/// A short printable label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label(pub String);

/// A login name in a guest (an image's default user, as cloud-init makes it): 1 to 32 of
/// `a-z`, `0-9`, `_` and `-`, not starting with a digit or `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginUser(pub String);

macro_rules! string_type {
    ($t:ty, $parse:expr, $show:expr) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                ($parse)(s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&($show)(self))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_type!(
    DiskFormat,
    |s: &str| if DISK_FORMATS.contains(&s) {
        Ok(DiskFormat(s.to_string()))
    } else {
        Err(format!("unknown disk format {s:?}: use one of {}", DISK_FORMATS.join(", ")))
    },
    |d: &DiskFormat| d.0.clone()
);
string_type!(
    ImportFormat,
    |s: &str| if s == "ova" {
        Ok(ImportFormat::Ova)
    } else if DISK_FORMATS.contains(&s) {
        Ok(ImportFormat::Disk(DiskFormat(s.to_string())))
    } else {
        Err(format!("unknown disk format {s:?}: use one of {}, ova", DISK_FORMATS.join(", ")))
    },
    |f: &ImportFormat| match f {
        ImportFormat::Disk(d) => d.0.clone(),
        ImportFormat::Ova => "ova".to_string(),
    }
);
string_type!(
    FirmwareList,
    |s: &str| s.split(',').map(|f| f.trim().parse::<Firmware>()).collect::<Result<Vec<_>, _>>().map(FirmwareList),
    |l: &FirmwareList| l.0.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
);
string_type!(
    Sha256Hex,
    |s: &str| if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Sha256Hex(s.to_ascii_lowercase()))
    } else {
        Err("a SHA-256 is 64 hex digits (as sha256sum prints it)".to_string())
    },
    |h: &Sha256Hex| h.0.clone()
);
string_type!(
    LoginUser,
    |s: &str| {
        let ok = (1..=32).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-');
        if ok {
            Ok(LoginUser(s.to_string()))
        } else {
            Err(format!("invalid user name {s:?}: use 1 to 32 of a-z, 0-9, _ and -, not starting with a digit or -"))
        }
    },
    |u: &LoginUser| u.0.clone()
);
string_type!(
    Label,
    |s: &str| if !s.is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control) {
        Ok(Label(s.to_string()))
    } else {
        Err("a label is 1 to 64 printable characters".to_string())
    },
    |l: &Label| l.0.clone()
);

/// The public key types an SSH key may have.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The longest key line taken (an RSA 16384-bit key is about 2.8 KB).
const MAX_KEY_LINE: usize = 8192;
/// The longest comment kept.
const MAX_COMMENT: usize = 256;

/// One SSH public key, as a line of `authorized_keys` without options: `TYPE BASE64 [COMMENT]`.
/// The type is a known one, the base64 decodes to a key blob of that same type, and the comment
/// is printable text, so the line can go into a guest's `authorized_keys` (through cloud-init)
/// as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshKey {
    kind: String,
    blob: String,
    comment: Option<String>,
}

impl SshKey {
    /// The key's type, e.g. `ssh-ed25519`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The key as one `authorized_keys` line.
    pub fn line(&self) -> String {
        match &self.comment {
            Some(c) => format!("{} {} {c}", self.kind, self.blob),
            None => format!("{} {}", self.kind, self.blob),
        }
    }
}

impl std::fmt::Display for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line())
    }
}

impl std::str::FromStr for SshKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const HINT: &str = "give an OpenSSH public key line such as the contents of ~/.ssh/id_ed25519.pub";
        let s = s.trim();
        if s.is_empty() {
            return Err(format!("empty SSH key: {HINT}"));
        }
        if s.len() > MAX_KEY_LINE {
            return Err(format!("SSH key is {} bytes long, more than {MAX_KEY_LINE}: {HINT}", s.len()));
        }
        if s.contains(['\n', '\r']) {
            return Err(format!("an SSH key is one line; this has several: {HINT} (one key per --ssh-key)"));
        }
        if s.starts_with("-----BEGIN") || s.contains("PRIVATE KEY") {
            return Err("this is a private key: give the public key (the .pub file) instead".into());
        }
        let mut parts = s.splitn(3, [' ', '\t']);
        let kind = parts.next().unwrap_or_default();
        if !KEY_TYPES.contains(&kind) {
            let shown: String = kind.chars().take(40).collect();
            return Err(format!("unknown SSH key type {shown:?}: use one of {}; {HINT}", KEY_TYPES.join(", ")));
        }
        let blob = parts.next().unwrap_or_default().trim();
        let bytes = base64_decode(blob).ok_or_else(|| format!("the {kind} key's data is not valid base64: {HINT}"))?;
        // The blob starts with its own type as an SSH string (u32 length, then the bytes).
        let inner = bytes
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .and_then(|n| bytes.get(4..4 + n));
        if inner != Some(kind.as_bytes()) {
            return Err(format!(
                "the key's data is not a {kind} key (its type inside differs or it is cut short): {HINT}"
            ));
        }
        let comment = match parts.next().map(str::trim).filter(|c| !c.is_empty()) {
            None => None,
            Some(c) if c.len() > MAX_COMMENT => {
                return Err(format!("the SSH key's comment is longer than {MAX_COMMENT} bytes: shorten it"));
            }
            Some(c) if c.chars().any(char::is_control) => {
                return Err("the SSH key's comment holds control characters: remove them".into());
            }
            Some(c) => Some(c.to_string()),
        };
        Ok(SshKey { kind: kind.to_string(), blob: blob.to_string(), comment })
    }
}

impl Serialize for SshKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.line())
    }
}

impl<'de> Deserialize<'de> for SshKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Standard base64 with padding (as OpenSSH writes keys); `None` if it is not that.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW alice@laptop";

    #[test]
    fn login_users_are_plain_lower_case_names() {
        for good in ["debian", "ubuntu", "cloud-user", "_svc", "a1"] {
            assert_eq!(good.parse::<LoginUser>().unwrap().0, good);
        }
        for bad in ["", "Root", "1abc", "-x", "a b", "root;id", "a\nb", "ab/c", &"a".repeat(33)] {
            let e = bad.parse::<LoginUser>().unwrap_err();
            assert!(e.contains("invalid user name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_public_key_line_round_trips() {
        let k: SshKey = ED.parse().unwrap();
        assert_eq!(k.kind(), "ssh-ed25519");
        assert_eq!(k.line(), ED);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<SshKey>(&json).unwrap(), k);
        let bare: SshKey = ED.rsplit_once(' ').unwrap().0.parse().unwrap();
        assert_eq!(bare.line(), ED.rsplit_once(' ').unwrap().0);
    }

    #[test]
    fn hostile_or_wrong_keys_are_refused_with_a_reason() {
        let blob = ED.split(' ').nth(1).unwrap();
        for (bad, why) in [
            ("", "empty"),
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unknown SSH key type"),
            (&format!("ssh-ed25519 {blob} a\nssh-ed25519 {blob} b"), "one line"),
            ("ssh-ed25519 not*base64", "not valid base64"),
            (&format!("ssh-rsa {blob}"), "not a ssh-rsa key"),
            ("ssh-ed25519 AAAAC3Nz", "not a ssh-ed25519 key"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
            (&format!("ssh-ed25519 {blob} x\u{1b}[2J"), "control characters"),
            (&format!("command=\"rm -rf /\" ssh-ed25519 {blob}"), "unknown SSH key type"),
        ] {
            let err = bad.parse::<SshKey>().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn base64_is_decoded_strictly() {
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs").unwrap(), b"hel");
        for bad in ["aGk", "a=Gk", "aG==k===", "===="] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn boot_words() {
        assert_eq!("uefi".parse::<Boot>().unwrap(), Boot::Uefi);
        assert_eq!(Boot::from(Firmware::Bios), Boot::Bios);
        assert!("efi".parse::<Boot>().unwrap_err().contains("direct, bios or uefi"));
        assert_eq!(serde_json::to_string(&GuestAgentKind::Qemu).unwrap(), "\"qemu\"");
    }

    #[test]
    fn import_formats_are_disk_formats_or_ova() {
        assert_eq!("ova".parse::<ImportFormat>().unwrap(), ImportFormat::Ova);
        assert!(matches!("vmdk".parse::<ImportFormat>().unwrap(), ImportFormat::Disk(d) if &*d == "vmdk"));
        let err = "iso".parse::<ImportFormat>().unwrap_err();
        assert!(err.contains("unknown disk format") && err.contains("ova"), "{err}");
        assert_eq!(serde_json::to_string(&ImportFormat::Ova).unwrap(), "\"ova\"");
    }
}
