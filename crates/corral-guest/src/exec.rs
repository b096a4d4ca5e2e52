//! The `exec` op: run a program, feed it stdin, capture its output.

use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Exit code reported when the command hit its timeout (like coreutils `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code for a program that exists but cannot be executed.
pub const EXIT_NOEXEC: i32 = 126;
/// Exit code for a program that does not exist.
pub const EXIT_NOTFOUND: i32 = 127;

/// How long to keep collecting output after the child itself has exited or
/// been killed (a background grandchild may still hold the pipes open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Result of running a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Maps an exit status to a shell-style exit code (128+signal when killed).
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(chunk[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A read error just ends the capture; what was read is kept.
                Err(_) => break,
            }
        }
    });
    rx
}

/// Gathers chunks until the pipe closes or `deadline` passes.
fn collect(rx: Option<mpsc::Receiver<Vec<u8>>>, deadline: Instant) -> String {
    let mut bytes = Vec::new();
    if let Some(rx) = rx {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(_) => break,
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Kills the child's whole process group (it was started as a group leader),
/// then the child itself as a fallback.
///
/// There is no `kill(2)` without `unsafe`/libc, so this runs `kill(1)`.
/// procps' kill needs `--` before a negative PID while busybox's rejects
/// `--`, so the plain form is tried when the first one fails. The child is
/// not reaped yet, so its PID (= the group ID) cannot have been reused.
fn kill_tree(child: &mut Child) {
    let pgid = format!("-{}", child.id());
    let quiet_kill = |args: &[&str]| {
        Command::new("kill")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet_kill(&["-KILL", "--", &pgid]) {
        quiet_kill(&["-KILL", &pgid]);
    }
    let _ = child.kill();
}

/// Runs `argv`, writing `stdin` (if any) to it, and waits at most `timeout`.
pub fn run(argv: &[String], stdin: Option<&str>, timeout: Option<Duration>) -> Outcome {
    let Some((prog, args)) = argv.split_first() else {
        return Outcome { exit_code: EXIT_NOTFOUND, stdout: String::new(), stderr: "empty argv".into() };
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let (exit_code, what) = match e.kind() {
                io::ErrorKind::NotFound => (EXIT_NOTFOUND, "not found".to_string()),
                io::ErrorKind::PermissionDenied => (EXIT_NOEXEC, "permission denied".to_string()),
                _ => (EXIT_NOEXEC, e.to_string()),
            };
            return Outcome { exit_code, stdout: String::new(), stderr: format!("corral-guest: {prog}: {what}\n") };
        }
    };

    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.as_bytes().to_vec();
        // Written from a thread so a child that does not read cannot block us;
        // EPIPE from a child that exits early is ignored.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out_rx = child.stdout.take().map(spawn_reader);
    let err_rx = child.stderr.take().map(spawn_reader);

    let deadline = timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
            kill_tree(&mut child);
            break child.wait().ok();
        }
        thread::sleep(Duration::from_millis(5));
    };

    // Once the child is gone its remaining output is already in the pipes;
    // only a background grandchild can keep them open, so bound the wait
    // (what it writes after that is not captured).
    let drain_deadline = Instant::now() + DRAIN_GRACE;
    let stdout = collect(out_rx, drain_deadline);
    let stderr = collect(err_rx, drain_deadline);
    let exit_code = if timed_out { EXIT_TIMEOUT } else { status.map(exit_code).unwrap_or(255) };
    Outcome { exit_code, stdout, stderr }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_and_captures() {
        let o = run(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]), None, None);
        assert_eq!(o, Outcome { exit_code: 3, stdout: "out\n".into(), stderr: "err\n".into() });
    }

    #[test]
    fn feeds_stdin() {
        let o = run(&argv(&["cat"]), Some("hello\n"), Some(Duration::from_secs(10)));
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.stdout, "hello\n");
    }

    #[test]
    fn missing_program_is_127() {
        let o = run(&argv(&["/nonexistent/prog"]), None, None);
        assert_eq!(o.exit_code, EXIT_NOTFOUND);
        assert!(o.stderr.contains("not found"), "{}", o.stderr);
    }

    #[test]
    fn background_grandchild_does_not_hang() {
        let start = Instant::now();
        let o = run(&argv(&["sh", "-c", "echo hi; sleep 30 &"]), None, None);
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.stdout, "hi\n");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }

    #[test]
    fn signal_is_128_plus() {
        let o = run(&argv(&["sh", "-c", "kill -9 $$"]), None, None);
        assert_eq!(o.exit_code, 128 + 9);
    }

    #[test]
    fn timeout_is_124_and_kills_grandchildren() {
        let start = Instant::now();
        let o = run(&argv(&["sh", "-c", "sleep 30 & sleep 30"]), None, Some(Duration::from_millis(200)));
        assert_eq!(o.exit_code, EXIT_TIMEOUT);
        // Faster than DRAIN_GRACE: the grandchild was killed and closed the pipes.
        assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
    }
}
