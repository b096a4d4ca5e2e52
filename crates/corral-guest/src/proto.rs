//! The line-oriented JSON protocol between the host and the agent.
//!
//! [`dispatch`] turns one request line into one response line without
//! touching the transport, so it can be tested on the host. Side effects that
//! must happen *after* the reply is on the wire (power-off) are returned as
//! an [`After`] action instead of being performed here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::exec;
use crate::procfs;
use crate::workload::{self, Workloads};

/// Shared agent state.
#[derive(Debug)]
pub struct Ctx {
    /// Host name reported by `ping` (the VM name).
    pub name: String,
    /// `corral.uuid=` from the kernel command line.
    pub uuid: String,
    /// Ticks every 100 ms since the agent started; lives only in RAM.
    pub counter: Arc<AtomicU64>,
    /// The running synthetic workload.
    pub workloads: Workloads,
    /// Where the counter is mirrored on every tick (`/run/corral-counter`).
    pub counter_file: Option<PathBuf>,
}

impl Ctx {
    pub fn new(name: impl Into<String>, uuid: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            uuid: uuid.into(),
            counter: Arc::new(AtomicU64::new(0)),
            workloads: Workloads::new(),
            counter_file: None,
        }
    }

    pub fn counter(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// The unsolicited line sent whenever the port is (re)opened.
    pub fn ready_event(&self) -> String {
        json!({
            "event": "ready",
            "name": self.name,
            "uuid": self.uuid,
            "counter": self.counter(),
        })
        .to_string()
    }
}

/// Work to do after the response has been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// `sync` and power the VM off.
    PowerOff,
}

/// Handles one request line. Returns `None` for blank lines (nothing to
/// answer), otherwise the response line (without the trailing newline).
pub fn dispatch(ctx: &Ctx, line: &str) -> Option<(String, After)> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Some((error_response(Value::Null, &format!("invalid JSON: {e}")), After::Nothing)),
    };
    let Some(obj) = req.as_object() else {
        return Some((error_response(Value::Null, "request must be a JSON object"), After::Nothing));
    };
    let id = match obj.get("id") {
        Some(Value::Number(n)) if n.is_u64() => Value::Number(n.clone()),
        Some(other) => {
            return Some((error_response(other.clone(), "\"id\" must be an unsigned integer"), After::Nothing))
        }
        None => return Some((error_response(Value::Null, "missing \"id\""), After::Nothing)),
    };
    let Some(op) = obj.get("op").and_then(Value::as_str) else {
        return Some((error_response(id, "missing or non-string \"op\""), After::Nothing));
    };
    let (result, after) = match op {
        "ping" => (Ok(ping(ctx)), After::Nothing),
        "counter" => (Ok(counter(ctx)), After::Nothing),
        "exec" => (exec_op(obj), After::Nothing),
        "usage" => (usage(), After::Nothing),
        "workload" => (workload_op(ctx, obj), After::Nothing),
        "shutdown" => (Ok(Map::new()), After::PowerOff),
        other => (Err(format!("unknown op {other}")), After::Nothing),
    };
    let line = match result {
        Ok(fields) => ok_response(id, fields),
        Err(e) => error_response(id, &e),
    };
    Some((line, after))
}

fn ok_response(id: Value, fields: Map<String, Value>) -> String {
    let mut m = Map::new();
    m.insert("id".into(), id);
    m.insert("ok".into(), Value::Bool(true));
    m.extend(fields);
    Value::Object(m).to_string()
}

fn error_response(id: Value, error: &str) -> String {
    json!({ "id": id, "ok": false, "error": error }).to_string()
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn ping(ctx: &Ctx) -> Map<String, Value> {
    fields(json!({
        "name": ctx.name,
        "uuid": ctx.uuid,
        "uptime_s": procfs::read_uptime().unwrap_or(0.0),
        "counter": ctx.counter(),
    }))
}

fn counter(ctx: &Ctx) -> Map<String, Value> {
    fields(json!({ "counter": ctx.counter() }))
}

fn usage() -> Result<Map<String, Value>, String> {
    let cpu = procfs::read_stat()?;
    let mem = procfs::read_meminfo()?;
    Ok(fields(json!({
        "cpu_total_jiffies": cpu.total_jiffies,
        "cpu_idle_jiffies": cpu.idle_jiffies,
        "mem_total_kib": mem.total_kib,
        "mem_available_kib": mem.available_kib,
        "load1": procfs::read_loadavg()?,
        "uptime_s": procfs::read_uptime()?,
    })))
}

fn exec_op(req: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let argv = req
        .get("argv")
        .and_then(Value::as_array)
        .ok_or_else(|| "exec needs \"argv\": [string, ...]".to_string())?
        .iter()
        .map(|a| a.as_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| "exec \"argv\" must contain only strings".to_string())?;
    if argv.is_empty() {
        return Err("exec needs a non-empty \"argv\"".into());
    }
    let stdin = match req.get("stdin") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("exec \"stdin\" must be a string".into()),
    };
    let timeout = match req.get("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Duration::from_millis(
            v.as_u64().ok_or_else(|| "exec \"timeout_ms\" must be an unsigned integer".to_string())?,
        )),
    };
    let out = exec::run(&argv, stdin, timeout);
    Ok(fields(json!({
        "exit_code": out.exit_code,
        "stdout": out.stdout,
        "stderr": out.stderr,
    })))
}

fn workload_op(ctx: &Ctx, req: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let spec = req
        .get("spec")
        .and_then(Value::as_str)
        .ok_or_else(|| "workload needs \"spec\": \"idle|cpu|dirty:<MiB/s>[:<MiB>]\"".to_string())?;
    let spec = workload::parse_spec(spec)?;
    ctx.workloads.switch(spec);
    Ok(fields(json!({ "workload": spec.to_string() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        let c = Ctx::new("vm1", "1234-abcd");
        c.counter.store(42, Ordering::SeqCst);
        c
    }

    fn call(ctx: &Ctx, line: &str) -> (Value, After) {
        let (resp, after) = dispatch(ctx, line).expect("a response");
        assert!(!resp.contains('\n'), "response must be one line: {resp}");
        (serde_json::from_str(&resp).expect("response is JSON"), after)
    }

    #[test]
    fn ping() {
        let (v, after) = call(&ctx(), r#"{"id":1,"op":"ping"}"#);
        assert_eq!(after, After::Nothing);
        assert_eq!(v["id"], 1);
        assert_eq!(v["ok"], true);
        assert_eq!(v["name"], "vm1");
        assert_eq!(v["uuid"], "1234-abcd");
        assert_eq!(v["counter"], 42);
        assert!(v["uptime_s"].as_f64().is_some());
    }

    #[test]
    fn counter_increases() {
        let c = ctx();
        let (v, _) = call(&c, "{\"id\":3,\"op\":\"counter\"}\n");
        assert_eq!(v, json!({"id":3,"ok":true,"counter":42}));
        c.counter.fetch_add(1, Ordering::SeqCst);
        let (v, _) = call(&c, r#"{"op":"counter","id":18446744073709551615}"#);
        assert_eq!(v["counter"], 43);
        assert_eq!(v["id"], u64::MAX);
    }

    #[test]
    fn unknown_op() {
        let (v, _) = call(&ctx(), r#"{"id":7,"op":"frobnicate"}"#);
        assert_eq!(v, json!({"id":7,"ok":false,"error":"unknown op frobnicate"}));
    }

    #[test]
    fn bad_requests() {
        let c = ctx();
        let (v, _) = call(&c, "{not json");
        assert_eq!(v["ok"], false);
        assert_eq!(v["id"], Value::Null);
        assert!(v["error"].as_str().unwrap_or("").starts_with("invalid JSON"));

        let (v, _) = call(&c, "[1,2]");
        assert_eq!(v["ok"], false);

        let (v, _) = call(&c, r#"{"op":"ping"}"#);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "missing \"id\"");

        let (v, _) = call(&c, r#"{"id":-1,"op":"ping"}"#);
        assert_eq!(v["ok"], false);

        let (v, _) = call(&c, r#"{"id":5}"#);
        assert_eq!(v["id"], 5);
        assert_eq!(v["ok"], false);

        assert!(dispatch(&c, "   \n").is_none());
    }

    #[test]
    fn exec_ok_and_exit_codes() {
        let c = ctx();
        let (v, _) = call(&c, r#"{"id":2,"op":"exec","argv":["sh","-c","printf hi; exit 3"]}"#);
        assert_eq!(v, json!({"id":2,"ok":true,"exit_code":3,"stdout":"hi","stderr":""}));

        let (v, _) = call(&c, r#"{"id":2,"op":"exec","argv":["cat"],"stdin":"abc","timeout_ms":5000}"#);
        assert_eq!(v["stdout"], "abc");
        assert_eq!(v["exit_code"], 0);

        let (v, _) = call(&c, r#"{"id":2,"op":"exec","argv":["no-such-program-xyz"]}"#);
        assert_eq!(v["ok"], true);
        assert_eq!(v["exit_code"], 127);

        let (v, _) = call(&c, r#"{"id":2,"op":"exec","argv":["sleep","5"],"timeout_ms":100}"#);
        assert_eq!(v["exit_code"], 124);
    }

    #[test]
    fn exec_bad_args() {
        let c = ctx();
        for req in [
            r#"{"id":9,"op":"exec","argv":[]}"#,
            r#"{"id":9,"op":"exec"}"#,
            r#"{"id":9,"op":"exec","argv":[1]}"#,
            r#"{"id":9,"op":"exec","argv":["true"],"stdin":3}"#,
            r#"{"id":9,"op":"exec","argv":["true"],"timeout_ms":"x"}"#,
        ] {
            let (v, _) = call(&c, req);
            assert_eq!(v["id"], 9, "{req}");
            assert_eq!(v["ok"], false, "{req}");
            assert!(v["error"].is_string(), "{req}");
        }
    }

    #[test]
    fn usage_on_host() {
        let (v, _) = call(&ctx(), r#"{"id":4,"op":"usage"}"#);
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["cpu_total_jiffies"].as_u64().unwrap_or(0) > 0);
        assert!(v["mem_total_kib"].as_u64().unwrap_or(0) > 0);
        assert!(v["load1"].as_f64().is_some());
    }

    #[test]
    fn workload_switch() {
        let c = ctx();
        let (v, _) = call(&c, r#"{"id":5,"op":"workload","spec":"dirty:1:1"}"#);
        assert_eq!(v["ok"], true);
        assert_eq!(c.workloads.current(), Some(workload::Spec::Dirty { rate_mib_s: 1, size_mib: 1 }));
        let (v, _) = call(&c, r#"{"id":5,"op":"workload","spec":"bogus"}"#);
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap_or("").contains("invalid workload spec"));
        let (v, _) = call(&c, r#"{"id":5,"op":"workload","spec":"idle"}"#);
        assert_eq!(v["ok"], true);
    }

    #[test]
    fn shutdown_defers_poweroff() {
        let (v, after) = call(&ctx(), r#"{"id":6,"op":"shutdown"}"#);
        assert_eq!(v, json!({"id":6,"ok":true}));
        assert_eq!(after, After::PowerOff);
    }

    #[test]
    fn ready_event_shape() {
        let v: Value = serde_json::from_str(&ctx().ready_event()).expect("json");
        assert_eq!(v, json!({"event":"ready","name":"vm1","uuid":"1234-abcd","counter":42}));
    }
}
