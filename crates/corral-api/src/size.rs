//! Parsing of memory sizes as users write them (`256M`, `1G`, `512MiB`, `1024`).

/// Parses a memory size into MiB. A bare number is MiB; suffixes K, M, G, T (with optional
/// `i`/`iB`/`B`, any case) are powers of 1024. Sizes that are not a whole number of MiB are refused.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("invalid memory size {s:?}: write a number of MiB or use a unit, e.g. 256M or 2G");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let kib = match unit {
        "" | "m" => n.checked_mul(1024),
        "k" => Some(n),
        "g" => n.checked_mul(1024 * 1024),
        "t" => n.checked_mul(1024 * 1024 * 1024),
        _ => None,
    }
    .ok_or_else(bad)?;
    if kib % 1024 != 0 {
        return Err(format!("invalid memory size {s:?}: it must be a whole number of MiB"));
    }
    Ok(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("256M"), Ok(256));
        assert_eq!(parse_mib("256"), Ok(256));
        assert_eq!(parse_mib("1G"), Ok(1024));
        assert_eq!(parse_mib("2GiB"), Ok(2048));
        assert_eq!(parse_mib("512mb"), Ok(512));
        assert_eq!(parse_mib("2048K"), Ok(2));
        assert!(parse_mib("12 potatoes").is_err());
        assert!(parse_mib("").is_err());
        assert!(parse_mib("1000K").is_err());
        assert!(parse_mib("99999999999999999999G").is_err());
    }
}
