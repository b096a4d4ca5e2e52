//! The image library against a real controller process and the real `qemu-img`: disk images
//! in every format Corral takes are imported through `corral image import` and come out as the
//! same disk; corrupt files, files that are no disk, images that would make QEMU open other
//! host files, and checksum mismatches are refused with the reason, leaving nothing behind.
//! Images are imported from a URL of a small HTTP server the test runs (a 404, a stall, a cut
//! download, a refused connection and other schemes refused, nothing left); an OVA's disk is
//! imported with its descriptor's vCPUs, memory and firmware.
//! (Booting an imported image is a lab trial.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{start, Daemon, TOKEN};

fn corral(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .env("CORRAL_URL", &d.url)
        .env("CORRAL_TOKEN", TOKEN)
        .output()
        .expect("run corral")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
    assert!(o.status.success(), "qemu-img {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

/// A small raw disk: an MBR partition table and some data.
fn raw_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    let mut b = vec![0u8; 4 << 20];
    b[446] = 0x80;
    b[450] = 0x83;
    b[510] = 0x55;
    b[511] = 0xAA;
    for (i, x) in b[1 << 20..(1 << 20) + 4096].iter_mut().enumerate() {
        *x = (i % 251) as u8;
    }
    std::fs::write(&p, b).expect("raw disk");
    p
}

fn library(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.dir.path().join("library"))
        .expect("library")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn images_in_every_format_import_and_export_as_the_same_disk() {
    let c = start("controller").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = raw_disk(tmp.path());
    let raw_s = raw.display().to_string();
    for fmt in ["raw", "qcow2", "vmdk", "vhdx", "vdi", "vpc"] {
        let file = if fmt == "raw" {
            raw.clone()
        } else {
            let f = tmp.path().join(format!("disk.{fmt}"));
            qemu_img(&["convert", "-f", "raw", "-O", fmt, &raw_s, &f.display().to_string()]);
            f
        };
        let name = format!("img-{fmt}");
        let o = corral(&c, &["image", "import", &name, &file.display().to_string(), "--output", "json"]);
        assert!(o.status.success(), "import {fmt}: {}", text(&o));
        let t: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the image as JSON");
        assert_eq!(t["name"], name.as_str());
        assert_eq!(t["boot"], "bios", "{t}");
        assert_eq!(t["guest_agent"], "qemu", "{t}");
        assert!(t["size_bytes"].as_u64().unwrap_or(0) >= 4 << 20, "{fmt}: virtual size {t}");
        let out = tmp.path().join(format!("out-{fmt}.qcow2"));
        let o = corral(&c, &["image", "export", &name, &out.display().to_string()]);
        assert!(o.status.success(), "export {fmt}: {}", text(&o));
        // vpc rounds its size up to its own geometry; the data is the same.
        let o = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2", &raw_s])
            .arg(&out)
            .output()
            .expect("qemu-img");
        assert!(o.status.success(), "{fmt}: the exported disk holds the imported data: {}", text(&o));
    }
    let list = text(&corral(&c, &["image", "list"]));
    assert!(list.contains("img-vmdk") && list.contains("img-vhdx"), "{list}");
    // The old command name still works.
    assert!(text(&corral(&c, &["template", "list"])).contains("img-qcow2"));
    let o = corral(&c, &["image", "import", "img-raw", &raw_s]);
    assert!(!o.status.success() && text(&o).contains("already has an image"), "{}", text(&o));
    let o = corral(&c, &["image", "delete", "img-raw"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!library(&c).iter().any(|f| f.starts_with("img-raw")), "{:?}", library(&c));
    let o = corral(&c, &["image", "delete", "img-raw"]);
    assert!(!o.status.success() && text(&o).contains("no image"), "{}", text(&o));
    // The user cloud-init makes in its guests is kept with the image (`vm ssh` logs in as it).
    let o = corral(&c, &["image", "import", "img-user", &raw_s, "--default-user", "ubuntu", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: serde_json::Value =
        serde_json::from_slice(&corral(&c, &["image", "show", "img-user", "--output", "json"]).stdout)
            .expect("image show's JSON");
    assert_eq!(shown["default_user"], "ubuntu", "{shown}");
    let o = corral(&c, &["image", "import", "img-bad-user", &raw_s, "--default-user", "root;id"]);
    assert!(!o.status.success() && text(&o).contains("invalid user name"), "{}", text(&o));
}

#[tokio::test]
async fn bad_images_are_refused_with_the_reason_and_leave_nothing() {
    let c = start("controller").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = raw_disk(tmp.path());
    let raw_s = raw.display().to_string();
    let p = |n: &str| tmp.path().join(n).display().to_string();

    let text_file = p("notes.txt");
    std::fs::write(&text_file, "not a disk at all\n".repeat(100)).expect("write");
    let backed = p("backed.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &raw_s, &backed]);
    let corrupt = p("corrupt.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &raw_s, &corrupt]);
    {
        // Point the L1 table past the end of the file.
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&corrupt).expect("open");
        f.seek(SeekFrom::Start(40)).expect("seek");
        f.write_all(&0x7fff_0000_0000u64.to_be_bytes()).expect("write");
    }
    let descriptor = p("desc.vmdk");
    std::fs::write(
        &descriptor,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/passwd\" 0\n",
    )
    .expect("write");
    let wrong_sum = "0".repeat(64);
    for (name, args, says) in [
        ("t-text", vec![text_file.as_str()], "no partition table"),
        ("t-backed", vec![backed.as_str()], "backing file"),
        ("t-corrupt", vec![corrupt.as_str()], "refused"),
        ("t-desc", vec![descriptor.as_str()], "VMDK descriptor"),
        ("t-sum", vec![raw_s.as_str(), "--sha256", wrong_sum.as_str()], "checksum mismatch"),
        ("t-sumfmt", vec![raw_s.as_str(), "--sha256", "abc"], "64 hex digits"),
        ("t-fmt", vec![raw_s.as_str(), "--format", "iso"], "unknown disk format"),
        ("t-missing", vec!["/nonexistent.qcow2"], "cannot open"),
        ("t-direct", vec![raw_s.as_str(), "--boot", "direct"], "kernel and an initrd"),
        ("../etc", vec![raw_s.as_str()], "invalid"),
    ] {
        let mut a = vec!["image", "import", name];
        a.extend(args);
        let o = corral(&c, &a);
        assert!(!o.status.success(), "{name} was imported: {}", text(&o));
        assert!(text(&o).contains(says), "{name}: the refusal says {says:?}: {}", text(&o));
    }
    assert_eq!(library(&c), Vec::<String>::new(), "nothing is left in the library");
    // The right checksum is taken.
    let sum = Command::new("sha256sum").arg(&raw).output().expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap_or_default().to_string();
    let o = corral(&c, &["image", "import", "t-ok", &raw_s, "--sha256", &sum]);
    assert!(o.status.success(), "{}", text(&o));
}

/// What the test HTTP server does for a path.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with Content-Length and the whole file.
    File,
    /// 200 without Content-Length: the file, then the connection closes.
    Unsized,
    /// 404.
    Missing,
    /// 200 claiming a size, 64 KiB of it, then nothing (the connection held open for 30 s).
    Stall,
    /// 200 claiming the whole file, half of it, then the connection closes.
    Cut,
    /// 200 claiming 100 GiB (more than the controller takes), then nothing.
    Huge,
}

/// A small HTTP/1.1 server on 127.0.0.1 serving `body` as the routes of [`Answer`] say
/// (`/file`, `/unsized`, `/missing`, `/stall`, `/cut`, `/huge`). It runs on its own threads
/// until the test process ends; each connection is answered once. Answers its base URL.
fn serve(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a test HTTP port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                // The rest of the head.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or_default();
                let answer = match path {
                    "/file" => Answer::File,
                    "/unsized" => Answer::Unsized,
                    "/stall" => Answer::Stall,
                    "/cut" => Answer::Cut,
                    "/huge" => Answer::Huge,
                    _ => Answer::Missing,
                };
                let mut w = conn;
                let ok = |len: u64| {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                };
                let _ = match answer {
                    Answer::File => w.write_all(ok(body.len() as u64).as_bytes()).and_then(|()| w.write_all(&body)),
                    Answer::Unsized => {
                        w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").and_then(|()| w.write_all(&body))
                    }
                    Answer::Missing => w.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
                    ),
                    Answer::Stall | Answer::Huge => {
                        let len = if matches!(answer, Answer::Huge) { 100 << 30 } else { body.len() as u64 };
                        let r = w.write_all(ok(len).as_bytes()).and_then(|()| w.write_all(&body[..64 << 10]));
                        std::thread::sleep(std::time::Duration::from_secs(30));
                        r
                    }
                    Answer::Cut => w
                        .write_all(ok(body.len() as u64).as_bytes())
                        .and_then(|()| w.write_all(&body[..body.len() / 2])),
                };
            });
        }
    });
    base
}

/// The library's images, as `image list` gives them.
fn listed(c: &Daemon) -> Vec<serde_json::Value> {
    let o = corral(c, &["image", "list", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("the list as JSON")
}

/// Waits (a few seconds at most) for the library directory to hold nothing: a cut upload's
/// scratch files go when the controller sees the connection end.
fn library_empties(c: &Daemon) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline && !library(c).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    library(c)
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().expect("sha256sum");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn images_import_from_an_http_url_and_bad_downloads_leave_nothing() {
    let c = start("controller").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = raw_disk(tmp.path());
    let disk = tmp.path().join("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &raw.display().to_string(), &disk.display().to_string()]);
    let base = serve(std::fs::read(&disk).expect("the disk"));

    // Streamed from the URL with its checksum checked; with and without a Content-Length.
    let sum = sha256(&disk);
    for (name, path) in [("from-url", "/file"), ("from-unsized", "/unsized")] {
        let url = format!("{base}{path}");
        let o = corral(&c, &["image", "import", name, "--from-url", &url, "--sha256", &sum, "--output", "json"]);
        assert!(o.status.success(), "import {url}: {}", text(&o));
        let t: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the image as JSON");
        assert_eq!(t["size_bytes"], 4 << 20, "{t}");
    }
    let names: Vec<_> = listed(&c).iter().map(|t| t["name"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(names, ["from-unsized", "from-url"]);
    let out = tmp.path().join("out.qcow2");
    let o = corral(&c, &["image", "export", "from-url", &out.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&raw).arg(&out).output();
    assert!(o.expect("qemu-img").status.success(), "the image holds the served disk");
    for name in ["from-url", "from-unsized"] {
        assert!(corral(&c, &["image", "delete", name]).status.success());
    }

    // A wrong checksum of a download is refused like a file's.
    let wrong = "1".repeat(64);
    let url = format!("{base}/file");
    let refused_port = format!("http://127.0.0.1:{}/x.qcow2", common::free_port());
    let started = std::time::Instant::now();
    for (name, url, extra, says) in [
        ("u-sum", url.as_str(), vec!["--sha256", wrong.as_str()], "checksum mismatch".to_string()),
        ("u-404", &format!("{base}/missing"), vec![], format!("{base}/missing answered 404 Not Found")),
        ("u-stall", &format!("{base}/stall"), vec!["--stall-timeout", "2"], format!("{base}/stall stalled")),
        ("u-cut", &format!("{base}/cut"), vec![], "broke off".to_string()),
        ("u-huge", &format!("{base}/huge"), vec![], "larger than this controller takes".to_string()),
        ("u-refused", refused_port.as_str(), vec![], format!("cannot connect to {refused_port}")),
        ("u-scheme", "ftp://127.0.0.1/x.qcow2", vec![], "only http:// and https://".to_string()),
        ("u-both", url.as_str(), vec!["/etc/hostname"], "cannot be used with".to_string()),
    ] {
        let mut a = vec!["image", "import", name, "--from-url", url];
        a.extend(extra);
        let o = corral(&c, &a);
        assert!(!o.status.success(), "{name} was imported: {}", text(&o));
        assert!(text(&o).contains(&says), "{name}: the refusal says {says:?}: {}", text(&o));
    }
    // The stall was given up on after its 2 s, the huge file at once: not after 30 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(25), "took {:?}", started.elapsed());
    assert_eq!(listed(&c), Vec::<serde_json::Value>::new(), "no image is listed");
    assert_eq!(library_empties(&c), Vec::<String>::new(), "no scratch file is left");
}

/// An OVF descriptor for one VM of 2 vCPUs, 1536 MiB and EFI firmware, whose disk is
/// `disk1.vmdk`, as VMware writes one.
const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType></System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1536</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

/// Tars `files` of `dir` (in that order, the descriptor first) into `out` as ustar.
fn tar(dir: &Path, out: &Path, files: &[&str]) {
    let o = Command::new("tar").args(["--format=ustar", "-cf"]).arg(out).arg("-C").arg(dir).args(files).output();
    let o = o.expect("tar runs");
    assert!(o.status.success(), "tar: {}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test]
async fn an_ova_imports_its_disk_with_its_cpus_memory_and_firmware() {
    let c = start("controller").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = raw_disk(tmp.path());
    let dir = tmp.path().join("appliance");
    std::fs::create_dir(&dir).expect("mkdir");
    let vmdk = dir.join("disk1.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &raw.display().to_string(),
        &vmdk.display().to_string(),
    ]);
    std::fs::write(dir.join("appliance.ovf"), OVF).expect("ovf");
    let manifest = format!(
        "SHA256(appliance.ovf)= {}\nSHA256(disk1.vmdk)= {}\n",
        sha256(&dir.join("appliance.ovf")),
        sha256(&vmdk)
    );
    std::fs::write(dir.join("appliance.mf"), manifest).expect("mf");
    let ova = tmp.path().join("appliance.ova");
    tar(&dir, &ova, &["appliance.ovf", "appliance.mf", "disk1.vmdk"]);

    // Probed as an OVA (no --format).
    let o = corral(&c, &["image", "import", "appliance", &ova.display().to_string(), "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = corral(&c, &["image", "show", "appliance", "--output", "json"]);
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the image as JSON");
    assert_eq!((&t["boot"], &t["vcpus"], &t["memory_mib"]), (&"uefi".into(), &2.into(), &1536.into()), "{t}");
    let shown = text(&corral(&c, &["image", "show", "appliance"]));
    assert!(shown.contains("uefi") && shown.contains("1536M"), "{shown}");
    let out = tmp.path().join("out.qcow2");
    let o = corral(&c, &["image", "export", "appliance", &out.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&raw).arg(&out).output();
    let o = o.expect("qemu-img");
    assert!(o.status.success(), "the image holds the OVA's disk: {}", text(&o));
    // An explicit --boot wins over the OVF's firmware.
    let o = corral(
        &c,
        &[
            "image",
            "import",
            "appliance-bios",
            &ova.display().to_string(),
            "--format",
            "ova",
            "--boot",
            "bios",
            "--output",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the image as JSON");
    assert_eq!(t["boot"], "bios", "{t}");

    // Refusals: a manifest that disagrees, an OVF naming a disk the tar lacks, a tar without
    // an OVF; each leaves nothing.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    std::fs::copy(&vmdk, bad.join("disk1.vmdk")).expect("copy");
    std::fs::write(bad.join("appliance.ovf"), OVF).expect("ovf");
    std::fs::write(bad.join("appliance.mf"), format!("SHA256(disk1.vmdk)= {}\n", "0".repeat(64))).expect("mf");
    std::fs::write(bad.join("other.ovf"), OVF.replace("disk1.vmdk", "disk9.vmdk")).expect("ovf");
    let p = |n: &str| tmp.path().join(n);
    tar(&bad, &p("mismatch.ova"), &["appliance.ovf", "appliance.mf", "disk1.vmdk"]);
    tar(&bad, &p("lacking.ova"), &["other.ovf", "disk1.vmdk"]);
    tar(&bad, &p("no-ovf.ova"), &["disk1.vmdk"]);
    let before = library(&c);
    for (name, file, says) in [
        ("o-mismatch", "mismatch.ova", "the manifest gives SHA256"),
        ("o-lacking", "lacking.ova", "lacks the disk file \"disk9.vmdk\""),
        ("o-no-ovf", "no-ovf.ova", "no .ovf descriptor"),
    ] {
        let o = corral(&c, &["image", "import", name, &p(file).display().to_string(), "--format", "ova"]);
        assert!(!o.status.success(), "{name} was imported: {}", text(&o));
        assert!(text(&o).contains(says), "{name}: the refusal says {says:?}: {}", text(&o));
    }
    assert_eq!(library(&c), before, "the refusals left nothing");
}
