//! Rules for the names users give to VMs, hosts and templates.

/// Checks a VM (or cluster, profile, host) name: 1 to 63 characters, lower-case letters, digits
/// and `-`, starting with a letter and not ending with `-` — a valid DNS label, since the guest
/// uses it as its hostname.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(format!("invalid {kind} name {name:?}: {NAME_RULE}"))
    }
}

/// What a valid name is, as error messages say it.
pub const NAME_RULE: &str = "use 1-63 lower-case letters, digits and '-', starting with a letter and not ending \
                             with '-' (it becomes the guest's hostname)";

/// Whether `name` is a DNS label as [`validate_name`] requires.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_must_be_dns_labels() {
        for ok in ["web1", "a", "db-2", "x".repeat(63).as_str()] {
            assert!(validate_name("VM", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web1", "1web", "web_1", "web-", "web 1", "x".repeat(64).as_str(), "wéb"] {
            assert!(validate_name("VM", bad).is_err(), "{bad}");
        }
    }
}
