//! Files only root may read: a VM's directory is 0700, its disk, saved memory, console log and
//! record 0600 (they hold the guest's data), whatever the agent's umask.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a VM directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a file in it.
pub const FILE_MODE: u32 = 0o600;

/// Makes `dir` (and its parents) exist, `dir` itself with mode 0700.
pub fn dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Sets mode 0600 on an existing file (through a symbolic link: on the file it names).
pub fn restrict(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// Creates (or truncates) a file for writing with mode 0600.
pub fn create(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(path)?;
    // An existing file keeps its mode through open: set it.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Makes a file exist with mode 0600, keeping its contents (for files QEMU appends to).
pub fn touch(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new().append(true).create(true).mode(FILE_MODE).open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn directories_are_0700_and_files_0600_whatever_existed() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("vms/web1");
        dir(&d).expect("dir");
        assert_eq!(mode(&d), 0o700);
        let f = d.join("memory.state.partial");
        std::fs::write(&f, b"old").expect("write");
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        create(&f).expect("create").write_all(b"new").expect("write");
        assert_eq!(mode(&f), 0o600);
        let log = d.join("console.log");
        touch(&log).expect("touch");
        assert_eq!(mode(&log), 0o600);
        let disk = d.join("disk.qcow2");
        std::fs::write(&disk, b"x").expect("write");
        restrict(&disk).expect("restrict");
        assert_eq!(mode(&disk), 0o600);
    }
}
