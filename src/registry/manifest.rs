//! Manifests and indexes (OCI image spec, Docker schema 2), recognizing them
//! and choosing a platform from an index.

use super::reference::validate_digest;
use super::RegistryError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` header of manifest requests, most preferred first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on this machine's architecture, named as Go does.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            other => other,
        };
        let variant = match arch {
            "arm64" => Some("v8".to_string()),
            "arm" => Some("v7".to_string()),
            _ => None,
        };
        Platform {
            architecture: arch.to_string(),
            os: "linux".to_string(),
            variant,
        }
    }

    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_string(),
            os: os.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry's platform runs here. Variants: arm64 without
    /// one is v8, amd64 without one is v1.
    fn matches(&self, other: &Platform) -> bool {
        fn arch(a: &str) -> &str {
            match a {
                "x86_64" | "x86-64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            }
        }
        fn variant<'a>(arch: &str, v: Option<&'a str>) -> Option<&'a str> {
            match (arch, v) {
                ("arm64", None | Some("v8")) => None,
                ("amd64", None | Some("v1")) => None,
                (_, v) => v,
            }
        }
        let (a, b) = (arch(&self.architecture), arch(&other.architecture));
        self.os == other.os
            && a == b
            && variant(a, self.variant.as_deref()) == variant(b, other.variant.as_deref())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// A parsed manifest of either kind.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    Index(Index),
    Image(ImageManifest),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Index,
    Image,
    Schema1,
    Unknown,
}

fn kind_of(media_type: &str) -> Kind {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Kind::Schema1,
        _ => Kind::Unknown,
    }
}

fn bad(msg: String) -> RegistryError {
    RegistryError::BadResponse(msg)
}

/// Parses a manifest served with `content_type` (parameters allowed). A
/// missing or generic content type is settled by the document's own
/// `mediaType` or shape.
pub fn parse(
    content_type: &str,
    body: &[u8],
    what: &str,
) -> Result<(Manifest, String), RegistryError> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("manifest of {what} is not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad(format!("manifest of {what} is not a JSON object")))?;
    let declared = obj.get("mediaType").and_then(|v| v.as_str()).unwrap_or("");
    if obj.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(bad(format!(
            "{what} is a Docker schema 1 manifest, which is not supported"
        )));
    }
    let kind = match kind_of(&ct) {
        Kind::Unknown
            if matches!(
                ct.as_str(),
                "" | "application/json" | "text/plain" | "application/octet-stream"
            ) =>
        {
            match kind_of(declared) {
                Kind::Unknown if obj.contains_key("manifests") => Kind::Index,
                Kind::Unknown if obj.contains_key("layers") && obj.contains_key("config") => {
                    Kind::Image
                }
                k => k,
            }
        }
        Kind::Unknown => {
            return Err(bad(format!(
                "manifest of {what} has unsupported content type {ct:?}"
            )))
        }
        k => {
            let d = kind_of(declared);
            if !declared.is_empty() && d != k {
                return Err(bad(format!(
                    "manifest of {what} is served as {ct:?} but declares {declared:?}"
                )));
            }
            k
        }
    };
    let media_type = if declared.is_empty() || kind_of(&ct) != Kind::Unknown {
        ct.clone()
    } else {
        declared.to_string()
    };
    let m = match kind {
        Kind::Schema1 => {
            return Err(bad(format!(
                "{what} is a Docker schema 1 manifest, which is not supported"
            )))
        }
        Kind::Unknown => {
            return Err(bad(format!("manifest of {what} is of no known kind")));
        }
        Kind::Index => Manifest::Index(
            serde_json::from_value(value)
                .map_err(|e| bad(format!("image index of {what}: {e}")))?,
        ),
        Kind::Image => Manifest::Image(
            serde_json::from_value(value)
                .map_err(|e| bad(format!("image manifest of {what}: {e}")))?,
        ),
    };
    let schema = match &m {
        Manifest::Index(i) => i.schema_version,
        Manifest::Image(i) => i.schema_version,
    };
    if schema != 2 {
        return Err(bad(format!("manifest of {what}: schemaVersion {schema}")));
    }
    let descriptors: Vec<&Descriptor> = match &m {
        Manifest::Index(i) => i.manifests.iter().collect(),
        Manifest::Image(i) => std::iter::once(&i.config).chain(i.layers.iter()).collect(),
    };
    for d in descriptors {
        validate_digest(&d.digest).map_err(|why| bad(format!("manifest of {what}: {why}")))?;
    }
    Ok((m, media_type))
}

/// The entry of an index for `want`, skipping attestations and the like.
pub fn select<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        let is_manifest =
            matches!(kind_of(&d.media_type), Kind::Index | Kind::Image) || d.media_type.is_empty();
        let attestation = d
            .annotations
            .as_ref()
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some();
        is_manifest && !attestation && d.platform.as_ref().is_some_and(|p| want.matches(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
            platform: Some(Platform::new("linux", arch, variant)),
            annotations: None,
        }
    }

    #[test]
    fn platform_selection() {
        let idx = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                desc("arm", Some("v6"), 1),
                desc("arm", Some("v7"), 2),
                desc("amd64", Some("v3"), 3),
                desc("amd64", None, 4),
                desc("arm64", Some("v8"), 5),
                desc("s390x", None, 6),
            ],
        };
        let pick = |p: Platform| select(&idx, &p).map(|d| d.digest[7..9].to_string());
        assert_eq!(
            pick(Platform::new("linux", "amd64", None)).as_deref(),
            Some("04")
        );
        assert_eq!(
            pick(Platform::new("linux", "arm64", None)).as_deref(),
            Some("05")
        );
        assert_eq!(
            pick(Platform::new("linux", "arm64", Some("v8"))).as_deref(),
            Some("05")
        );
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v7"))).as_deref(),
            Some("02")
        );
        assert_eq!(pick(Platform::new("linux", "riscv64", None)), None);
        assert_eq!(pick(Platform::new("windows", "amd64", None)), None);
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.architecture, "amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64/v8");
        }
    }

    #[test]
    fn recognizes_kinds() {
        let d = format!("sha256:{}", "a".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":2}},"layers":[]}}"#
        );
        let (k, mt) = parse("", m.as_bytes(), "x").expect("sniffed");
        assert!(matches!(k, Manifest::Image(_)));
        assert_eq!(mt, "");
        let (_, mt) =
            parse(&format!("{OCI_MANIFEST}; charset=utf-8"), m.as_bytes(), "x").expect("typed");
        assert_eq!(mt, OCI_MANIFEST);
        // Content type and declared type disagree.
        let m2 = m.replace(
            "{\"schemaVersion\":2,",
            &format!("{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\","),
        );
        assert!(matches!(
            parse(OCI_MANIFEST, m2.as_bytes(), "x"),
            Err(RegistryError::BadResponse(_))
        ));
        for (ct, body) in [
            (OCI_MANIFEST, "not json"),
            (OCI_MANIFEST, "[1]"),
            ("text/html", m.as_str()),
            (
                DOCKER_SCHEMA1_SIGNED,
                r#"{"schemaVersion":1,"fsLayers":[]}"#,
            ),
            ("application/json", r#"{"schemaVersion":1,"fsLayers":[]}"#),
            (
                OCI_MANIFEST,
                r#"{"schemaVersion":2,"config":{"digest":"sha256:../x","size":1},"layers":[]}"#,
            ),
            (OCI_INDEX, r#"{"schemaVersion":3,"manifests":[]}"#),
            ("application/json", r#"{"schemaVersion":2}"#),
        ] {
            assert!(
                matches!(
                    parse(ct, body.as_bytes(), "x"),
                    Err(RegistryError::BadResponse(_))
                ),
                "{ct} {body}"
            );
        }
    }
}
