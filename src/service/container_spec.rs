//! Building a container's spec from its CreateContainer request, its pod and
//! its image: small functions, one per part (identity, namespaces, mounts,
//! devices, masked paths, limits, command), that check what they are given
//! and touch nothing of the host but the files they must read. They run
//! before anything is made for the container, so a bad request costs nothing.

use crate::error::{Error, Result};
use crate::images::ImageConfig;
use crate::proto::cri;
use crate::store::pod::PodMeta;
use crate::userdb::Identity;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use sycri_native::cgroup::Resources;
use sycri_native::container::{DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
use sycri_native::spec::{BindMount, Namespaces, NsMode, Propagation};

/// Refuses what the request asks that sycri cannot do, before anything is
/// made: a field that would not be applied is refused, never dropped.
pub fn check_request(config: &cri::ContainerConfig) -> Result<()> {
    let md = config
        .metadata
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("container config needs metadata".into()))?;
    if md.name.is_empty() {
        return Err(Error::InvalidArgument(
            "container metadata needs a name".into(),
        ));
    }
    // A mount's selinux_relabel is accepted: sycri applies no SELinux
    // labels, so there is nothing to relabel for (the kubelet sets it on
    // volumes whatever the host).
    for m in &config.mounts {
        if m.image.is_some() {
            return Err(Error::Unimplemented(
                "image volume mounts are not supported yet".into(),
            ));
        }
        if m.recursive_read_only {
            return Err(Error::Unimplemented(
                "recursive read-only mounts are not supported yet".into(),
            ));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(Error::Unimplemented(
                "id-mapped mounts are not supported yet".into(),
            ));
        }
    }
    if let Some(d) = config.cdi_devices.first() {
        return Err(Error::FailedPrecondition(format!(
            "CDI devices are not supported yet: CDI_devices names {:?}; sycri has no CDI \
             registry to resolve it (devices with host_path and container_path work)",
            d.name
        )));
    }
    let sc = security_context(config);
    // A group without a user would pair it with the image's user, which the
    // kubelet never means (as containerd and CRI-O, refuse it).
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Error::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    check_user_namespace(sc.namespace_options.as_ref(), "container")?;
    check_selinux(sc.selinux_options.as_ref(), "container")?;
    // apparmor_profile is deprecated in the CRI, but the kubelet still sends
    // it beside `apparmor`.
    #[allow(deprecated)]
    check_apparmor(sc.apparmor.as_ref(), &sc.apparmor_profile, "container")?;
    if let Some(c) = sc.capabilities.as_ref() {
        if !c.add_ambient_capabilities.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "ambient capabilities are not supported yet: \
                 capabilities.add_ambient_capabilities asks for {:?}",
                c.add_ambient_capabilities
            )));
        }
    }
    // Strict would leave out the groups the image's /etc/group gives the
    // user, which identity() always adds (RuntimeFeatures says so: the
    // kubelet does not send Strict to sycri).
    if sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32 {
        return Err(Error::FailedPrecondition(
            "supplemental_groups_policy Strict is not supported yet: the groups of the \
             image's /etc/group are always added (Merge)"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses a user namespace other than the node's: sycri runs every
/// container in the host's user namespace. Mode NODE (what the kubelet sends
/// for a pod without `hostUsers: false`) is that, and accepted; `level` is
/// "pod" or "container", for the message.
pub fn check_user_namespace(ns: Option<&cri::NamespaceOption>, level: &str) -> Result<()> {
    let Some(u) = ns.and_then(|n| n.userns_options.as_ref()) else {
        return Ok(());
    };
    let mode = cri::NamespaceMode::try_from(u.mode)
        .map(|m| m.as_str_name().to_string())
        .unwrap_or_else(|_| u.mode.to_string());
    if u.mode != cri::NamespaceMode::Node as i32 {
        return Err(Error::FailedPrecondition(format!(
            "user namespaces are not supported yet: the {level}'s \
             namespace_options.userns_options asks for mode {mode}; only NODE (the node's \
             user namespace) can be run"
        )));
    }
    if !u.uids.is_empty() || !u.gids.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the {level}'s namespace_options.userns_options has mode NODE with uid or gid \
             mappings: the node's user namespace has no mappings to set"
        )));
    }
    Ok(())
}

/// Refuses an SELinux label: sycri labels nothing. Options with every field
/// empty ask for nothing and are accepted.
pub fn check_selinux(opts: Option<&cri::SeLinuxOption>, level: &str) -> Result<()> {
    let Some(o) = opts else {
        return Ok(());
    };
    if [&o.user, &o.role, &o.r#type, &o.level]
        .iter()
        .all(|f| f.is_empty())
    {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "SELinux is not supported yet: the {level}'s selinux_options ask for the label \
         {}:{}:{}:{}, which sycri cannot apply",
        o.user, o.role, o.r#type, o.level
    )))
}

/// Refuses an AppArmor profile: sycri loads and applies none. Unconfined
/// (the profile, or the deprecated `apparmor_profile` "unconfined"; or
/// nothing at all) is what every container gets, and accepted.
pub fn check_apparmor(
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
    level: &str,
) -> Result<()> {
    use cri::security_profile::ProfileType;
    let refuse = |what: String| {
        Err(Error::FailedPrecondition(format!(
            "AppArmor is not supported yet: the {level}'s {what}; only unconfined can be run"
        )))
    };
    if let Some(p) = profile {
        match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => {}
            Ok(ProfileType::Localhost) => {
                return refuse(format!(
                    "apparmor asks for the Localhost profile {:?}",
                    p.localhost_ref
                ))
            }
            Ok(ProfileType::RuntimeDefault) => {
                return refuse("apparmor asks for the RuntimeDefault profile".into())
            }
            Err(_) => return refuse(format!("apparmor asks for profile type {}", p.profile_type)),
        }
    }
    if !deprecated.is_empty() && deprecated != "unconfined" {
        return refuse(format!("apparmor_profile asks for {deprecated:?}"));
    }
    Ok(())
}

/// The image the request names.
pub fn image_name(config: &cri::ContainerConfig) -> Result<String> {
    config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Error::InvalidArgument("container config names no image".into()))
}

/// The request's security context (empty when it gives none).
pub fn security_context(config: &cri::ContainerConfig) -> cri::LinuxContainerSecurityContext {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

/// Who runs the process: the request's user (by number or name) or the
/// image's, resolved in the image's own /etc/passwd and /etc/group at
/// `rootfs`, with the request's group and supplemental groups.
pub fn identity(
    sc: &cri::LinuxContainerSecurityContext,
    image: Option<&ImageConfig>,
    rootfs: &Path,
) -> Result<Identity> {
    let mut ident = match (&sc.run_as_user, sc.run_as_username.as_str()) {
        (Some(u), _) => {
            let uid = u32::try_from(u.value).map_err(|_| {
                Error::InvalidArgument(format!("run_as_user {} is out of range", u.value))
            })?;
            crate::userdb::resolve(rootfs, &uid.to_string())?
        }
        (None, name) if !name.is_empty() => crate::userdb::resolve(rootfs, name)?,
        _ => crate::userdb::resolve(rootfs, image.map(|c| c.user.as_str()).unwrap_or(""))?,
    };
    if let Some(g) = &sc.run_as_group {
        ident.gid = u32::try_from(g.value).map_err(|_| {
            Error::InvalidArgument(format!("run_as_group {} is out of range", g.value))
        })?;
    }
    for g in &sc.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| {
            Error::InvalidArgument(format!("supplemental group {g} is out of range"))
        })?;
        if !ident.additional_gids.contains(&g) {
            ident.additional_gids.push(g);
        }
    }
    Ok(ident)
}

/// The working directory: the request's, the image's, else /.
pub fn working_dir(config: &cri::ContainerConfig, image: Option<&ImageConfig>) -> String {
    if !config.working_dir.is_empty() {
        return config.working_dir.clone();
    }
    image
        .map(|c| c.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// The container whose pid namespace the request names (TARGET mode).
pub fn pid_target(sc: &cri::LinuxContainerSecurityContext) -> Option<&str> {
    let ns = sc.namespace_options.as_ref()?;
    (cri::NamespaceMode::try_from(ns.pid) == Ok(cri::NamespaceMode::Target))
        .then_some(ns.target_id.as_str())
}

/// The container's namespaces: the pod's, unless the request says otherwise.
/// `target_pid` is the running first process of the TARGET container, when
/// the request names one.
pub fn namespaces(
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodMeta,
    target_pid: Option<i32>,
) -> Result<Namespaces> {
    let ns = sc.namespace_options.clone().unwrap_or_default();
    let pod_ns = |own: bool, name: &str| {
        if own {
            NsMode::Join(pod.ns_path(name))
        } else {
            NsMode::Host
        }
    };
    let pid = match cri::NamespaceMode::try_from(ns.pid).unwrap_or(cri::NamespaceMode::Container) {
        cri::NamespaceMode::Node => NsMode::Host,
        cri::NamespaceMode::Pod if pod.own_pid => NsMode::Join(pod.ns_path("pid")),
        cri::NamespaceMode::Target => {
            let pid = target_pid.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "target container {} is not running",
                    ns.target_id
                ))
            })?;
            NsMode::Join(PathBuf::from(format!("/proc/{pid}/ns/pid")))
        }
        _ => NsMode::New,
    };
    Ok(Namespaces {
        ipc: if ns.ipc == cri::NamespaceMode::Node as i32 {
            NsMode::Host
        } else {
            pod_ns(pod.own_ipc, "ipc")
        },
        uts: pod_ns(pod.own_uts, "uts"),
        net: if ns.network == cri::NamespaceMode::Node as i32 {
            NsMode::Host
        } else {
            pod_ns(pod.own_net, "net")
        },
        pid,
    })
}

/// The container's /dev/shm: the host's with the host IPC namespace, else the pod's.
pub fn shm(sc: &cri::LinuxContainerSecurityContext, pod: &PodMeta) -> Option<PathBuf> {
    let host_ipc = sc
        .namespace_options
        .as_ref()
        .is_some_and(|n| n.ipc == cri::NamespaceMode::Node as i32);
    if host_ipc {
        Some(PathBuf::from("/dev/shm"))
    } else {
        pod.shm.clone()
    }
}

/// The request's volume mounts. Each source must exist, and propagation must
/// be possible where the source sits (`mountinfo`: the host's
/// /proc/self/mountinfo).
pub fn volume_mounts(config: &cri::ContainerConfig, mountinfo: &str) -> Result<Vec<BindMount>> {
    let mut mounts = Vec::new();
    for m in &config.mounts {
        if m.container_path.is_empty() || m.host_path.is_empty() {
            return Err(Error::InvalidArgument(
                "a mount needs host_path and container_path".into(),
            ));
        }
        if !Path::new(&m.container_path).is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "mount destination {:?} is not absolute",
                m.container_path
            )));
        }
        let source = PathBuf::from(&m.host_path);
        if !source.exists() {
            return Err(Error::NotFound(format!(
                "mount source {} does not exist",
                m.host_path
            )));
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::Slave,
            Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Shared,
            _ => Propagation::Private,
        };
        if propagation != Propagation::Private {
            check_propagation(&source, propagation, mountinfo)?;
        }
        mounts.push(BindMount {
            source,
            destination: PathBuf::from(&m.container_path),
            readonly: m.readonly,
            propagation,
        });
    }
    Ok(mounts)
}

/// Devices (device plugins, GPUs): the host's node bound in, which keeps
/// working on the nodev /dev; "r" without "w" binds read-only.
pub fn devices(config: &cri::ContainerConfig) -> Result<Vec<BindMount>> {
    let mut mounts = Vec::new();
    for d in &config.devices {
        let dest = Path::new(&d.container_path);
        if !dest.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "device path {:?} in the container is not absolute",
                d.container_path
            )));
        }
        let is_device = std::fs::metadata(&d.host_path).map(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_char_device() || m.file_type().is_block_device()
        });
        match is_device {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::InvalidArgument(format!(
                    "{} is not a device",
                    d.host_path
                )))
            }
            Err(_) => {
                return Err(Error::NotFound(format!(
                    "device {} does not exist",
                    d.host_path
                )))
            }
        }
        mounts.push(BindMount {
            source: PathBuf::from(&d.host_path),
            destination: dest.to_path_buf(),
            readonly: !d.permissions.is_empty() && !d.permissions.contains('w'),
            propagation: Propagation::Private,
        });
    }
    Ok(mounts)
}

/// The pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, where `taken`
/// (the request's own mounts) has none.
pub fn pod_etc_mounts(pod: &PodMeta, taken: &[BindMount], readonly: bool) -> Vec<BindMount> {
    let taken: HashSet<&Path> = taken.iter().map(|m| m.destination.as_path()).collect();
    ["hostname", "hosts", "resolv.conf"]
        .into_iter()
        .map(|name| (name, PathBuf::from("/etc").join(name)))
        .filter(|(_, dest)| !taken.contains(dest.as_path()))
        .map(|(name, destination)| BindMount {
            source: pod.etc_dir.join(name),
            destination,
            readonly,
            propagation: Propagation::Private,
        })
        .collect()
}

/// The paths masked and made read-only: the request's, else the defaults
/// (none for a privileged container).
pub fn masked_and_readonly_paths(
    sc: &cri::LinuxContainerSecurityContext,
) -> (Vec<String>, Vec<String>) {
    let own = |given: &[String], default: &[&str]| {
        if !given.is_empty() || sc.privileged {
            given.to_vec()
        } else {
            default.iter().map(|s| s.to_string()).collect()
        }
    };
    (
        own(&sc.masked_paths, DEFAULT_MASKED_PATHS),
        own(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
    )
}

/// Where the container's CRI log goes: `log_path` under the pod's log directory.
pub fn log_path(config: &cri::ContainerConfig, pod: &PodMeta) -> Option<PathBuf> {
    if config.log_path.is_empty() {
        return None;
    }
    let dir = pod.config.log_directory.as_str();
    Some(if dir.is_empty() {
        PathBuf::from(&config.log_path)
    } else {
        Path::new(dir).join(&config.log_path)
    })
}

/// The CRI's limits in the engine's terms.
pub fn limits(r: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        oom_score_adj: r.oom_score_adj,
    }
}

/// The container's limits and the oom_score_adj its first process gets.
/// Out of range is the request's mistake: said, not clamped.
pub fn resources(config: &cri::ContainerConfig) -> Result<(Resources, Option<i32>)> {
    let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return Ok((Resources::default(), None));
    };
    let adj = i32::try_from(r.oom_score_adj)
        .ok()
        .filter(|v| (-1000..=1000).contains(v))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "oom_score_adj {} is outside -1000..1000",
                r.oom_score_adj
            ))
        })?;
    Ok((limits(r), Some(adj)))
}

/// argv from the CRI request and the image, the way kubelet expects: command
/// replaces the entrypoint, args replace the image's Cmd.
pub fn command_line(
    config: &cri::ContainerConfig,
    image: Option<&ImageConfig>,
    rootfs: &Path,
) -> Result<Vec<String>> {
    if !config.command.is_empty() {
        return Ok(config.command.iter().chain(&config.args).cloned().collect());
    }
    let entrypoint = image.and_then(|i| i.entrypoint.clone()).unwrap_or_default();
    let cmd = if !config.args.is_empty() {
        config.args.clone()
    } else {
        image.and_then(|i| i.cmd.clone()).unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if !argv.is_empty() {
        return Ok(argv);
    }
    // No OCI config: the Singularity way, the image's run action.
    for (probe, argv0) in [
        (
            "/.singularity.d/actions/run",
            vec!["/.singularity.d/actions/run"],
        ),
        (
            "/.singularity.d/runscript",
            vec!["/bin/sh", "/.singularity.d/runscript"],
        ),
    ] {
        if sycri_native::resolve::resolve_in_root(rootfs, Path::new(probe))
            .map(|p| p.exists())
            .unwrap_or(false)
        {
            return Ok(argv0
                .into_iter()
                .map(String::from)
                .chain(config.args.iter().cloned())
                .collect());
        }
    }
    Err(Error::InvalidArgument(
        "no command: the request gives none and the image has no entrypoint, cmd or run action"
            .into(),
    ))
}

/// Image env, then the request's env (a later key replaces an earlier one).
pub fn environment(
    image: Option<&ImageConfig>,
    config: &cri::ContainerConfig,
    hostname: &str,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("HOSTNAME", hostname);
    if let Some(i) = image {
        for kv in &i.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            set(k, v);
        }
    }
    for kv in &config.envs {
        set(&kv.key, &String::from_utf8_lossy(&kv.value));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

pub fn capabilities(sc: &cri::LinuxContainerSecurityContext) -> Vec<String> {
    let norm = |c: &str| {
        let u = c.to_ascii_uppercase();
        if u.starts_with("CAP_") || u == "ALL" {
            u
        } else {
            format!("CAP_{u}")
        }
    };
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if let Some(c) = &sc.capabilities {
        let add: Vec<String> = c.add_capabilities.iter().map(|s| norm(s)).collect();
        let drop: HashSet<String> = c.drop_capabilities.iter().map(|s| norm(s)).collect();
        if add.iter().any(|a| a == "ALL") {
            caps = caps::all().into_iter().map(|c| c.to_string()).collect();
        } else {
            for a in add {
                if !caps.contains(&a) {
                    caps.push(a);
                }
            }
        }
        if drop.contains("ALL") {
            caps.retain(|c| c.is_empty());
        } else {
            caps.retain(|c| !drop.contains(c));
        }
    }
    caps
}

pub fn stop_signal(config: &cri::ContainerConfig, image: Option<&ImageConfig>) -> i32 {
    if config.stop_signal != 0 {
        if let Some(sig) = cri::Signal::try_from(config.stop_signal)
            .ok()
            .and_then(|s| signal_number(s.as_str_name()))
        {
            return sig;
        }
    }
    image
        .map(|i| i.stop_signal.as_str())
        .filter(|s| !s.is_empty())
        .and_then(signal_number)
        .unwrap_or(libc::SIGTERM)
}

pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return Some(n);
    }
    let n = name.to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    format!("SIG{n}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// A mount that is to receive the host's mounts must sit on a shared or
/// slave mount, and one that is to send them back on a shared one; else the
/// propagation asked for could not happen, and the container would quietly
/// see an island. (The kubelet makes its volume directories shared.)
fn check_propagation(source: &Path, want: Propagation, mountinfo: &str) -> Result<()> {
    let real = std::fs::canonicalize(source)
        .map_err(|e| Error::io(format!("resolve mount source {}", source.display()), e))?;
    let (shared, slave) =
        sycri_native::mounts::propagation_of(mountinfo, &real).unwrap_or((false, false));
    let ok = match want {
        Propagation::Shared => shared,
        Propagation::Slave => shared || slave,
        Propagation::Private => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "mount source {} is not on a {} mount, so the propagation asked for cannot happen",
            source.display(),
            if want == Propagation::Shared {
                "shared"
            } else {
                "shared or slave"
            }
        )))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_follows_kubelet_rules() {
        let img = ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let root = Path::new("/nonexistent");
        assert_eq!(
            command_line(&cfg(&[], &[]), Some(&img), root).ok(),
            Some(vec!["/entry".into(), "default".into()])
        );
        assert_eq!(
            command_line(&cfg(&[], &["x"]), Some(&img), root).ok(),
            Some(vec!["/entry".into(), "x".into()])
        );
        assert_eq!(
            command_line(&cfg(&["sh"], &["-c", "y"]), Some(&img), root).ok(),
            Some(vec!["sh".into(), "-c".into(), "y".into()])
        );
        assert!(command_line(&cfg(&[], &[]), None, root).is_err());
    }

    #[test]
    fn environment_merges_image_then_request() {
        let img = ImageConfig {
            env: vec!["PATH=/img".into(), "A=1".into()],
            ..Default::default()
        };
        let mut c = cfg(&[], &[]);
        c.envs = vec![cri::KeyValue {
            key: "A".into(),
            value: b"2".to_vec(),
        }];
        let env = environment(Some(&img), &c, "h");
        assert!(env.contains(&"PATH=/img".to_string()));
        assert!(env.contains(&"A=2".to_string()));
        assert!(env.contains(&"HOSTNAME=h".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
    }

    #[test]
    fn capabilities_add_and_drop() {
        let sc = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["sys_admin".into()],
                drop_capabilities: vec!["CAP_CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let caps = capabilities(&sc);
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        let none = capabilities(&cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(none.is_empty());
    }

    #[test]
    fn stop_signal_names() {
        assert_eq!(signal_number("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("usr1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
    }

    fn pod(own: bool) -> PodMeta {
        PodMeta {
            id: "p".into(),
            name_key: "k".into(),
            created_at_ns: 0,
            hostname: "h".into(),
            ns_dir: PathBuf::from("/run/pods/p/ns"),
            own_net: own,
            own_ipc: own,
            own_uts: own,
            own_pid: own,
            init: None,
            shm: own.then(|| PathBuf::from("/run/pods/p/shm")),
            etc_dir: PathBuf::from("/run/pods/p/etc"),
            runtime_handler: String::new(),
            config: cri::PodSandboxConfig {
                log_directory: "/var/log/pods/p".into(),
                ..Default::default()
            },
            dir: PathBuf::from("/state/pods/p"),
        }
    }

    fn sc_ns(
        pid: cri::NamespaceMode,
        net: cri::NamespaceMode,
    ) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: pid as i32,
                network: net as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn namespaces_follow_the_pod_unless_asked() {
        let p = pod(true);
        let n = namespaces(
            &sc_ns(cri::NamespaceMode::Pod, cri::NamespaceMode::Pod),
            &p,
            None,
        )
        .expect("ns");
        assert_eq!(n.net, NsMode::Join(PathBuf::from("/run/pods/p/ns/net")));
        assert_eq!(n.pid, NsMode::Join(PathBuf::from("/run/pods/p/ns/pid")));
        assert_eq!(n.uts, NsMode::Join(PathBuf::from("/run/pods/p/ns/uts")));
        // A container of its own pid namespace, on the node's network.
        let n = namespaces(
            &sc_ns(cri::NamespaceMode::Container, cri::NamespaceMode::Node),
            &p,
            None,
        )
        .expect("ns");
        assert_eq!(n.pid, NsMode::New);
        assert_eq!(n.net, NsMode::Host);
        // A pod on the host network: its containers are too.
        let n = namespaces(
            &cri::LinuxContainerSecurityContext::default(),
            &pod(false),
            None,
        )
        .expect("ns");
        assert_eq!(n.net, NsMode::Host);
        assert_eq!(n.ipc, NsMode::Host);
        // TARGET joins that container's pid namespace, and needs it running.
        let target = sc_ns(cri::NamespaceMode::Target, cri::NamespaceMode::Pod);
        let n = namespaces(&target, &p, Some(42)).expect("ns");
        assert_eq!(n.pid, NsMode::Join(PathBuf::from("/proc/42/ns/pid")));
        assert!(matches!(
            namespaces(&target, &p, None),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn shm_is_the_pods_or_the_hosts() {
        let p = pod(true);
        assert_eq!(
            shm(&cri::LinuxContainerSecurityContext::default(), &p),
            Some(PathBuf::from("/run/pods/p/shm"))
        );
        let sc = cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(shm(&sc, &p), Some(PathBuf::from("/dev/shm")));
    }

    fn mount(host: &str, dest: &str, propagation: cri::MountPropagation) -> cri::Mount {
        cri::Mount {
            container_path: dest.into(),
            host_path: host.into(),
            readonly: true,
            propagation: propagation as i32,
            ..Default::default()
        }
    }

    #[test]
    fn volume_mounts_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().to_string_lossy().into_owned();
        let mut c = cfg(&[], &[]);
        c.mounts = vec![mount(
            &src,
            "/data",
            cri::MountPropagation::PropagationPrivate,
        )];
        let m = volume_mounts(&c, "").expect("mounts");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].destination, PathBuf::from("/data"));
        assert!(m[0].readonly);
        assert_eq!(m[0].propagation, Propagation::Private);
        for (bad, want) in [
            (
                mount(&src, "data", cri::MountPropagation::PropagationPrivate),
                "InvalidArgument",
            ),
            (
                mount("", "/data", cri::MountPropagation::PropagationPrivate),
                "InvalidArgument",
            ),
            (
                mount(
                    "/nonexistent/x",
                    "/data",
                    cri::MountPropagation::PropagationPrivate,
                ),
                "NotFound",
            ),
            // Not on a shared mount (no mountinfo line says so): refused.
            (
                mount(
                    &src,
                    "/data",
                    cri::MountPropagation::PropagationBidirectional,
                ),
                "FailedPrecondition",
            ),
            (
                mount(
                    &src,
                    "/data",
                    cri::MountPropagation::PropagationHostToContainer,
                ),
                "FailedPrecondition",
            ),
        ] {
            c.mounts = vec![bad];
            let got = match volume_mounts(&c, "") {
                Err(Error::InvalidArgument(_)) => "InvalidArgument",
                Err(Error::NotFound(_)) => "NotFound",
                Err(Error::FailedPrecondition(_)) => "FailedPrecondition",
                Err(_) => "other error",
                Ok(_) => "accepted",
            };
            assert_eq!(got, want, "{:?}", c.mounts);
        }
    }

    #[test]
    fn propagation_follows_the_source_mount() {
        let real = std::fs::canonicalize("/").expect("root");
        let shared = format!(
            "22 1 8:1 / {} rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
            real.display()
        );
        let slave = format!(
            "22 1 8:1 / {} rw,relatime master:1 - ext4 /dev/sda1 rw\n",
            real.display()
        );
        assert!(check_propagation(&real, Propagation::Shared, &shared).is_ok());
        assert!(check_propagation(&real, Propagation::Slave, &shared).is_ok());
        assert!(check_propagation(&real, Propagation::Slave, &slave).is_ok());
        assert!(matches!(
            check_propagation(&real, Propagation::Shared, &slave),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn devices_are_bound_read_only_without_w() {
        let mut c = cfg(&[], &[]);
        c.devices = vec![
            cri::Device {
                container_path: "/dev/mynull".into(),
                host_path: "/dev/null".into(),
                permissions: "r".into(),
            },
            cri::Device {
                container_path: "/dev/myzero".into(),
                host_path: "/dev/zero".into(),
                permissions: "rwm".into(),
            },
        ];
        let d = devices(&c).expect("devices");
        assert_eq!(d.len(), 2);
        assert!(d[0].readonly);
        assert!(!d[1].readonly);
        c.devices[0].host_path = "/etc/hostname".into();
        assert!(matches!(devices(&c), Err(Error::InvalidArgument(_))));
        c.devices[0].host_path = "/dev/nonexistent-device".into();
        assert!(matches!(devices(&c), Err(Error::NotFound(_))));
        c.devices[0].host_path = "/dev/null".into();
        c.devices[0].container_path = "dev/x".into();
        assert!(matches!(devices(&c), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn the_pods_etc_files_fill_what_the_request_leaves() {
        let p = pod(true);
        let taken = vec![BindMount {
            source: PathBuf::from("/mine/hosts"),
            destination: PathBuf::from("/etc/hosts"),
            ..Default::default()
        }];
        let m = pod_etc_mounts(&p, &taken, true);
        let dests: Vec<&Path> = m.iter().map(|b| b.destination.as_path()).collect();
        assert_eq!(
            dests,
            vec![Path::new("/etc/hostname"), Path::new("/etc/resolv.conf")]
        );
        assert!(m
            .iter()
            .all(|b| b.readonly && b.source.starts_with("/run/pods/p/etc")));
    }

    #[test]
    fn masked_paths_default_unless_given_or_privileged() {
        let (m, r) = masked_and_readonly_paths(&cri::LinuxContainerSecurityContext::default());
        assert_eq!(m.len(), DEFAULT_MASKED_PATHS.len());
        assert_eq!(r.len(), DEFAULT_READONLY_PATHS.len());
        let given = cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/x".into()],
            ..Default::default()
        };
        let (m, r) = masked_and_readonly_paths(&given);
        assert_eq!(m, vec!["/proc/x".to_string()]);
        assert_eq!(r.len(), DEFAULT_READONLY_PATHS.len());
        let privileged = cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(
            masked_and_readonly_paths(&privileged),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn logs_go_under_the_pods_log_directory() {
        let p = pod(true);
        let mut c = cfg(&[], &[]);
        assert_eq!(log_path(&c, &p), None);
        c.log_path = "app/0.log".into();
        assert_eq!(
            log_path(&c, &p),
            Some(PathBuf::from("/var/log/pods/p/app/0.log"))
        );
    }

    #[test]
    fn limits_and_oom_score_adj() {
        let mut c = cfg(&[], &[]);
        assert_eq!(resources(&c).ok(), Some((Resources::default(), None)));
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 20,
                oom_score_adj: -999,
                ..Default::default()
            }),
            ..Default::default()
        });
        let (r, adj) = resources(&c).expect("resources");
        assert_eq!(r.memory_limit_in_bytes, 1 << 20);
        assert_eq!(adj, Some(-999));
        for bad in [1001, -1001, i64::MAX] {
            if let Some(res) = c.linux.as_mut().and_then(|l| l.resources.as_mut()) {
                res.oom_score_adj = bad;
            }
            assert!(
                matches!(resources(&c), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn identity_from_the_request_or_the_image() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("etc")).expect("etc");
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/var/www:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nwww:x:44:\nextra:x:50:web\n",
        )
        .expect("group");
        let img = ImageConfig {
            user: "web".into(),
            ..Default::default()
        };
        let sc = cri::LinuxContainerSecurityContext::default();
        let id = identity(&sc, Some(&img), root.path()).expect("image user");
        assert_eq!((id.uid, id.gid), (33, 44));
        assert!(id.additional_gids.contains(&50));
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            run_as_group: Some(cri::Int64Value { value: 99 }),
            supplemental_groups: vec![7],
            ..Default::default()
        };
        let id = identity(&sc, Some(&img), root.path()).expect("request user");
        assert_eq!((id.uid, id.gid), (1234, 99));
        assert!(id.additional_gids.contains(&7));
        let bad = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: -1 }),
            ..Default::default()
        };
        assert!(matches!(
            identity(&bad, None, root.path()),
            Err(Error::InvalidArgument(_))
        ));
        let unknown = cri::LinuxContainerSecurityContext {
            run_as_username: "nobody-here".into(),
            ..Default::default()
        };
        assert!(identity(&unknown, None, root.path()).is_err());
    }

    #[test]
    fn requests_for_what_sycri_cannot_do_are_refused() {
        let mut c = cfg(&["true"], &[]);
        c.metadata = Some(cri::ContainerMetadata {
            name: "a".into(),
            attempt: 0,
        });
        assert!(check_request(&c).is_ok());
        let mut rro = c.clone();
        rro.mounts = vec![cri::Mount {
            recursive_read_only: true,
            ..Default::default()
        }];
        assert!(matches!(check_request(&rro), Err(Error::Unimplemented(_))));
        let mut group_only = c.clone();
        group_only.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_group: Some(cri::Int64Value { value: 5 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(
            check_request(&group_only),
            Err(Error::InvalidArgument(_))
        ));
        let mut nameless = c.clone();
        nameless.metadata = None;
        assert!(matches!(
            check_request(&nameless),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn named(linux: Option<cri::LinuxContainerConfig>) -> cri::ContainerConfig {
        let mut c = cfg(&["true"], &[]);
        c.metadata = Some(cri::ContainerMetadata {
            name: "a".into(),
            attempt: 0,
        });
        c.linux = linux;
        c
    }

    fn with_sc(sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
        named(Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        }))
    }

    /// The code and message of a refusal (pod_spec's tests use it too).
    pub(in crate::service) fn refusal(r: Result<()>) -> (&'static str, String) {
        match r {
            Ok(()) => ("accepted", String::new()),
            Err(e @ Error::FailedPrecondition(_)) => ("FailedPrecondition", e.to_string()),
            Err(e @ Error::InvalidArgument(_)) => ("InvalidArgument", e.to_string()),
            Err(e) => ("other", e.to_string()),
        }
    }

    #[test]
    #[allow(deprecated)]
    fn what_has_no_effect_is_accepted() {
        use cri::security_profile::ProfileType;
        // As the kubelet sends a container: the node's user namespace,
        // empty SELinux options, an unconfined AppArmor profile (both
        // fields), no CDI devices; and a mount asking for an SELinux
        // relabel, which without SELinux on the host has nothing to do.
        let mut c = with_sc(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            selinux_options: Some(cri::SeLinuxOption::default()),
            apparmor: Some(cri::SecurityProfile {
                profile_type: ProfileType::Unconfined as i32,
                ..Default::default()
            }),
            apparmor_profile: "unconfined".into(),
            supplemental_groups_policy: cri::SupplementalGroupsPolicy::Merge as i32,
            ..Default::default()
        });
        c.mounts = vec![cri::Mount {
            selinux_relabel: true,
            ..Default::default()
        }];
        assert_eq!(refusal(check_request(&c)), ("accepted", String::new()));
        assert!(check_request(&named(None)).is_ok());
    }

    #[test]
    #[allow(deprecated)]
    fn what_sycri_cannot_apply_is_refused_naming_the_field() {
        use cri::security_profile::ProfileType;
        let userns = |mode: cri::NamespaceMode, gids: Vec<cri::IdMapping>| {
            with_sc(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: mode as i32,
                        uids: Vec::new(),
                        gids,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let apparmor = |t: ProfileType, r: &str| {
            with_sc(cri::LinuxContainerSecurityContext {
                apparmor: Some(cri::SecurityProfile {
                    profile_type: t as i32,
                    localhost_ref: r.into(),
                }),
                ..Default::default()
            })
        };
        let deprecated = |p: &str| {
            with_sc(cri::LinuxContainerSecurityContext {
                apparmor_profile: p.into(),
                ..Default::default()
            })
        };
        let mut cdi = named(None);
        cdi.cdi_devices = vec![cri::CdiDevice {
            name: "vendor.com/gpu=0".into(),
        }];
        let mapping = cri::IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        };
        for (c, code, names) in [
            (cdi, "FailedPrecondition", "CDI_devices"),
            (
                userns(cri::NamespaceMode::Pod, Vec::new()),
                "FailedPrecondition",
                "userns_options",
            ),
            (
                userns(cri::NamespaceMode::Container, Vec::new()),
                "FailedPrecondition",
                "userns_options",
            ),
            (
                userns(cri::NamespaceMode::Node, vec![mapping]),
                "InvalidArgument",
                "userns_options",
            ),
            (
                with_sc(cri::LinuxContainerSecurityContext {
                    selinux_options: Some(cri::SeLinuxOption {
                        level: "s0:c1,c2".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                "FailedPrecondition",
                "selinux_options",
            ),
            (
                apparmor(ProfileType::RuntimeDefault, ""),
                "FailedPrecondition",
                "apparmor",
            ),
            (
                apparmor(ProfileType::Localhost, "k8s-deny-write"),
                "FailedPrecondition",
                "k8s-deny-write",
            ),
            (
                deprecated("runtime/default"),
                "FailedPrecondition",
                "apparmor_profile",
            ),
            (
                deprecated("localhost/k8s-deny-write"),
                "FailedPrecondition",
                "apparmor_profile",
            ),
            (
                with_sc(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_ambient_capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                "FailedPrecondition",
                "add_ambient_capabilities",
            ),
            (
                with_sc(cri::LinuxContainerSecurityContext {
                    supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                    ..Default::default()
                }),
                "FailedPrecondition",
                "supplemental_groups_policy",
            ),
        ] {
            let (got, msg) = refusal(check_request(&c));
            assert_eq!(got, code, "{msg}");
            assert!(msg.contains(names), "{msg:?} names {names}");
        }
    }
}
