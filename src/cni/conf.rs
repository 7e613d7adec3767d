//! Network configurations: the files of the CNI config directory, either a
//! configuration list (`.conflist`: a name, a version and a chain of plugins)
//! or a single plugin configuration (`.conf`, `.json`), which is read as a
//! list of one.

use super::error::CniError;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// File name endings of network configurations.
pub const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// One network: the chain of plugins that attaches a pod to it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    pub name: String,
    pub cni_version: String,
    /// CHECK is not to be called on this network.
    pub disable_check: bool,
    /// The plugins' configurations, in order; each has a string `type`.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it was read from.
    pub source: PathBuf,
}

fn field_str(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(format!("no {key:?}")),
        Some(_) => Err(format!("{key:?} is not a string")),
    }
}

fn check_plugin(p: &Map<String, Value>) -> Result<(), String> {
    let ty = field_str(p, "type")?;
    if ty.contains('/') || ty == "." || ty == ".." {
        return Err(format!("plugin type {ty:?} is not a plain file name"));
    }
    Ok(())
}

impl NetworkConfig {
    /// Parses a configuration list, or a single plugin configuration (any
    /// object without `plugins`).
    pub fn parse(bytes: &[u8], source: &Path) -> Result<NetworkConfig, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(obj) = v else {
            return Err("not a JSON object".into());
        };
        let name = field_str(&obj, "name")?;
        let cni_version = field_str(&obj, "cniVersion")?;
        let disable_check = match obj.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            // Some writers use the string form.
            Some(Value::String(s)) => s == "true",
            Some(_) => return Err("\"disableCheck\" is not a boolean".into()),
        };
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err("\"plugins\" is empty".into());
                }
                list.iter()
                    .enumerate()
                    .map(|(i, p)| match p {
                        Value::Object(m) => check_plugin(m)
                            .map(|()| m.clone())
                            .map_err(|e| format!("plugin {i}: {e}")),
                        _ => Err(format!("plugin {i} is not an object")),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(_) => return Err("\"plugins\" is not a list".into()),
            None => {
                check_plugin(&obj)?;
                vec![obj.clone()]
            }
        };
        Ok(NetworkConfig {
            name,
            cni_version,
            disable_check,
            plugins,
            source: source.to_path_buf(),
        })
    }

    /// The configuration list form (what is cached with a pod's attachment).
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }

    /// Each plugin's type, in order.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
    }

    /// The types of the IPAM plugins the network's plugins delegate to
    /// (`ipam.type`), in order.
    pub fn ipam_types(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().filter_map(|p| {
            p.get("ipam")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
        })
    }
}

/// The configuration files of `dir`, by file name.
pub fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The pod network: the first configuration in `dir` (by file name) that
/// parses. Files that do not parse are skipped with a warning. None when the
/// directory holds no configuration file at all (or does not exist).
pub fn load(dir: &Path) -> Result<Option<NetworkConfig>, CniError> {
    let files = match config_files(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CniError::Io {
                context: format!("read CNI config dir {}", dir.display()),
                source: e,
            })
        }
    };
    let mut first_error = None;
    for f in &files {
        let parsed = std::fs::read(f)
            .map_err(|e| e.to_string())
            .and_then(|b| NetworkConfig::parse(&b, f));
        match parsed {
            Ok(c) => return Ok(Some(c)),
            Err(reason) => {
                tracing::warn!(file = %f.display(), %reason, "skipping CNI network config");
                first_error.get_or_insert(CniError::BadConfig {
                    path: f.clone(),
                    reason,
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// `a` >= `b` for dotted versions such as "0.4.0" and "1.0.0" (missing parts are 0).
pub fn version_at_least(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> {
        s.split('.')
            .map(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    };
    let (va, vb) = (parse(a), parse(b));
    for i in 0..va.len().max(vb.len()) {
        let (x, y) = (
            va.get(i).copied().unwrap_or(0),
            vb.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x > y;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sycri-cni-conf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn conflist_and_single_configs() {
        let list = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let c = NetworkConfig::parse(list, Path::new("x.conflist")).expect("parse");
        assert_eq!(c.name, "n");
        assert_eq!(c.plugin_types().collect::<Vec<_>>(), ["bridge", "portmap"]);
        assert_eq!(c.ipam_types().count(), 0);
        assert!(!c.disable_check);
        let single =
            br#"{"cniVersion":"0.4.0","name":"s","type":"ptp","ipam":{"type":"host-local"}}"#;
        let c = NetworkConfig::parse(single, Path::new("x.conf")).expect("parse");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugin_types().collect::<Vec<_>>(), ["ptp"]);
        assert_eq!(c.ipam_types().collect::<Vec<_>>(), ["host-local"]);
        let again = NetworkConfig::parse(
            &serde_json::to_vec(&c.to_value()).expect("json"),
            Path::new("x.conf"),
        )
        .expect("round trip");
        assert_eq!(again, c);
        for bad in [
            &br#"[]"#[..],
            br#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
            br#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"ipam":{}}]}"#,
            br#"{"cniVersion":"1.0.0","name":"n"}"#,
            b"not json",
        ] {
            assert!(
                NetworkConfig::parse(bad, Path::new("b")).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lowest_file_name_that_parses_wins() {
        let d = tmp("load");
        assert_eq!(load(&d.join("missing")).ok(), Some(None));
        assert_eq!(load(&d).ok(), Some(None));
        std::fs::write(d.join("README"), "not a config").expect("write");
        assert_eq!(load(&d).ok(), Some(None));
        std::fs::write(d.join("05-broken.conflist"), "{").expect("write");
        assert!(matches!(load(&d), Err(CniError::BadConfig { .. })));
        std::fs::write(
            d.join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#,
        )
        .expect("write");
        std::fs::write(
            d.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write");
        let c = load(&d).expect("load").expect("some");
        assert_eq!(c.name, "a");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.1", "1.0.0"));
    }
}
