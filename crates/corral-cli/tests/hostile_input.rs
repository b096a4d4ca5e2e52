//! Hostile input against the real daemons (issue 11, parts 3 and 6): a `corral agent` and a
//! `corral controller` run as processes on loopback with temporary data directories, and get
//! the exploit inputs (names that are paths or shell, a MAC carrying a QEMU option, an address
//! carrying an nft command, unknown fields). Each is refused with 422 naming the field, and
//! nothing is created, deleted or run. Also the secure defaults: no non-loopback listening
//! without a token, no token file others may read. Needs no QEMU and no root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{start, start_with, token_file, Daemon, TOKEN};

/// POSTs a raw JSON body; returns the status and the error document (or answer).
async fn post(d: &Daemon, path: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", d.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Everything under `dir`, as relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn good_def() -> Value {
    json!({
        "name": "web1",
        "uuid": "6f1c1c52-1a4c-4b7e-9d55-6a1f5d1e2a01",
        "template": "base",
        "vcpus": 1,
        "memory_mib": 128,
        "mac": "02:00:00:00:00:01",
        "ip": "100.64.10.5/24",
        "workload": "idle",
    })
}

/// The hostile variants of a VM definition: the field each one spoils, and the body.
fn hostile_defs() -> Vec<(&'static str, Value)> {
    let with = |field: &str, v: Value| {
        let mut d = good_def();
        d[field] = v;
        d
    };
    let mut extra = good_def();
    extra["romfile"] = json!("/etc/shadow");
    vec![
        ("name", with("name", json!("/"))),
        ("name", with("name", json!("../x"))),
        ("name", with("name", json!("a;touch /tmp/x;b"))),
        ("name", with("name", json!(""))),
        ("name", with("name", json!("x".repeat(64)))),
        ("template", with("template", json!("../../etc"))),
        ("mac", with("mac", json!("02:00:00:00:00:01,romfile=/etc/shadow"))),
        ("mac", with("mac", json!("01:00:5e:00:00:01"))),
        ("ip", with("ip", json!("10.0.0.1\nadd rule bridge corral forward accept"))),
        ("ip", with("ip", json!("10.0.0.1/33"))),
        ("workload", with("workload", json!("idle init=/bin/sh"))),
        ("vcpus", with("vcpus", json!(100000))),
        ("memory_mib", with("memory_mib", json!(0))),
        ("ssh_keys", with("ssh_keys", json!(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\nruncmd: [reboot]"]))),
        ("ssh_keys", with("ssh_keys", json!(["command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"]))),
        ("firmware", with("firmware", json!("uefi,file=/etc/shadow"))),
        ("user_data", with("user_data", json!("#cloud-config\nruncmd: [reboot\n"))),
        ("user_data", with("user_data", json!("#!/bin/sh\nreboot\n"))),
        ("user_data", with("user_data", json!("#cloud-config\n- not\n- a mapping\n"))),
        ("romfile", extra),
    ]
}

fn refused(status: u16, doc: &Value, field: &str, what: &str) {
    let msg = doc["error"].as_str().unwrap_or_default();
    assert_eq!(status, 422, "{what}: expected 422, got {status}: {doc}");
    assert_eq!(doc["kind"], "invalid", "{what}: {doc}");
    assert!(msg.contains(field), "{what}: the message names the field {field:?}: {msg}");
}

#[tokio::test]
async fn the_agent_refuses_hostile_definitions_and_changes_nothing() {
    let tmp_x_before = Path::new("/tmp/x").exists();
    let a = start("agent").await;
    let before = tree(&a.data);
    for (field, def) in hostile_defs() {
        for (path, body) in [
            ("/v1/vms", json!({ "def": def, "start": true })),
            ("/v1/vms/import", json!({ "def": def, "source": "http://127.0.0.1:9" })),
            ("/v1/migrations/incoming", json!({ "def": def, "id": "m1", "postcopy": false })),
        ] {
            let (s, doc) = post(&a, path, &body.to_string()).await;
            refused(s, &doc, field, &format!("POST {path} with a bad {field} ({})", def[field]));
        }
    }
    // Unknown fields in the wrapping bodies too, and a source that is not an agent URL.
    let (s, doc) = post(&a, "/v1/vms", &json!({ "def": good_def(), "start": false, "x": 1 }).to_string()).await;
    refused(s, &doc, "unknown field `x`", "an unknown field");
    let (s, doc) = post(&a, "/v1/vms/import", &json!({ "def": good_def(), "source": "file:///etc" }).to_string()).await;
    refused(s, &doc, "source", "a file: source");
    // Names in the path are checked as well.
    for path in ["/v1/vms/a;touch%20%2Ftmp%2Fx;b/actions/start", "/v1/vms/..%2Fx/actions/stop"] {
        let (s, doc) = post(&a, path, "{}").await;
        refused(s, &doc, "invalid name", path);
    }
    assert_eq!(tree(&a.data), before, "the agent's data directory is unchanged");
    assert!(tmp_x_before || !Path::new("/tmp/x").exists(), "/tmp/x was not created");
    // The valid definition is refused for another reason (no such template here): 400, so the
    // 422s above come from the checks, not from everything being refused.
    let (s, doc) = post(&a, "/v1/vms", &json!({ "def": good_def(), "start": false }).to_string()).await;
    assert_eq!(s, 400, "{doc}");
    assert!(doc["error"].as_str().unwrap_or_default().contains("no template"), "{doc}");
}

#[tokio::test]
async fn the_agent_refuses_bridged_networks_on_interfaces_not_allowed() {
    let a = start("agent").await;
    let spec = json!({ "vni": 100, "mtu": 1500, "peers": [], "macs": {}, "uplink": { "interface": "lo" } });
    let r = reqwest::Client::new()
        .put(format!("{}/v1/networks/100", a.url))
        .bearer_auth(TOKEN)
        .json(&spec)
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    let doc: Value = r.json().await.unwrap_or(Value::Null);
    // On loopback the agent has no underlay: it says so, or refuses the interface; never
    // joins lo to a bridge.
    let msg = doc["error"].as_str().unwrap_or_default();
    assert!(status == 503 || (status == 422 && msg.contains("--provider-interfaces")), "{status}: {doc}");
    let mut bad = spec.clone();
    bad["macs"] = json!({ "02:00:00:00:00:01\nflush ruleset": "10.0.0.1" });
    let (s, doc) = post_put(&a, "/v1/networks/100", &bad).await;
    refused(s, &doc, "macs", "a MAC key with a newline");
    let mut bad = spec;
    bad["uplink"] = json!({ "interface": "eth0 type" });
    let (s, doc) = post_put(&a, "/v1/networks/100", &bad).await;
    refused(s, &doc, "uplink.interface", "an interface name with a space");
}

/// A websocket upgrade request to `path`: its status and JSON error.
async fn upgrade(d: &Daemon, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", d.url))
        .bearer_auth(TOKEN)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("answer");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_agent_refuses_hostile_tunnel_requests() {
    let a = start("agent").await;
    let before = tree(&a.data);
    for (path, says) in [
        ("/v1/vms/web1/tcp/0?via=100.64.0.254/24", "1 to 65535"),
        ("/v1/vms/web1/tcp/65536?via=100.64.0.254/24", "1 to 65535"),
        ("/v1/vms/web1/tcp/22;reboot?via=100.64.0.254/24", "1 to 65535"),
        ("/v1/vms/web1/tcp/22?via=100.64.0.254", "prefix length"),
        ("/v1/vms/web1/tcp/22?via=100.64.0.254/24%0Aflush", "prefix length"),
        ("/v1/vms/web1/tcp/22", "via"),
        ("/v1/vms/web1/tcp/22?via=100.64.0.254/24&dev=eth0", "unknown field"),
        ("/v1/vms/..%2Fx/tcp/22?via=100.64.0.254/24", "invalid name"),
    ] {
        let (s, doc) = upgrade(&a, path).await;
        refused(s, &doc, says, path);
    }
    // Well formed, for a VM the host does not have.
    let (s, doc) = upgrade(&a, "/v1/vms/web1/tcp/22?via=100.64.0.254%2F24").await;
    assert_eq!(s, 404, "{doc}");
    assert_eq!(tree(&a.data), before, "the agent's data directory is unchanged");
}

async fn post_put(d: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().put(format!("{}{path}", d.url)).bearer_auth(TOKEN).json(body).send().await;
    let r = r.expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_controller_refuses_hostile_vm_requests_and_creates_nothing() {
    let tmp_x_before = Path::new("/tmp/x").exists();
    let c = start("controller").await;
    let good = json!({ "name": "web1", "template": "base", "vcpus": 1, "memory_mib": 128 });
    let with = |field: &str, v: Value| {
        let mut d = good.clone();
        d[field] = v;
        d
    };
    let mut extra = good.clone();
    extra["mac"] = json!("02:00:00:00:00:01,romfile=/etc/shadow");
    for (field, body) in [
        ("name", with("name", json!("/"))),
        ("name", with("name", json!("../x"))),
        ("name", with("name", json!("a;touch /tmp/x;b"))),
        ("template", with("template", json!("../base"))),
        ("host", with("host", json!("h1\nx"))),
        ("workload", with("workload", json!("cpu panic=1"))),
        ("vcpus", with("vcpus", json!(0))),
        ("vcpus", with("vcpus", json!(257))),
        ("memory_mib", with("memory_mib", json!(1))),
        (
            "ssh_keys",
            with("ssh_keys", json!(["ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW"])),
        ),
        ("firmware", with("firmware", json!("efi"))),
        ("user-data line 3", with("user_data", json!("#cloud-config\nruncmd: [reboot\n"))),
        ("user_data", with("user_data", json!("runcmd: [reboot]\n"))),
        ("unknown field `mac`", extra),
    ] {
        let (s, doc) = post(&c, "/v1/vms", &body.to_string()).await;
        refused(s, &doc, field, &format!("POST /v1/vms with a bad {field}"));
    }
    let (s, doc) = post(&c, "/v1/clusters", &json!({ "name": "../c", "profile": "p", "size": 1 }).to_string()).await;
    refused(s, &doc, "name", "a cluster named ../c");
    // Names in the path are checked as well.
    for path in [
        "/v1/vms/a;touch%20%2Ftmp%2Fx;b",
        "/v1/vms/..%2Fx",
        "/v1/hosts/..%2F..%2Fetc",
        "/v1/vms/..%2Fx/streams/console",
    ] {
        let r = reqwest::Client::new().get(format!("{}{path}", c.url)).bearer_auth(TOKEN).send().await.expect("answer");
        let s = r.status().as_u16();
        let doc: Value = r.json().await.unwrap_or(Value::Null);
        refused(s, &doc, "invalid name", path);
    }
    // Image imports: the name in the path and every query value are checked before a byte of
    // the body is kept.
    for (path, field) in [
        ("/v1/images/..%2Fetc", "invalid name"),
        ("/v1/images/img?format=iso", "unknown disk format"),
        ("/v1/images/img?sha256=zz", "64 hex digits"),
        ("/v1/images/img?firmware=bios,efi", "bios or uefi"),
        ("/v1/images/img?os=a%0Ab", "printable"),
        ("/v1/images/img?backing=/etc/shadow", "unknown field"),
        ("/v1/images/img?default_user=root%3Bid", "invalid user name"),
    ] {
        let r = reqwest::Client::new()
            .put(format!("{}{path}", c.url))
            .bearer_auth(TOKEN)
            .body(vec![0u8; 4096])
            .send()
            .await
            .expect("answer");
        let s = r.status().as_u16();
        let doc: Value = r.json().await.unwrap_or(Value::Null);
        refused(s, &doc, field, path);
    }
    assert_eq!(tree(&c.dir.path().join("library")), Vec::<String>::new(), "nothing reached the library");
    // Disk growth: sizes are checked, and unknown fields refused.
    for (body, field) in [
        (json!({ "size_mib": 0 }), "disk size"),
        (json!({ "grow_mib": u64::MAX }), "disk size"),
        (json!({ "size_mib": 1024, "shrink": true }), "unknown field"),
    ] {
        let (s, doc) = post(&c, "/v1/vms/web1/disk/resize", &body.to_string()).await;
        refused(s, &doc, field, &format!("disk resize {body}"));
    }
    // A stream that does not exist, and one of a VM that does not; tunnels: the port is
    // checked, and a VM that does not exist is named.
    for (path, status, says) in [
        ("/v1/vms/web1/streams/shell", 422, "console or vnc"),
        ("/v1/vms/web1/streams/console", 404, "web1"),
        ("/v1/vms/web1/tcp/0", 422, "1 to 65535"),
        ("/v1/vms/web1/tcp/99999", 422, "1 to 65535"),
        ("/v1/vms/web1/tcp/22%0A", 422, "1 to 65535"),
        ("/v1/vms/..%2Fx/tcp/22", 422, "invalid name"),
        ("/v1/vms/web1/tcp/22", 404, "web1"),
    ] {
        let (s, doc) = upgrade(&c, path).await;
        assert_eq!(s, status, "{path}: {doc}");
        assert!(doc["error"].as_str().unwrap_or_default().contains(says), "{path}: {doc}");
    }
    let vms: Value = reqwest::Client::new()
        .get(format!("{}/v1/vms", c.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("a list");
    assert_eq!(vms, json!([]), "no VM was recorded");
    assert!(tmp_x_before || !Path::new("/tmp/x").exists(), "/tmp/x was not created");
}

/// Runs `corral ARGS` until it exits (at most 20 s); its exit status and standard error.
fn run_to_end(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corral runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn daemons_refuse_a_non_loopback_address_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    for args in [
        vec!["controller", "--listen", "0.0.0.0:0", "--data", &data],
        vec!["agent", "--name", "h1", "--listen", "0.0.0.0:0", "--data", &data, "--accel", "tcg"],
    ] {
        let (ok, err) = run_to_end(&args);
        assert!(!ok, "corral {} must not start: {err}", args[0]);
        assert!(err.contains("without an API token") && err.contains("--insecure"), "{err}");
        assert!(!Path::new(&data).exists(), "nothing was set up before refusing");
    }
}

#[test]
fn daemons_refuse_a_token_file_others_may_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = token_file(dir.path());
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let data = dir.path().join("data").display().to_string();
    let t = tok.display().to_string();
    for args in [
        vec!["controller", "--listen", "127.0.0.1:0", "--data", &data, "--token-file", &t],
        vec!["agent", "--name", "h1", "--listen", "127.0.0.1:0", "--data", &data, "--token-file", &t],
    ] {
        let (ok, err) = run_to_end(&args);
        assert!(!ok, "corral {} must not start: {err}", args[0]);
        assert!(err.contains(&format!("chmod 600 {t}")), "{err}");
    }
}

/// The guest template `make guest` builds, if it is there (`CORRAL_CACHE/guest`).
fn guest_templates() -> Option<PathBuf> {
    let cache = std::env::var_os("CORRAL_CACHE").map(PathBuf::from)?;
    let dir = cache.join("guest");
    dir.join("base.json").exists().then_some(dir)
}

#[tokio::test]
async fn a_created_vm_is_root_only() {
    let Some(templates) = guest_templates() else {
        eprintln!("skipped: no guest template in CORRAL_CACHE/guest (run `make guest`)");
        return;
    };
    let a = start_with("agent", Some(&templates)).await;
    // Defined, not started: the directory, the record and the disk exist without QEMU.
    let (s, doc) = post(&a, "/v1/vms", &json!({ "def": good_def(), "start": false }).to_string()).await;
    assert_eq!(s, 200, "{doc}");
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).expect("exists");
    let dir = a.data.join("vms/web1");
    assert_eq!(mode(&a.data.join("vms")), 0o700);
    assert_eq!(mode(&dir), 0o700, "the VM directory");
    assert_eq!(mode(&dir.join("disk.qcow2")), 0o600, "the disk");
    assert_eq!(mode(&dir.join("vm.json")), 0o600, "the record");
}
