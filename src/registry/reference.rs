//! Image references, parsed and normalized the way Docker and containerd do:
//! `busybox` is `docker.io/library/busybox:latest`.
//!
//! Grammar (from the distribution reference format):
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component [ "/" path-component ]*
//! domain     := host [ ":" port ]          host: DNS name, IPv4 or [IPv6]
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex          (sha256: 64 hex, sha512: 128 hex)
//! ```
//! The first component is a registry host when it contains `.` or `:`, is
//! `localhost`, or has upper-case letters (which a repository may not).

use super::RegistryError;
use std::fmt;

/// Registry of references without one.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves the Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalized image reference. At least one of `tag` and `digest` is set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `registry.k8s.io`, `localhost:5000`, `[::1]:5000`.
    pub registry: String,
    /// `library/busybox`, `user/app`, `pause`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

fn invalid(reference: &str, why: impl fmt::Display) -> RegistryError {
    RegistryError::InvalidReference(format!("invalid image reference {reference:?}: {why}"))
}

impl Reference {
    /// Parses and normalizes a reference (an optional `docker://` prefix is dropped).
    pub fn parse(input: &str) -> Result<Reference, RegistryError> {
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if s.is_empty() {
            return Err(invalid(input, "empty"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(input, format!("contains {c:?}")));
        }
        if s.contains("://") {
            return Err(invalid(
                input,
                "unsupported transport (only docker:// is accepted here)",
            ));
        }

        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d).map_err(|why| invalid(input, why))?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };

        // A tag is after the last ':' that follows the last '/' (a ':' before
        // a '/' is a port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|why| invalid(input, why))?;
        }
        if name.is_empty() {
            return Err(invalid(input, "no repository name"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(
                input,
                format!("name longer than {MAX_NAME_LEN} characters"),
            ));
        }

        let (registry, mut repository) = split_domain(name);
        let registry = match registry {
            Some(d) => {
                validate_domain(d).map_err(|why| invalid(input, why))?;
                if d == DOCKER_HUB_LEGACY || d == DOCKER_HUB_API {
                    DOCKER_HUB.to_string()
                } else {
                    d.to_string()
                }
            }
            None => DOCKER_HUB.to_string(),
        };
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        validate_repository(&repository).map_err(|why| invalid(input, why))?;

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest is asked for by: the digest if there is one, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The host (with port) that serves the registry API for this reference.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `digest` (no tag).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn split_domain(name: &str) -> (Option<&str>, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest.to_string())
        }
        _ => (None, name.to_string()),
    }
}

fn validate_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry host {d:?}: unclosed '['"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("registry host {d:?}: bad IPv6 address"))?;
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("registry host {d:?}: junk after ']'")),
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            return Err(format!("registry host {d:?} is not a valid host name"));
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(format!("registry host {d:?}: bad port"));
        }
    }
    Ok(())
}

fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name {repo:?} must be lowercase"));
    }
    for comp in repo.split('/') {
        if !valid_path_component(comp) {
            return Err(format!(
                "repository name {repo:?}: component {comp:?} is not [a-z0-9] separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or '-'+, then an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

fn validate_tag(t: &str) -> Result<(), String> {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if b.is_empty() {
        return Err("empty tag".into());
    }
    if b.len() > MAX_TAG_LEN {
        return Err(format!("tag longer than {MAX_TAG_LEN} characters"));
    }
    if !word(b[0]) || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') {
        return Err(format!("tag {t:?} is not [A-Za-z0-9_][A-Za-z0-9_.-]*"));
    }
    Ok(())
}

/// Checks `algorithm:hex` for the algorithms we can verify; returns them.
pub fn validate_digest(d: &str) -> Result<(&str, &str), String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("digest {d:?} is not algorithm:hex"))?;
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("digest {d:?}: unsupported algorithm {alg:?}")),
    };
    if hex.len() != want
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("digest {d:?}: want {want} lower-case hex digits"));
    }
    Ok((alg, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalization_table() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "docker://busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
            ),
            ("user/app", "docker.io", "user/app", Some("latest"), false),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io",
                "pause",
                Some("3.9"),
                false,
            ),
            (
                "localhost:5000/x",
                "localhost:5000",
                "x",
                Some("latest"),
                false,
            ),
            ("localhost/x", "localhost", "x", Some("latest"), false),
            (
                "127.0.0.1:5000/a/b:tag",
                "127.0.0.1:5000",
                "a/b",
                Some("tag"),
                false,
            ),
            ("[::1]:5000/a:v1", "[::1]:5000", "a", Some("v1"), false),
            (
                "quay.io/a/b/c-d__e.f:V_1.0-x",
                "quay.io",
                "a/b/c-d__e.f",
                Some("V_1.0-x"),
                false,
            ),
            ("busybox@DIGEST", "docker.io", "library/busybox", None, true),
            (
                "ghcr.io/o/r:1.0@DIGEST",
                "ghcr.io",
                "o/r",
                Some("1.0"),
                true,
            ),
        ];
        for (input, reg, repo, tag, has_digest) in cases {
            let input = input.replace("DIGEST", D);
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, *reg, "{input}");
            assert_eq!(r.repository, *repo, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest.is_some(), *has_digest, "{input}");
        }
        let r = Reference::parse("busybox").expect("parse");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.object(), "latest");
        let r = Reference::parse(&format!("ghcr.io/o/r:1.0@{D}")).expect("parse");
        assert_eq!(r.to_string(), format!("ghcr.io/o/r:1.0@{D}"));
        assert_eq!(r.object(), D);
        assert_eq!(r.api_host(), "ghcr.io");
        let r = Reference::parse(&format!("busybox@{D}")).expect("parse");
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        // Round trip.
        let again = Reference::parse(&r.to_string()).expect("reparse");
        assert_eq!(again, r);
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "docker://",
            "Busybox",
            "user/App",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            &format!("busybox@sha256:{}", "A".repeat(64)),
            "a//b",
            "a/b/",
            "/a",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "bus box",
            "localhost:port/x",
            "localhost:99999/x",
            "[::1/x",
            "[zz]:5000/x",
            "-bad.host/x",
            "oras://ghcr.io/x",
            &format!("busybox:{}", "t".repeat(129)),
            &"a".repeat(256),
        ] {
            match Reference::parse(bad) {
                Err(RegistryError::InvalidReference(msg)) => {
                    assert!(msg.contains("invalid image reference"), "{msg}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match Reference::parse("user/App") {
            Err(e) => assert!(e.to_string().contains("must be lowercase"), "{e}"),
            Ok(r) => panic!("{r}"),
        }
    }

    #[test]
    fn digest_validation() {
        assert_eq!(validate_digest(D).ok(), Some(("sha256", &D[7..])));
        assert!(validate_digest(&format!("sha512:{}", "0".repeat(128))).is_ok());
        assert!(validate_digest("sha256:../../etc/passwd").is_err());
        assert!(validate_digest("sha256").is_err());
    }
}
