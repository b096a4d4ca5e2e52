//! A user's cloud-config (cloud-init `user-data`), checked when it is given: YAML that is one
//! mapping under a `#cloud-config` first line, at most 64 KiB. A refusal names the line. It
//! reaches a guest as JSON (which cloud-init's YAML reader takes), with Corral's own settings
//! merged in, so nothing a user wrote is spliced into text.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// The largest user-data taken (cloud-init's NoCloud seeds are small; 64 KiB is plenty).
pub const MAX_BYTES: usize = 64 * 1024;

/// A checked cloud-config.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudConfig {
    text: String,
    doc: Map<String, Value>,
}

impl CloudConfig {
    /// Its settings, as JSON.
    pub fn settings(&self) -> &Map<String, Value> {
        &self.doc
    }

    /// As the user wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn json_of(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => {
            s.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number).unwrap_or(Value::String(s.clone()))
        }
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(json_of).collect()),
        Yaml::Hash(h) => Value::Object(h.iter().map(|(k, v)| (key_of(k), json_of(v))).collect()),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

fn key_of(k: &Yaml) -> String {
    match json_of(k) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

impl std::str::FromStr for CloudConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > MAX_BYTES {
            return Err(format!("user-data is {} bytes, more than {MAX_BYTES}: shorten it", s.len()));
        }
        if !s.starts_with("#cloud-config") {
            return Err("user-data must be a cloud-config: its first line is `#cloud-config`".into());
        }
        let docs = YamlLoader::load_from_str(s).map_err(|e| {
            format!("user-data line {} column {}: {}", e.marker().line(), e.marker().col() + 1, e.info())
        })?;
        let doc = match docs.as_slice() {
            [] => Map::new(),
            [Yaml::Null] => Map::new(),
            [Yaml::Hash(_)] => match json_of(&docs[0]) {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            [_] => return Err("user-data must be a mapping of cloud-config settings (key: value)".into()),
            _ => return Err("user-data holds several YAML documents: give one".into()),
        };
        Ok(CloudConfig { text: s.to_string(), doc })
    }
}

impl Serialize for CloudConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CloudConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_cloud_config_is_read_as_settings() {
        let c: CloudConfig = "#cloud-config\npackages: [htop]\nruncmd:\n  - [touch, /root/x]\nwrite_files:\n  - path: /etc/motd\n    content: hi\n".parse().unwrap();
        assert_eq!(c.settings()["packages"][0], "htop");
        assert_eq!(c.settings()["write_files"][0]["path"], "/etc/motd");
        assert_eq!(serde_json::to_value(&c).unwrap(), Value::String(c.text().to_string()));
        let empty: CloudConfig = "#cloud-config\n".parse().unwrap();
        assert!(empty.settings().is_empty());
    }

    #[test]
    fn bad_user_data_is_refused_with_the_line() {
        let e = "#cloud-config\npackages: [htop\nruncmd: []\n".parse::<CloudConfig>().unwrap_err();
        assert!(e.contains("line 3") || e.contains("line 4"), "{e}");
        assert!("packages: [a]\n".parse::<CloudConfig>().unwrap_err().contains("#cloud-config"));
        assert!("#cloud-config\n- a\n- b\n".parse::<CloudConfig>().unwrap_err().contains("mapping"));
        assert!(format!("#cloud-config\n# {}\n", "x".repeat(MAX_BYTES)).parse::<CloudConfig>().is_err());
    }
}
