//! Which servers a reference is pulled from: the configured mirrors in order,
//! then the registry itself, each over https unless configured (or, for
//! loopback registries, defaulted) to plain http.
//!
//! ```toml
//! [registry.hosts."docker.io"]
//! mirrors = ["http://127.0.0.1:5000", "mirror.example.com"]
//!
//! [registry.hosts."registry.internal:5000"]
//! insecure = true        # plain http
//!
//! [registry.hosts."mirror.example.com"]
//! skip_verify = true     # https without certificate verification
//!
//! [registry.hosts."registry.k8s.io"]
//! mirrors = ["http://10.0.0.5:5000"]
//! mirrors_only = true    # never ask registry.k8s.io itself (air-gapped nodes)
//! ```

use super::reference::{Reference, DOCKER_HUB, DOCKER_HUB_API};
use super::RegistryError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Keyed by registry host as it appears in references (`docker.io`,
    /// `localhost:5000`), or by a mirror's `host[:port]`.
    pub hosts: HashMap<String, HostConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Tried in order before the registry itself: `http://host:port`,
    /// `https://host[/prefix]` or a bare `host[:port]`.
    pub mirrors: Vec<String>,
    /// Plain http. Unset: http for `localhost`, `127.0.0.0/8` and `[::1]`,
    /// https elsewhere.
    pub insecure: Option<bool>,
    /// https without verifying the server's certificate.
    pub skip_verify: bool,
    /// Pull from the mirrors only: the registry itself is never contacted
    /// (an image the mirrors lack is not found, at once).
    pub mirrors_only: bool,
}

/// One server to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]/v2` (or a mirror's own prefix), no trailing slash.
    pub base: String,
    /// `host[:port]`, for matching credentials and for logs.
    pub host: String,
    pub skip_verify: bool,
    pub mirror: bool,
}

impl Endpoint {
    /// The URL of `path` (which starts with `/`) under the API root; mirrors
    /// also get `ns=<registry>` so that a cache for several upstreams can
    /// tell them apart.
    pub fn url(&self, path: &str, reference: &Reference) -> String {
        if self.mirror {
            format!("{}{path}?ns={}", self.base, reference.registry)
        } else {
            format!("{}{path}", self.base)
        }
    }
}

/// Whether a `host[:port]` names this machine (which Docker reaches over plain http).
pub fn is_loopback(hostport: &str) -> bool {
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(h, _)| h.parse::<Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback());
    }
    let host = hostport.split_once(':').map_or(hostport, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn bad_config(msg: String) -> RegistryError {
    RegistryError::Config(msg)
}

impl RegistryConfig {
    /// Checks every mirror URL; for use when the configuration is loaded.
    pub fn validate(&self) -> Result<(), RegistryError> {
        for (host, h) in &self.hosts {
            if host.is_empty() || host.contains('/') {
                return Err(bad_config(format!(
                    "registry.hosts key {host:?}: want host[:port]"
                )));
            }
            for m in &h.mirrors {
                self.mirror(m)?;
            }
            if h.mirrors_only && h.mirrors.is_empty() {
                return Err(bad_config(format!(
                    "registry.hosts key {host:?}: mirrors_only without mirrors"
                )));
            }
        }
        Ok(())
    }

    fn host(&self, hostport: &str) -> Option<&HostConfig> {
        self.hosts.get(hostport).or_else(|| {
            // `docker.io` settings also cover its API host, and back.
            match hostport {
                DOCKER_HUB_API => self.hosts.get(DOCKER_HUB),
                DOCKER_HUB => self.hosts.get(DOCKER_HUB_API),
                _ => None,
            }
        })
    }

    fn scheme_for(&self, hostport: &str) -> &'static str {
        let insecure = self
            .host(hostport)
            .and_then(|h| h.insecure)
            .unwrap_or_else(|| is_loopback(hostport));
        if insecure {
            "http"
        } else {
            "https"
        }
    }

    fn mirror(&self, spec: &str) -> Result<Endpoint, RegistryError> {
        let (scheme, rest) = match spec.split_once("://") {
            Some(("http", r)) => (Some("http"), r),
            Some(("https", r)) => (Some("https"), r),
            Some((s, _)) => {
                return Err(bad_config(format!(
                    "mirror {spec:?}: scheme {s:?} (want http or https)"
                )))
            }
            None => (None, spec),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hostport.is_empty()
            || hostport.contains(['@', '?', '#'])
            || path.contains(['?', '#'])
            || hostport.chars().any(|c| c.is_whitespace())
        {
            return Err(bad_config(format!("mirror {spec:?} is not a URL")));
        }
        let scheme = scheme.unwrap_or_else(|| self.scheme_for(hostport));
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() {
            "/v2".to_string()
        } else if path.ends_with("/v2") {
            path.to_string()
        } else {
            format!("{path}/v2")
        };
        Ok(Endpoint {
            base: format!("{scheme}://{hostport}{prefix}"),
            host: hostport.to_string(),
            skip_verify: self.host(hostport).is_some_and(|h| h.skip_verify),
            mirror: true,
        })
    }

    /// The servers to try for a reference, in order.
    pub fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, RegistryError> {
        let mut out = Vec::new();
        let cfg = self.host(&reference.registry);
        if let Some(h) = cfg {
            for m in &h.mirrors {
                out.push(self.mirror(m)?);
            }
            if h.mirrors_only && !out.is_empty() {
                return Ok(out);
            }
        }
        let api = reference.api_host();
        out.push(Endpoint {
            base: format!("{}://{api}/v2", self.scheme_for(&reference.registry)),
            host: api.to_string(),
            skip_verify: cfg.is_some_and(|h| h.skip_verify),
            mirror: false,
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(cfg: &RegistryConfig, r: &str) -> Vec<String> {
        let r = Reference::parse(r).expect("reference");
        cfg.endpoints(&r)
            .expect("endpoints")
            .into_iter()
            .map(|e| e.base)
            .collect()
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        let c = RegistryConfig::default();
        assert_eq!(bases(&c, "busybox"), ["https://registry-1.docker.io/v2"]);
        assert_eq!(
            bases(&c, "registry.k8s.io/pause:3.9"),
            ["https://registry.k8s.io/v2"]
        );
        assert_eq!(bases(&c, "localhost:5000/x"), ["http://localhost:5000/v2"]);
        assert_eq!(bases(&c, "localhost/x"), ["http://localhost/v2"]);
        assert_eq!(
            bases(&c, "127.0.0.1:5000/a/b:t"),
            ["http://127.0.0.1:5000/v2"]
        );
        assert_eq!(bases(&c, "127.3.4.5/a"), ["http://127.3.4.5/v2"]);
        assert_eq!(bases(&c, "[::1]:5000/a"), ["http://[::1]:5000/v2"]);
        assert_eq!(bases(&c, "128.0.0.1:5000/a"), ["https://128.0.0.1:5000/v2"]);
        assert_eq!(
            bases(&c, "localhost.example.com/a"),
            ["https://localhost.example.com/v2"]
        );
        assert!(is_loopback("LOCALHOST:1"));
        assert!(!is_loopback("[::2]:5000"));
    }

    #[test]
    fn hosts_config_from_toml() {
        #[derive(Deserialize)]
        struct Outer {
            registry: RegistryConfig,
        }
        let text = r#"
[registry.hosts."docker.io"]
mirrors = ["http://127.0.0.1:5000", "mirror.example.com/cache", "https://m2.example.com/v2/"]

[registry.hosts."reg.internal:5000"]
insecure = true

[registry.hosts."mirror.example.com"]
skip_verify = true

[registry.hosts."localhost:5000"]
insecure = false
"#;
        let o: Outer = toml::from_str(text).expect("toml");
        let c = o.registry;
        c.validate().expect("valid");
        let eps = c
            .endpoints(&Reference::parse("busybox").expect("ref"))
            .expect("endpoints");
        let b: Vec<_> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            b,
            [
                "http://127.0.0.1:5000/v2",
                "https://mirror.example.com/cache/v2",
                "https://m2.example.com/v2",
                "https://registry-1.docker.io/v2",
            ]
        );
        assert!(eps[1].skip_verify && !eps[0].skip_verify && eps[1].mirror && !eps[3].mirror);
        let r = Reference::parse("busybox").expect("ref");
        assert_eq!(
            eps[0].url("/library/busybox/manifests/latest", &r),
            "http://127.0.0.1:5000/v2/library/busybox/manifests/latest?ns=docker.io"
        );
        assert_eq!(
            bases(&c, "reg.internal:5000/a"),
            ["http://reg.internal:5000/v2"]
        );
        assert_eq!(bases(&c, "localhost:5000/a"), ["https://localhost:5000/v2"]);

        assert!(toml::from_str::<Outer>("[registry.hosts.\"x\"]\nmirors = []\n").is_err());
        let bad = RegistryConfig {
            hosts: [(
                "docker.io".to_string(),
                HostConfig {
                    mirrors: vec!["ftp://x".into()],
                    ..HostConfig::default()
                },
            )]
            .into(),
        };
        assert!(matches!(bad.validate(), Err(RegistryError::Config(_))));
    }
}
