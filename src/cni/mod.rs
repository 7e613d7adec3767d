//! Pod networking through CNI (Container Network Interface, spec 1.0).
//!
//! The pod network is the first configuration in the CNI config directory.
//! Attaching a pod runs the network's plugins in order with ADD, each one
//! getting the previous one's result as `prevResult`; detaching runs DEL in
//! reverse order; CHECK verifies an attachment. What was used at ADD (the
//! network configuration, the arguments, the result) is kept in an
//! [`Attachment`] on disk in the pod's state directory, so that DEL and CHECK
//! work the same after a server restart or a change of the config directory.

pub mod conf;
pub mod error;
pub mod plugin;
pub mod result;

use crate::engine::Reaper;
use conf::version_at_least;
pub use conf::NetworkConfig;
pub use error::CniError;
pub use plugin::Priority;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The interface the pod gets inside its network namespace.
pub const POD_IFNAME: &str = "eth0";
/// Where the attachment of a pod is kept, in its state directory.
pub const ATTACHMENT_FILE: &str = "network.json";
/// How long one plugin call may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The pod facts CNI hands to plugins.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox id (K8S_POD_INFRA_CONTAINER_ID, CNI_CONTAINERID).
    pub id: String,
}

/// One pod on one network: all that DEL and CHECK need, kept on disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Attachment {
    /// The network configuration list used at ADD.
    pub network: Value,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS pairs.
    pub args: Vec<(String, String)>,
    /// Values for the plugins' capabilities (`portMappings`, `dns`, ...); a
    /// plugin gets those it declares, as `runtimeConfig`.
    pub capability_args: Map<String, Value>,
    /// The result of the last plugin's ADD, once it succeeded.
    #[serde(default)]
    pub result: Option<Value>,
}

impl Attachment {
    pub fn new(
        network: &NetworkConfig,
        pod: &PodRef,
        netns: &Path,
        capability_args: Map<String, Value>,
    ) -> Attachment {
        Attachment {
            network: network.to_value(),
            container_id: pod.id.clone(),
            netns: netns.to_path_buf(),
            ifname: POD_IFNAME.to_string(),
            args: pod_args(pod),
            capability_args,
            result: None,
        }
    }

    /// An attachment made ahead of its pod (a spare network namespace's):
    /// the id the pod will have, no pod facts in CNI_ARGS (the pod is not
    /// known yet; [`Self::for_pod`] adds them when a pod takes it).
    pub fn ahead(
        network: &NetworkConfig,
        id: &str,
        netns: &Path,
        capability_args: Map<String, Value>,
    ) -> Attachment {
        Attachment {
            network: network.to_value(),
            container_id: id.to_string(),
            netns: netns.to_path_buf(),
            ifname: POD_IFNAME.to_string(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ],
            capability_args,
            result: None,
        }
    }

    /// The pod `pod` (whose id is this attachment's) took it: DEL and CHECK
    /// get the pod's facts from now on, as an attachment made for it would.
    pub fn for_pod(&mut self, pod: &PodRef) {
        debug_assert_eq!(pod.id, self.container_id);
        self.args = pod_args(pod);
    }

    /// What each plugin of the network gets as `runtimeConfig` from this
    /// attachment's capability values.
    pub fn runtime_configs(&self) -> Vec<Map<String, Value>> {
        self.network_config()
            .map(|net| runtime_configs(&net, &self.capability_args))
            .unwrap_or_default()
    }

    /// The network configuration this attachment was made with.
    pub fn network_config(&self) -> Result<NetworkConfig, CniError> {
        let bytes = serde_json::to_vec(&self.network).map_err(|e| CniError::BadConfig {
            path: PathBuf::from(ATTACHMENT_FILE),
            reason: e.to_string(),
        })?;
        NetworkConfig::parse(&bytes, Path::new(ATTACHMENT_FILE)).map_err(|reason| {
            CniError::BadConfig {
                path: PathBuf::from(ATTACHMENT_FILE),
                reason,
            }
        })
    }

    /// The pod's addresses (IPv4 first), from the ADD result.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result
            .as_ref()
            .map(|r| result::pod_ips(r, &self.ifname))
            .unwrap_or_default()
    }

    /// The same namespace is pinned at `netns` now (a spare the ADD ran on,
    /// taken by the pod): the attachment and its result's interfaces name
    /// the new path, for DEL and the pod's status.
    pub fn moved_to(&mut self, netns: &Path) {
        let old = self.netns.to_string_lossy().into_owned();
        let new = Value::String(netns.to_string_lossy().into_owned());
        let interfaces = self
            .result
            .as_mut()
            .and_then(|r| r.get_mut("interfaces"))
            .and_then(Value::as_array_mut);
        for i in interfaces.into_iter().flatten() {
            if let Some(sb) = i.get_mut("sandbox") {
                if sb.as_str() == Some(&old) {
                    *sb = new.clone();
                }
            }
        }
        self.netns = netns.to_path_buf();
    }

    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Reads the attachment kept in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Attachment>, CniError> {
        let p = dir.join(ATTACHMENT_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CniError::BadConfig {
                    path: p,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::Io {
                context: format!("read {}", p.display()),
                source: e,
            }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), CniError> {
        let p = dir.join(ATTACHMENT_FILE);
        let data = serde_json::to_vec_pretty(self).map_err(|e| CniError::Io {
            context: "encode network attachment".into(),
            source: std::io::Error::other(e),
        })?;
        sycri_native::util::write_atomic(&p, &data).map_err(|e| CniError::Io {
            context: format!("write {}", p.display()),
            source: e,
        })
    }

    pub fn remove(dir: &Path) -> Result<(), CniError> {
        let p = dir.join(ATTACHMENT_FILE);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::Io {
                context: format!("remove {}", p.display()),
                source: e,
            }),
        }
    }
}

/// The CNI_ARGS of a pod's attachment (what containerd passes).
fn pod_args(pod: &PodRef) -> Vec<(String, String)> {
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
        ("K8S_POD_NAME".into(), pod.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.id.clone()),
        ("K8S_POD_UID".into(), pod.uid.clone()),
    ]
}

/// What `plugin` gets as `runtimeConfig`: the values of the capabilities it
/// declares, of those in `capability_args`.
fn runtime_config(
    plugin: &Map<String, Value>,
    capability_args: &Map<String, Value>,
) -> Map<String, Value> {
    let mut rc = Map::new();
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = capability_args.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    rc
}

/// What each plugin of `net` gets as `runtimeConfig` from `capability_args`:
/// two sets of values that give the same are the same to the network.
pub fn runtime_configs(
    net: &NetworkConfig,
    capability_args: &Map<String, Value>,
) -> Vec<Map<String, Value>> {
    net.plugins
        .iter()
        .map(|p| runtime_config(p, capability_args))
        .collect()
}

/// Whether `p` is a namespace file (a pinned nsfs inode), not a plain file
/// left where a pin was.
pub fn is_netns(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) reads a NUL-terminated path and fills a zeroed struct
    // that lives on our stack for the call.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

/// The CNI side of the runtime: where configs and plugins are.
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// The node's pod CIDRs (UpdateRuntimeConfig), for the `ipRanges` capability.
    pod_cidrs: std::sync::RwLock<Vec<String>>,
}

impl Cni {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>) -> Cni {
        Cni {
            conf_dir,
            bin_dirs,
            pod_cidrs: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Takes the node's pod CIDR(s), comma-separated for dual stack; each must be
    /// an address/prefix. An empty string clears them.
    pub fn set_pod_cidrs(&self, cidrs: &str) -> Result<(), String> {
        let list: Vec<String> = cidrs
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        for c in &list {
            let ok = c.split_once('/').is_some_and(|(a, p)| {
                a.parse::<IpAddr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
            });
            if !ok {
                return Err(format!("pod CIDR {c:?} is not an address/prefix"));
            }
        }
        *self.pod_cidrs.write().unwrap_or_else(|p| p.into_inner()) = list;
        Ok(())
    }

    /// The `ipRanges` capability value: one range set per pod CIDR; None without any.
    pub fn ip_ranges(&self) -> Option<Value> {
        let cidrs = self.pod_cidrs.read().unwrap_or_else(|p| p.into_inner());
        (!cidrs.is_empty()).then(|| {
            Value::Array(
                cidrs
                    .iter()
                    .map(|c| serde_json::json!([{ "subnet": c }]))
                    .collect(),
            )
        })
    }

    /// The pod network, or None when the config dir has no network config.
    pub fn network(&self) -> Result<Option<NetworkConfig>, CniError> {
        conf::load(&self.conf_dir)
    }

    /// The binary of plugin `ty`: the first of the plugin dirs that has it.
    pub fn find_plugin(&self, ty: &str) -> Result<PathBuf, CniError> {
        use std::os::unix::fs::PermissionsExt;
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: ty.to_string(),
                dirs: self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// Whether pods can be networked: a network config whose plugins all exist.
    pub fn ready(&self) -> Result<NetworkConfig, CniError> {
        let net = self.network()?.ok_or_else(|| CniError::NoConfig {
            dir: self.conf_dir.clone(),
        })?;
        for ty in net.plugin_types() {
            self.find_plugin(ty)?;
        }
        Ok(net)
    }

    /// The configuration one plugin gets on stdin: its own, with the network's
    /// name and version, the runtime values of the capabilities it declares,
    /// and the previous result.
    fn plugin_config(
        net: &NetworkConfig,
        plugin: &Map<String, Value>,
        capability_args: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Vec<u8> {
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(net.name.clone()));
        conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
        conf.remove("runtimeConfig");
        let rc = runtime_config(plugin, capability_args);
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        conf.remove("prevResult");
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
    }

    async fn call(
        &self,
        reaper: &Reaper,
        att: &Attachment,
        net: &NetworkConfig,
        (command, priority): (&str, Priority),
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        let ty = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let binary = self.find_plugin(ty)?;
        let input = Self::plugin_config(net, plugin, &att.capability_args, prev);
        // DEL with the namespace gone: the plugins release what is outside it.
        let netns = if command == "DEL" && !is_netns(&att.netns) {
            PathBuf::new()
        } else {
            att.netns.clone()
        };
        let args = att.cni_args();
        let call = plugin::Call {
            priority,
            command,
            container_id: &att.container_id,
            netns: &netns,
            ifname: &att.ifname,
            args: &args,
            path: &self.bin_dirs,
            timeout: PLUGIN_TIMEOUT,
        };
        tracing::debug!(plugin = ty, command, container = %att.container_id, "CNI call");
        plugin::run(reaper, &binary, &call, &input).await
    }

    /// ADD: runs the chain; the attachment gets the final result.
    pub async fn add(
        &self,
        reaper: &Reaper,
        att: &mut Attachment,
        priority: Priority,
    ) -> Result<(), CniError> {
        let net = att.network_config()?;
        let mut prev: Option<Value> = None;
        for p in &net.plugins {
            let out = self
                .call(reaper, att, &net, ("ADD", priority), p, prev.as_ref())
                .await?;
            let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
            if out.iter().all(u8::is_ascii_whitespace) {
                // Nothing new from this plugin: the previous result stands.
                continue;
            }
            let v: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
                plugin: ty.to_string(),
                command: "ADD".into(),
                reason: e.to_string(),
            })?;
            if !v.is_object() {
                return Err(CniError::BadResult {
                    plugin: ty.to_string(),
                    command: "ADD".into(),
                    reason: "not a JSON object".into(),
                });
            }
            prev = Some(v);
        }
        att.result = prev;
        Ok(())
    }

    /// DEL, in reverse order. Every plugin is called even when one fails; the
    /// first failure is returned.
    pub async fn del(
        &self,
        reaper: &Reaper,
        att: &Attachment,
        priority: Priority,
    ) -> Result<(), CniError> {
        let net = att.network_config()?;
        let prev = att
            .result
            .as_ref()
            .filter(|_| version_at_least(&net.cni_version, "0.4.0"));
        let mut first_err = None;
        for p in net.plugins.iter().rev() {
            if let Err(e) = self
                .call(reaper, att, &net, ("DEL", priority), p, prev)
                .await
            {
                tracing::warn!(container = %att.container_id, error = %e, "CNI DEL");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> NetworkConfig {
        NetworkConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"t","plugins":[
                {"type":"bridge","bridge":"b0","runtimeConfig":{"stale":1}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            Path::new("t.conflist"),
        )
        .expect("parse")
    }

    #[test]
    fn plugins_get_name_version_their_capabilities_and_prev_result() {
        let n = net();
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 8080}]));
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));
        caps.insert("dns".into(), json!({"servers": ["10.0.0.10"]}));
        let first: Value =
            serde_json::from_slice(&Cni::plugin_config(&n, &n.plugins[0], &caps, None))
                .expect("json");
        assert_eq!(first["name"], "t");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert_eq!(first["bridge"], "b0");
        assert!(first.get("runtimeConfig").is_none());
        assert!(first.get("prevResult").is_none());
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second: Value =
            serde_json::from_slice(&Cni::plugin_config(&n, &n.plugins[1], &caps, Some(&prev)))
                .expect("json");
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert_eq!(second["prevResult"], prev);
    }

    #[test]
    fn a_moved_attachment_names_the_new_pin_in_its_result_too() {
        let pod = PodRef {
            id: "abc".into(),
            ..Default::default()
        };
        let mut a = Attachment::new(&net(), &pod, Path::new("/run/spare/net"), Map::new());
        a.result = Some(json!({"interfaces": [
            {"name": "cni0"},
            {"name": "veth1", "sandbox": ""},
            {"name": "eth0", "sandbox": "/run/spare/net"},
            {"name": "other", "sandbox": "/elsewhere"}]}));
        a.moved_to(Path::new("/run/pods/abc/ns/net"));
        assert_eq!(a.netns, Path::new("/run/pods/abc/ns/net"));
        let r = a.result.as_ref().expect("result");
        let sandboxes: Vec<&Value> = (0..4).map(|i| &r["interfaces"][i]["sandbox"]).collect();
        assert_eq!(
            sandboxes,
            [
                &Value::Null,
                &json!(""),
                &json!("/run/pods/abc/ns/net"),
                &json!("/elsewhere")
            ]
        );
        // Without a result (ADD failed) only the path changes.
        let mut b = Attachment::new(&net(), &pod, Path::new("/run/spare/net"), Map::new());
        b.moved_to(Path::new("/p"));
        assert_eq!((b.netns.as_path(), b.result), (Path::new("/p"), None));
    }

    #[test]
    fn attachment_round_trips_and_carries_k8s_args() {
        let pod = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            id: "abc".into(),
        };
        let mut a = Attachment::new(&net(), &pod, Path::new("/run/x/net"), Map::new());
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u"
        );
        a.result = Some(json!({"ips": [{"address": "10.9.0.2/24"}]}));
        assert_eq!(a.ips(), vec![IpAddr::from([10, 9, 0, 2])]);
        assert_eq!(a.network_config().expect("config").name, "t");
        let dir = std::env::temp_dir().join(format!("sycri-cni-att-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        a.save(&dir).expect("save");
        assert_eq!(Attachment::load(&dir).expect("load"), Some(a));
        Attachment::remove(&dir).expect("remove");
        Attachment::remove(&dir).expect("remove again");
        assert_eq!(Attachment::load(&dir).expect("load"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_attachment_made_ahead_names_its_pod_once_taken() {
        let mut a = Attachment::ahead(&net(), "abc", Path::new("/run/s/net"), Map::new());
        assert_eq!(a.container_id, "abc");
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=abc"
        );
        let pod = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            id: "abc".into(),
        };
        a.for_pod(&pod);
        let made = Attachment::new(&net(), &pod, Path::new("/run/s/net"), Map::new());
        assert_eq!(a, made, "as if made for the pod");
    }

    #[test]
    fn only_the_capabilities_a_plugin_declares_tell_runtime_configs_apart() {
        let n = net();
        let none = runtime_configs(&n, &Map::new());
        assert_eq!(none, vec![Map::new(), Map::new()]);
        let mut dns = Map::new();
        dns.insert("dns".into(), json!({"servers": ["10.0.0.10"]}));
        dns.insert("bandwidth".into(), json!({"ingressRate": 1}));
        assert_eq!(runtime_configs(&n, &dns), none, "declared by none, or off");
        let mut ports = Map::new();
        ports.insert("portMappings".into(), json!([{"hostPort": 80}]));
        let with = runtime_configs(&n, &ports);
        assert_ne!(with, none);
        assert_eq!(with[1]["portMappings"], json!([{"hostPort": 80}]));
        let a = Attachment::ahead(&n, "x", Path::new("/run/s/net"), ports);
        assert_eq!(a.runtime_configs(), with);
    }

    #[test]
    fn pod_cidrs_become_ip_ranges() {
        let cni = Cni::new(PathBuf::from("/nonexistent"), Vec::new());
        assert_eq!(cni.ip_ranges(), None);
        cni.set_pod_cidrs("10.244.1.0/24, fd00:1::/64")
            .expect("valid");
        assert_eq!(
            cni.ip_ranges(),
            Some(json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]]))
        );
        assert!(cni.set_pod_cidrs("10.0.0.0").is_err());
        assert!(cni.set_pod_cidrs("x/24").is_err());
        cni.set_pod_cidrs("").expect("clear");
        assert_eq!(cni.ip_ranges(), None);
    }

    #[test]
    fn missing_plugins_and_configs_are_not_ready() {
        let dir = std::env::temp_dir().join(format!("sycri-cni-ready-{}", std::process::id()));
        let bin = dir.join("bin");
        let confd = dir.join("net.d");
        std::fs::create_dir_all(&bin).expect("dir");
        std::fs::create_dir_all(&confd).expect("dir");
        let cni = Cni::new(confd.clone(), vec![bin.clone()]);
        assert!(matches!(cni.ready(), Err(CniError::NoConfig { .. })));
        std::fs::write(
            confd.join("10.conflist"),
            r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"fake"}]}"#,
        )
        .expect("write");
        assert!(matches!(cni.ready(), Err(CniError::PluginNotFound { .. })));
        std::fs::write(bin.join("fake"), "#!/bin/sh\n").expect("write");
        assert!(matches!(cni.ready(), Err(CniError::PluginNotFound { .. })));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("fake"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert_eq!(cni.ready().expect("ready").name, "t");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
