//! Reading utilisation traces in the PlanetLab format: a directory with one file per VM, one
//! line per scheduling interval, each line the VM's CPU utilisation in percent (an integer
//! 0–100). Files are read in name order; every error names the file and the line.

use std::fs;
use std::path::{Path, PathBuf};

/// One VM's utilisation over the day, as fractions (0.0–1.0).
#[derive(Debug, Clone, PartialEq)]
pub struct VmTrace {
    pub name: String,
    pub samples: Vec<f64>,
}

/// A trace directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub dir: PathBuf,
    pub vms: Vec<VmTrace>,
}

/// Why a trace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("trace directory {0} holds no trace files (one file per VM, one utilisation percentage per line)")]
    Empty(PathBuf),
    #[error("cannot read trace file {file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}, line {line}: {text:?} is not a utilisation percentage (an integer 0-100)")]
    NotANumber { file: PathBuf, line: usize, text: String },
    #[error("{file}, line {line}: {value} is out of range (utilisation is a percentage, 0-100)")]
    OutOfRange { file: PathBuf, line: usize, value: i64 },
    #[error("{file}, line {line}: the line is empty (every interval needs a value)")]
    EmptyLine { file: PathBuf, line: usize },
    #[error("{file} has {lines} lines, expected {expected} (one per {interval_s}-second interval): lines {first_missing}-{expected} are missing")]
    Missing { file: PathBuf, lines: usize, expected: usize, interval_s: f64, first_missing: usize },
    #[error("{file} has more than {expected} lines (one per interval): line {line} is extra")]
    Extra { file: PathBuf, expected: usize, line: usize },
}

/// Reads every regular file of `dir` (hidden files skipped), in name order, each of which must
/// have exactly `samples` lines.
pub fn read_dir(dir: &Path, samples: usize, interval_s: f64) -> Result<Trace, TraceError> {
    let entries = fs::read_dir(dir).map_err(|source| TraceError::Dir { dir: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for e in entries {
        let e = e.map_err(|source| TraceError::Dir { dir: dir.to_path_buf(), source })?;
        let path = e.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if path.is_file() && !hidden {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(TraceError::Empty(dir.to_path_buf()));
    }
    let mut vms = Vec::with_capacity(files.len());
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| TraceError::Io { file: file.clone(), source })?;
        let samples = parse(&file, &text, samples, interval_s)?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        vms.push(VmTrace { name, samples });
    }
    Ok(Trace { dir: dir.to_path_buf(), vms })
}

/// Parses one file's text.
pub fn parse(file: &Path, text: &str, samples: usize, interval_s: f64) -> Result<Vec<f64>, TraceError> {
    let mut out = Vec::with_capacity(samples);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // A final newline (or CRLF) ends the last line; it is not an empty line of its own.
    if lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if line > samples {
            return Err(TraceError::Extra { file: file.to_path_buf(), expected: samples, line });
        }
        if t.is_empty() {
            return Err(TraceError::EmptyLine { file: file.to_path_buf(), line });
        }
        let v: i64 =
            t.parse().map_err(|_| TraceError::NotANumber { file: file.to_path_buf(), line, text: t.to_string() })?;
        if !(0..=100).contains(&v) {
            return Err(TraceError::OutOfRange { file: file.to_path_buf(), line, value: v });
        }
        out.push(v as f64 / 100.0);
    }
    if out.len() < samples {
        return Err(TraceError::Missing {
            file: file.to_path_buf(),
            lines: out.len(),
            expected: samples,
            interval_s,
            first_missing: out.len() + 1,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str, n: usize) -> Result<Vec<f64>, TraceError> {
        parse(Path::new("vm1"), text, n, 300.0)
    }

    #[test]
    fn parses_and_names_bad_lines() {
        assert_eq!(p("10\n20\n30\n", 3).expect("ok"), vec![0.1, 0.2, 0.3]);
        assert_eq!(p("10\r\n20\r\n30", 3).expect("ok"), vec![0.1, 0.2, 0.3]);
        let e = p("10\nabc\n30\n", 3).expect_err("bad").to_string();
        assert!(e.contains("vm1, line 2") && e.contains("abc"), "{e}");
        let e = p("10\n101\n30\n", 3).expect_err("bad").to_string();
        assert!(e.contains("line 2") && e.contains("101"), "{e}");
        let e = p("10\n-1\n30\n", 3).expect_err("bad").to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = p("10\n20\n", 3).expect_err("short").to_string();
        assert!(e.contains("has 2 lines, expected 3") && e.contains("lines 3-3"), "{e}");
        let e = p("10\n\n30\n", 3).expect_err("empty").to_string();
        assert!(e.contains("line 2: the line is empty"), "{e}");
        let e = p("1\n2\n3\n4\n", 3).expect_err("long").to_string();
        assert!(e.contains("line 4 is extra"), "{e}");
    }
}
