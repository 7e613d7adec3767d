//! Configuration: a TOML file, overridden by command-line flags.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_SOCKET: &str = "unix:///var/run/singularity.sock";
pub const DEFAULT_STORAGE_DIR: &str = "/var/lib/singularity";
pub const DEFAULT_RUN_DIR: &str = "/var/run/singularity";
pub const DEFAULT_CONFIG_FILE: &str = "/etc/sycri/sycri.toml";
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The reference plugins (containernetworking/plugins) that read nothing of
/// the pod from CNI_ARGS.
pub const DEFAULT_SPARE_NETNS_ATTACH: &[&str] = &[
    "bridge",
    "ptp",
    "macvlan",
    "ipvlan",
    "host-local",
    "static",
    "loopback",
    "portmap",
    "tuning",
    "bandwidth",
    "firewall",
];

/// The usual place, then Debian's (containernetworking-plugins).
pub const DEFAULT_CNI_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];
/// The cgroup group that holds containers whose pod names no cgroup parent.
pub const DEFAULT_CGROUP_PARENT: &str = "sycri";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the CRI socket listens (`unix:///path` or a plain path).
    pub listen: String,
    /// Images (SIF files) and their index.
    pub storage_dir: PathBuf,
    /// Persistent pod and container state (survives restarts); default `<storage_dir>/state`.
    pub state_dir: Option<PathBuf>,
    /// Volatile state: pinned namespaces, image mounts, monitor sockets.
    pub run_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter.
    pub log_level: String,
    /// The cgroup driver reported to the kubelet. Only `cgroupfs` is built:
    /// `systemd` parses (so that `--print-config` shows it) but the server
    /// refuses to start with it ([`Config::validate`]).
    pub cgroup_driver: CgroupDriver,
    /// The group, relative to each cgroup hierarchy's root, that holds the
    /// cgroups of containers whose pod names no `cgroup_parent`.
    pub cgroup_parent: String,
    /// Address of the streaming server (exec, attach, port-forward).
    pub stream_address: String,
    /// How long StopPodSandbox gives each running container after its stop
    /// signal before SIGKILL, in seconds; 0 (the default, as containerd)
    /// kills at once.
    pub pod_stop_timeout_secs: u64,
    /// Network namespaces kept ready for the next pods (with their own
    /// network and a CNI config), so that CNI ADD need not wait for one; 0
    /// makes each pod's namespace as the pod is made.
    pub spare_netns: usize,
    /// CNI plugin types whose ADD depends only on the namespace, the id and
    /// the capability values, never on which pod it is for (the pod's name,
    /// namespace and uid in CNI_ARGS): when every plugin of the network is
    /// one of them, a spare is attached to the network before a pod takes
    /// it, and RunPodSandbox runs no plugin. Empty: spares are attached as
    /// they are taken.
    pub spare_netns_attach: Vec<String>,
    /// Largest unpacked size of an image pulled from a registry (all layers),
    /// a guard against decompression bombs.
    pub max_image_bytes: u64,
    /// The Sylabs library API used for `library://` images without a host.
    pub library_url: String,
    /// CNI network configs (`*.conflist`, `*.conf`, `*.json`); the first by
    /// file name that parses is the pod network.
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked up, in order (also CNI_PATH).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Runtime handler names RunPodSandbox accepts besides "" (all run on
    /// sycri's engine; a RuntimeClass's handler must be listed here).
    pub runtime_handlers: Vec<String>,
    /// Per-registry mirrors and plain-http settings (like containerd's hosts.toml):
    /// `[registry.hosts."docker.io"] mirrors = ["http://127.0.0.1:5000"]`.
    pub registry: crate::registry::RegistryConfig,
    /// The binary that runs the helpers (container monitors, pod sandboxes,
    /// exec, port-forward): a `sycri-engine` built from the same sources.
    /// Default: `sycri-engine` beside `sycri` when it matches, else `sycri`.
    pub engine_binary: Option<PathBuf>,
    /// Block compression of images converted from registries: `auto` (zstd
    /// where the kernel's squashfs has it, else gzip), `zstd` or `gzip`.
    pub image_compression: ImageCompression,
    /// Its level (zstd 1-22, default 1; gzip 1-9, default 6).
    pub image_compression_level: Option<i32>,
    /// A pull that receives nothing for this long fails (`"5m"`, `"30s"`; `"0"`: never).
    pub image_pull_progress_timeout: DurationText,
    /// Layers of one image downloaded at once.
    pub max_concurrent_downloads: usize,
    /// How long an image's root filesystem stays mounted after its last
    /// container is removed, for the next one to start warm (`"10m"`;
    /// `"0"`: released at once). RemoveImage releases it at once.
    pub image_unmount_delay: DurationText,
}

/// See [`Config::image_compression`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageCompression {
    #[default]
    Auto,
    Zstd,
    Gzip,
    None,
}

impl ImageCompression {
    /// The compression asked for; `None` for `auto`.
    pub fn resolve(self) -> Option<crate::convert::Compression> {
        match self {
            ImageCompression::Auto => None,
            ImageCompression::Zstd => Some(crate::convert::Compression::Zstd),
            ImageCompression::Gzip => Some(crate::convert::Compression::Gzip),
            ImageCompression::None => Some(crate::convert::Compression::None),
        }
    }
}

/// A duration written as in containerd's config: `"5m"`, `"1m30s"`, `"500ms"`,
/// `"2h"`, `"0"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationText(pub std::time::Duration);

impl DurationText {
    pub fn parse(s: &str) -> Result<DurationText, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(DurationText(std::time::Duration::ZERO));
        }
        let mut total = 0u128;
        let mut rest = t;
        if rest.is_empty() {
            return Err(format!("{s:?} is not a duration"));
        }
        while !rest.is_empty() {
            let n = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let value: u128 = rest[..n]
                .parse()
                .map_err(|_| format!("{s:?} is not a duration (like \"5m\" or \"30s\")"))?;
            rest = &rest[n..];
            let u = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let ms = match &rest[..u] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
            };
            rest = &rest[u..];
            total = total.saturating_add(value.saturating_mul(ms));
        }
        let ms = u64::try_from(total).map_err(|_| format!("{s:?} is too long"))?;
        Ok(DurationText(std::time::Duration::from_millis(ms)))
    }
}

impl std::fmt::Display for DurationText {
    // `is_multiple_of` needs Rust 1.87; the crate builds with 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0")
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for DurationText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DurationText::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_SOCKET.to_string(),
            storage_dir: PathBuf::from(DEFAULT_STORAGE_DIR),
            state_dir: None,
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            log_level: "info".to_string(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_string(),
            stream_address: "127.0.0.1:0".to_string(),
            pod_stop_timeout_secs: 0,
            spare_netns: 1,
            spare_netns_attach: DEFAULT_SPARE_NETNS_ATTACH
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_image_bytes: 8 << 30,
            library_url: "https://library.sylabs.io".to_string(),
            cni_conf_dir: PathBuf::from(DEFAULT_CNI_CONF_DIR),
            cni_bin_dirs: DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect(),
            runtime_handlers: Vec::new(),
            registry: crate::registry::RegistryConfig::default(),
            engine_binary: None,
            image_compression: ImageCompression::Auto,
            image_compression_level: None,
            image_pull_progress_timeout: DurationText(std::time::Duration::from_secs(300)),
            max_concurrent_downloads: 3,
            image_unmount_delay: DurationText(std::time::Duration::from_secs(600)),
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("listen address {0:?}: only unix sockets are supported (unix:///path)")]
    Listen(String),
    #[error("config: {0}")]
    Invalid(String),
    #[error(
        "cgroup_driver = \"systemd\" is not supported yet: sycri makes its cgroups as plain \
         directories (the cgroupfs driver) and cannot place them in systemd slices; set \
         cgroup_driver = \"cgroupfs\" and run the kubelet with --cgroup-driver=cgroupfs"
    )]
    SystemdDriver,
    #[error(
        "cgroup_parent {0:?} must be a plain relative path inside the cgroup hierarchy \
         (no empty, \".\" or \"..\" segments)"
    )]
    CgroupParent(String),
}

/// `path` as a cgroup path relative to a hierarchy's root (surrounding
/// slashes dropped), or None when it is empty or could leave the hierarchy:
/// an empty, `.` or `..` segment, or a NUL byte.
pub fn cgroup_path(path: &str) -> Option<&str> {
    let p = path.trim_matches('/');
    let plain = !p.is_empty()
        && !p.contains('\0')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    plain.then_some(p)
}

impl Config {
    /// Reads a config file. A missing file at the default location gives the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let c: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?;
                c.check()?;
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Checks values that parse but make no sense.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(level) = self.image_compression_level {
            let c = self
                .image_compression
                .resolve()
                .unwrap_or_else(crate::convert::Compression::host_default);
            if !c.levels().contains(&level) {
                return Err(ConfigError::Invalid(format!(
                    "image_compression_level {level} is not a {} level ({:?})",
                    c.name(),
                    c.levels()
                )));
            }
        }
        if self.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_downloads must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Refuses what the server cannot do as configured; run before it
    /// starts (not by `--print-config`, which shows any configuration).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_path()?;
        if self.cgroup_driver == CgroupDriver::Systemd {
            return Err(ConfigError::SystemdDriver);
        }
        if cgroup_path(&self.cgroup_parent).is_none() {
            return Err(ConfigError::CgroupParent(self.cgroup_parent.clone()));
        }
        Ok(())
    }

    /// `cgroup_parent` relative to each hierarchy's root ("/sycri/" is
    /// "sycri"); the default when it is not valid, which [`Config::validate`]
    /// refuses before the server starts.
    pub fn cgroup_parent_path(&self) -> &str {
        cgroup_path(&self.cgroup_parent).unwrap_or(DEFAULT_CGROUP_PARENT)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.storage_dir.join("state"))
    }

    /// The socket path from `listen`.
    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        let l = self.listen.as_str();
        let p = l.strip_prefix("unix://").unwrap_or(l);
        if p.is_empty() || l.contains("://") && !l.starts_with("unix://") || !p.starts_with('/') {
            return Err(ConfigError::Listen(l.to_string()));
        }
        Ok(PathBuf::from(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_singularity_cri() {
        let c = Config::default();
        assert_eq!(
            c.socket_path().ok(),
            Some(PathBuf::from("/var/run/singularity.sock"))
        );
        assert_eq!(c.storage_dir, PathBuf::from("/var/lib/singularity"));
        assert_eq!(c.state_dir(), PathBuf::from("/var/lib/singularity/state"));
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(
            c.cni_bin_dirs,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let tmp = tempfile_dir();
        let dir = tmp.path();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "listen = \"/tmp/x.sock\"\ncgroup_driver = \"systemd\"\n",
        )
        .unwrap_or_default();
        let c = Config::load(&p, true).expect("load");
        assert_eq!(c.socket_path().ok(), Some(PathBuf::from("/tmp/x.sock")));
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        std::fs::write(&p, "listn = 1\n").unwrap_or_default();
        assert!(matches!(
            Config::load(&p, true),
            Err(ConfigError::Parse { .. })
        ));
        assert!(Config::load(&dir.join("missing.toml"), true).is_err());
        assert_eq!(
            Config::load(&dir.join("missing.toml"), false).ok(),
            Some(Config::default())
        );
        let bad = Config {
            listen: "tcp://1.2.3.4:5".into(),
            ..Config::default()
        };
        assert!(bad.socket_path().is_err());
    }

    #[test]
    fn pull_keys() {
        let tmp = tempfile_dir();
        let dir = tmp.path();
        let p = dir.join("pull.toml");
        std::fs::write(
            &p,
            "image_compression = \"gzip\"\nimage_compression_level = 9\n\
             image_pull_progress_timeout = \"1m30s\"\nmax_concurrent_downloads = 5\n",
        )
        .unwrap_or_default();
        let c = Config::load(&p, true).expect("load");
        assert_eq!(c.image_compression, ImageCompression::Gzip);
        assert_eq!(c.image_compression_level, Some(9));
        assert_eq!(c.image_pull_progress_timeout.0.as_secs(), 90);
        std::fs::write(dir.join("none.toml"), "image_compression = \"none\"\n").unwrap_or_default();
        let none = Config::load(&dir.join("none.toml"), true).expect("load none");
        assert_eq!(
            none.image_compression.resolve(),
            Some(crate::convert::Compression::None)
        );
        assert_eq!(c.max_concurrent_downloads, 5);
        // Printed and read back.
        let text = toml::to_string(&c).expect("print");
        assert!(
            text.contains("image_pull_progress_timeout = \"90s\""),
            "{text}"
        );
        assert_eq!(toml::from_str::<Config>(&text).expect("reparse"), c);
        assert_eq!(
            Config::default().image_pull_progress_timeout.to_string(),
            "5m"
        );
        for bad in [
            "image_compression = \"xz\"\n",
            "image_compression = \"gzip\"\nimage_compression_level = 12\n",
            "image_compression = \"none\"\nimage_compression_level = 1\n",
            "image_pull_progress_timeout = \"5 minutes\"\n",
            "image_pull_progress_timeout = \"\"\n",
            "max_concurrent_downloads = 0\n",
        ] {
            std::fs::write(&p, bad).unwrap_or_default();
            assert!(Config::load(&p, true).is_err(), "{bad}");
        }
        assert_eq!(
            DurationText::parse("0").map(|d| d.0),
            Ok(std::time::Duration::ZERO)
        );
        assert_eq!(
            DurationText::parse("250ms").map(|d| d.0),
            Ok(std::time::Duration::from_millis(250))
        );
    }

    #[test]
    fn the_systemd_driver_parses_but_is_refused_at_start() {
        let systemd: Config = toml::from_str("cgroup_driver = \"systemd\"\n").expect("parse");
        assert_eq!(systemd.cgroup_driver, CgroupDriver::Systemd);
        let e = systemd.validate().expect_err("systemd refused");
        assert!(matches!(e, ConfigError::SystemdDriver), "{e}");
        assert!(e.to_string().contains("cgroup_driver"), "{e}");
        assert!(e.to_string().contains("systemd"), "{e}");
        // What --print-config prints reads back the same.
        let printed = toml::to_string_pretty(&systemd).expect("print");
        assert_eq!(toml::from_str::<Config>(&printed).ok(), Some(systemd));
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn cgroup_parent_is_a_plain_path() {
        let c = Config::default();
        assert_eq!(c.cgroup_parent_path(), "sycri");
        for (given, want) in [("/sycri-test/", "sycri-test"), ("a/b", "a/b")] {
            let c = Config {
                cgroup_parent: given.into(),
                ..Config::default()
            };
            assert!(c.validate().is_ok(), "{given}");
            assert_eq!(c.cgroup_parent_path(), want);
        }
        for bad in ["", "/", "a/../b", "..", "a//b", "./a", "a\0b"] {
            let c = Config {
                cgroup_parent: bad.into(),
                ..Config::default()
            };
            let e = c.validate().expect_err(bad);
            assert!(matches!(e, ConfigError::CgroupParent(_)), "{bad}: {e}");
            assert!(e.to_string().contains("cgroup_parent"), "{e}");
        }
    }

    /// A directory of the test's own (tests run in parallel in one process),
    /// removed when dropped.
    fn tempfile_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sycri-config-test")
            .tempdir()
            .expect("tempdir")
    }
}
