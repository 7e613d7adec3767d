//! Registry authentication: `WWW-Authenticate` challenges, Basic auth and
//! bearer tokens from a token service (Docker token auth and its OAuth2
//! refresh-token flavour), with a cache of what worked.

use super::hosts::Endpoint;
use super::reference::{DOCKER_HUB, DOCKER_HUB_API};
use super::RegistryError;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Credentials of a pull, as in the CRI's `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`, used when `username` is empty.
    pub auth: String,
    /// The registry these are for (`docker.io`, `https://index.docker.io/v1/`,
    /// `host:port`); empty: any server of the pull, mirrors included.
    pub server_address: String,
    /// An OAuth2 refresh token, exchanged at the token service.
    pub identity_token: String,
    /// A bearer token sent to the registry as it is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<set>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

fn docker_alias(host: &str) -> &str {
    match host {
        DOCKER_HUB_API | "index.docker.io" => DOCKER_HUB,
        h => h,
    }
}

impl Credentials {
    /// Username and password, from the fields or else from `auth`.
    pub fn basic(&self) -> Result<Option<(String, String)>, RegistryError> {
        if !self.username.is_empty() {
            return Ok(Some((self.username.clone(), self.password.clone())));
        }
        if self.auth.is_empty() {
            return Ok(None);
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .map_err(|e| RegistryError::InvalidCredentials(format!("auth is not base64: {e}")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| RegistryError::InvalidCredentials("auth is not UTF-8".into()))?;
        match text.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Some((u.to_string(), p.to_string()))),
            _ => Err(RegistryError::InvalidCredentials(
                "auth does not decode to username:password".into(),
            )),
        }
    }

    /// Whether these are meant for `host[:port]` (a server of the pull).
    pub fn applies_to(&self, host: &str) -> bool {
        let a = self.server_address.trim();
        if a.is_empty() {
            return true;
        }
        let a = a.split_once("://").map_or(a, |(_, r)| r);
        let a = a.split('/').next().unwrap_or(a);
        docker_alias(&a.to_ascii_lowercase()) == docker_alias(&host.to_ascii_lowercase())
    }

    /// A short stable digest, so that cached tokens are never shared
    /// between different credentials.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for f in [
            &self.username,
            &self.password,
            &self.auth,
            &self.identity_token,
            &self.registry_token,
        ] {
            h.update(f.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..12])
    }
}

/// One `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names in lower case.
    pub params: HashMap<String, String>,
}

/// Parses the challenges of a `WWW-Authenticate` value (RFC 7235: several
/// challenges, comma separated; parameters as token or quoted string).
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        String::from_utf8_lossy(&b[s..*i]).into_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // Not a token: skip a byte and go on.
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let val = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1; // the closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                // Unquoted: lenient, up to a comma or blank (realms with ':' appear).
                let s = i;
                while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                String::from_utf8_lossy(&b[s..i]).into_owned()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), val);
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}

/// What to send in `Authorization`, and until when.
#[derive(Clone, Debug)]
pub struct CachedAuth {
    pub header: String,
    pub expires: Option<Instant>,
}

/// Authorization that worked, per (server, repository, credentials).
#[derive(Default)]
pub struct AuthCache {
    map: Mutex<HashMap<String, CachedAuth>>,
}

fn cache_key(ep: &Endpoint, repository: &str, creds: Option<&Credentials>) -> String {
    format!(
        "{}\n{repository}\n{}",
        ep.base,
        creds.map(Credentials::fingerprint).unwrap_or_default()
    )
}

impl AuthCache {
    pub fn get(
        &self,
        ep: &Endpoint,
        repository: &str,
        creds: Option<&Credentials>,
    ) -> Option<String> {
        let key = cache_key(ep, repository, creds);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(a) if a.expires.is_none_or(|t| t > Instant::now()) => Some(a.header.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, ep: &Endpoint, repository: &str, creds: Option<&Credentials>, a: CachedAuth) {
        let key = cache_key(ep, repository, creds);
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, a);
    }

    pub fn forget(&self, ep: &Endpoint, repository: &str, creds: Option<&Credentials>) {
        let key = cache_key(ep, repository, creds);
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

pub fn basic_header(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// The token service's answer (`token` in the Docker flavour, `access_token` in OAuth2).
#[derive(serde::Deserialize, Default)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long to keep it (at least 60 s, as the spec says,
    /// less a margin).
    pub fn into_auth(self) -> Option<CachedAuth> {
        let tok = if self.token.is_empty() {
            self.access_token
        } else {
            self.token
        };
        if tok.is_empty() || tok.chars().any(|c| c.is_control() || c == ' ') {
            return None;
        }
        let secs = self.expires_in.unwrap_or(60).max(60);
        Some(CachedAuth {
            header: format!("Bearer {tok}"),
            expires: Some(Instant::now() + Duration::from_secs(secs - 10)),
        })
    }
}

/// The scope to ask for when the challenge names none.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");

        let c = parse_challenges(
            r#"Basic realm="Registry Realm, \"quoted\"", Bearer realm=https://x/t, service=svc, error="invalid_token""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], r#"Registry Realm, "quoted""#);
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "https://x/t");
        assert_eq!(c[1].params["service"], "svc");
        assert_eq!(c[1].params["error"], "invalid_token");
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic").len(), 1);
        // Garbage does not panic.
        let _ = parse_challenges("=\"\\");
        let _ = parse_challenges("Bearer realm=\"unterminated");
    }

    #[test]
    fn auth_field_decoding() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let c = Credentials {
            auth: enc("user:pa:ss"),
            ..Credentials::default()
        };
        assert_eq!(
            c.basic().ok().flatten(),
            Some(("user".to_string(), "pa:ss".to_string()))
        );
        // Username and password win over auth.
        let c2 = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..c.clone()
        };
        assert_eq!(c2.basic().ok().flatten(), Some(("u".into(), "p".into())));
        assert_eq!(Credentials::default().basic().ok(), Some(None));
        for bad in ["!!notbase64", &enc("nocolon"), &enc(":nouser")] {
            let c = Credentials {
                auth: bad.to_string(),
                ..Credentials::default()
            };
            assert!(
                matches!(c.basic(), Err(RegistryError::InvalidCredentials(_))),
                "{bad}"
            );
        }
        // Secrets stay out of logs.
        let dbg = format!("{c2:?}");
        assert!(
            !dbg.contains("pa:ss") && !dbg.contains(&enc("user:pa:ss")),
            "{dbg}"
        );
    }

    #[test]
    fn server_address_matching() {
        let c = |a: &str| Credentials {
            server_address: a.into(),
            ..Credentials::default()
        };
        assert!(c("").applies_to("anything:5000"));
        assert!(c("https://index.docker.io/v1/").applies_to("registry-1.docker.io"));
        assert!(c("docker.io").applies_to("registry-1.docker.io"));
        assert!(c("localhost:5000").applies_to("localhost:5000"));
        assert!(!c("localhost:5000").applies_to("127.0.0.1:5000"));
        assert!(!c("docker.io").applies_to("mirror.example.com"));
    }

    #[test]
    fn tokens() {
        let t = TokenResponse {
            access_token: "abc".into(),
            expires_in: Some(5),
            ..TokenResponse::default()
        };
        let a = t.into_auth().expect("token");
        assert_eq!(a.header, "Bearer abc");
        assert!(a
            .expires
            .is_some_and(|e| e > Instant::now() + Duration::from_secs(40)));
        assert!(TokenResponse::default().into_auth().is_none());
        assert!(TokenResponse {
            token: "a\r\nb".into(),
            ..TokenResponse::default()
        }
        .into_auth()
        .is_none());
    }
}
