//! The controller's and the agent's OpenAPI documents hold under schemathesis (issue 12): a
//! real `corral controller` and a real `corral agent` (registered with it) run in a network
//! namespace of their own, so that fuzzed requests (networks, probes, imports) touch nothing
//! of the machine, and schemathesis (installed by `make setup` into `.cache/`) fuzzes each
//! document for a bounded time. Zero server errors, undocumented status codes or content
//! types, and responses that do not match their schema; every operation is usable (each path
//! parameter declared). Needs root (the namespace); no QEMU guest is booted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "api-conformance-test-token";
const SCHEMATHESIS: &str = "schemathesis-4.32.5";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schemathesis() -> PathBuf {
    let cache = std::env::var_os("CORRAL_CACHE").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache"));
    let bin = cache.join(SCHEMATHESIS).join("bin/schemathesis");
    assert!(bin.exists(), "{} is missing: run `make setup` (scripts/setup-schemathesis.sh)", bin.display());
    bin
}

/// How long schemathesis fuzzes each document (`CORRAL_SCHEMATHESIS_SECONDS`, default 60).
fn budget() -> u64 {
    std::env::var("CORRAL_SCHEMATHESIS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

/// A network namespace with loopback up; removed, with every process started in it, on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
    watchdogs: Vec<PathBuf>,
}

impl Netns {
    fn new() -> Self {
        let name = format!("corral-api-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success())
            && Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status().is_ok_and(|s| s.success());
        assert!(ok, "cannot make network namespace {name}: this test needs root and iproute2");
        Self { name, children: vec![], watchdogs: vec![] }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The agent's watchdog outlives it on purpose; it is ours to end.
        for pidfile in &self.watchdogs {
            if let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn token_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join("token");
    std::fs::write(&f, TOKEN).expect("token file");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    f
}

/// Waits until `url` answers inside the namespace.
fn wait_up(ns: &Netns, url: &str, what: &str) {
    let t = Instant::now();
    loop {
        let ok = ns
            .command(Path::new("curl"))
            .args(["-sf", "-o", "/dev/null", "-H", &format!("Authorization: Bearer {TOKEN}"), url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{what} did not answer at {url}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs schemathesis against `doc` in the namespace; returns its exit status and report.
fn fuzz(ns: &Netns, doc: &str, report: &Path) -> Child {
    let out = std::fs::File::create(report).expect("report file");
    ns.command(&schemathesis())
        .args(["run", doc, "-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,\
             response_headers_conformance,ignored_auth",
        ])
        .args(["--max-time", &budget().to_string(), "--request-timeout", "10", "--no-color", "--seed", "1"])
        .stdout(out.try_clone().expect("report"))
        .stderr(out)
        .spawn()
        .expect("schemathesis runs")
}

#[test]
fn the_controller_and_agent_openapi_documents_hold_under_schemathesis() {
    let st = schemathesis();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ns = Netns::new();
    let corral = Path::new(env!("CARGO_BIN_EXE_corral"));
    let tok = token_file(dir.path());
    let library = dir.path().join("library");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&library).expect("library");
    std::fs::create_dir_all(&templates).expect("templates");
    let (controller, agent) = ("http://127.0.0.1:7700", "http://127.0.0.1:7701");
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).map(Stdio::from).unwrap_or(Stdio::null());
    let c = ns
        .command(corral)
        .args(["controller", "--listen", "127.0.0.1:7700", "--data"])
        .arg(dir.path().join("controller"))
        .arg("--token-file")
        .arg(&tok)
        .arg("--templates")
        .arg(&library)
        .stdout(Stdio::null())
        .stderr(log("controller.log"))
        .spawn()
        .expect("controller runs");
    ns.children.push(c);
    let agent_data = dir.path().join("agent");
    ns.watchdogs.push(agent_data.join("watchdog.pid"));
    let a = ns
        .command(corral)
        .args(["agent", "--listen", "127.0.0.1:7701", "--name", "h1", "--accel", "tcg", "--controller", controller])
        .arg("--data")
        .arg(&agent_data)
        .arg("--token-file")
        .arg(&tok)
        .arg("--templates")
        .arg(&templates)
        .stdout(Stdio::null())
        .stderr(log("agent.log"))
        .spawn()
        .expect("agent runs");
    ns.children.push(a);
    wait_up(&ns, &format!("{controller}/v1/openapi.json"), "the controller");
    wait_up(&ns, &format!("{agent}/v1/openapi.json"), "the agent");
    wait_up(&ns, &format!("{controller}/v1/hosts/h1"), "the agent's registration");
    assert!(st.exists());

    let reports = [dir.path().join("controller.txt"), dir.path().join("agent.txt")];
    let mut runs = [
        fuzz(&ns, &format!("{controller}/v1/openapi.json"), &reports[0]),
        fuzz(&ns, &format!("{agent}/v1/openapi.json"), &reports[1]),
    ];
    let deadline = Instant::now() + Duration::from_secs(budget() + 180);
    let mut failed = vec![];
    for (run, (what, report)) in runs.iter_mut().zip(["controller", "agent"].into_iter().zip(&reports)) {
        let status = loop {
            if let Some(s) = run.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = run.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let text = std::fs::read_to_string(report).unwrap_or_default();
        let summary = text.find("SUMMARY").map(|i| &text[i..]).unwrap_or(&text);
        println!("--- {what}: {summary}");
        if !status.is_some_and(|s| s.success()) {
            failed.push(format!("{what} ({status:?}):\n{text}"));
        }
        // Every operation was usable: none errored (an undeclared path parameter is a schema
        // error, and the operation is never run).
        assert!(!text.contains("Schema Error"), "{what}: an operation could not be generated:\n{text}");
    }
    assert!(failed.is_empty(), "schemathesis found failures:\n{}", failed.join("\n\n"));
}
