//! Which seccomp filter a container gets, from its security context: the
//! `seccomp` profile (RuntimeDefault, Unconfined, Localhost) or, from older
//! kubelets, `seccomp_profile_path` ("runtime/default", "docker/default",
//! "unconfined", "localhost/<path>"). Privileged containers get none.

use crate::error::{Error, Result};
use crate::proto::cri;
use crate::proto::cri::security_profile::ProfileType;
use std::path::Path;
use sycri_native::seccomp::{compile, compile_json, runtime_default, Filter};

/// Largest Localhost profile read (real ones are tens of kilobytes).
const MAX_PROFILE_BYTES: u64 = 4 << 20;

enum Choice {
    None,
    Default,
    Localhost(String),
}

// seccomp_profile_path is deprecated in the CRI but older kubelets send it.
#[allow(deprecated)]
fn choose(sc: &cri::LinuxContainerSecurityContext) -> Result<Choice> {
    if let Some(p) = &sc.seccomp {
        return Ok(match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Choice::Default,
            Ok(ProfileType::Unconfined) => Choice::None,
            Ok(ProfileType::Localhost) => Choice::Localhost(p.localhost_ref.clone()),
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "unknown seccomp profile type {}",
                    p.profile_type
                )))
            }
        });
    }
    Ok(match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Choice::None,
        "runtime/default" | "docker/default" => Choice::Default,
        other => match other.strip_prefix("localhost/") {
            Some(path) => Choice::Localhost(path.to_string()),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "seccomp profile path {other:?} is not runtime/default, unconfined or localhost/<path>"
                )))
            }
        },
    })
}

/// The compiled filter for a container holding `capabilities`, or None.
pub fn filter(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    capabilities: &[String],
) -> Result<Option<Filter>> {
    if privileged {
        return Ok(None);
    }
    match choose(sc)? {
        Choice::None => Ok(None),
        Choice::Default => Ok(Some(compile(&runtime_default(capabilities))?)),
        Choice::Localhost(path) => {
            let path = Path::new(&path);
            if !path.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "seccomp localhost profile {} is not an absolute path",
                    path.display()
                )));
            }
            let data = read_profile(path)?;
            compile_json(&data).map(Some).map_err(|f| {
                Error::InvalidArgument(format!("seccomp profile {}: {}", path.display(), f.message))
            })
        }
    }
}

fn read_profile(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::NotFound(format!("seccomp profile {} not found", path.display()))
        }
        _ => Error::io(format!("open seccomp profile {}", path.display()), e),
    })?;
    let mut data = Vec::new();
    f.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(format!("read seccomp profile {}", path.display()), e))?;
    if data.len() as u64 > MAX_PROFILE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "seccomp profile {} is larger than {MAX_PROFILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    fn sc(profile: Option<(ProfileType, &str)>, path: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: profile.map(|(t, r)| cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            seccomp_profile_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn profiles_are_chosen_like_the_kubelet_means_them() {
        assert!(filter(&sc(None, ""), false, &[]).expect("none").is_none());
        assert!(filter(&sc(None, "runtime/default"), false, &[])
            .expect("default")
            .is_some());
        assert!(
            filter(&sc(Some((ProfileType::RuntimeDefault, "")), ""), false, &[])
                .expect("default")
                .is_some()
        );
        assert!(filter(
            &sc(Some((ProfileType::Unconfined, "")), "runtime/default"),
            false,
            &[]
        )
        .expect("the profile field wins")
        .is_none());
        assert!(
            filter(&sc(Some((ProfileType::RuntimeDefault, "")), ""), true, &[])
                .expect("privileged")
                .is_none()
        );
    }

    #[test]
    fn localhost_profiles_are_read_and_checked() {
        let d = tempfile::tempdir().expect("tempdir");
        let good = d.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("write");
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "{").expect("write");
        let local = |p: &Path| sc(Some((ProfileType::Localhost, &p.to_string_lossy())), "");
        assert!(filter(&local(&good), false, &[]).expect("good").is_some());
        assert!(matches!(
            filter(&local(&bad), false, &[]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            filter(&local(&d.path().join("missing.json")), false, &[]),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            filter(
                &sc(Some((ProfileType::Localhost, "relative.json")), ""),
                false,
                &[]
            ),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            filter(&sc(None, "something/else"), false, &[]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
