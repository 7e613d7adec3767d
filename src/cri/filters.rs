//! The CRI list filters: an id given as a prefix ("" = any), a pod id, a
//! state and a label selector whose every pair must be on the object.

use crate::proto::cri;
use crate::store::container::ContainerMeta;
use crate::store::pod::PodMeta;
use std::collections::HashMap;

pub fn id_selected(id: &str, wanted: &str) -> bool {
    wanted.is_empty() || id.starts_with(wanted)
}

pub fn labels_selected(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// ListContainers: id, pod, state (the CRI state) and labels.
pub fn container(f: Option<&cri::ContainerFilter>, m: &ContainerMeta, state: i32) -> bool {
    f.is_none_or(|f| {
        id_selected(&m.id, &f.id)
            && id_selected(&m.pod_id, &f.pod_sandbox_id)
            && f.state.as_ref().is_none_or(|st| st.state == state)
            && labels_selected(&m.config.labels, &f.label_selector)
    })
}

/// ListPodSandbox: id, state (the CRI state) and labels.
pub fn pod(f: Option<&cri::PodSandboxFilter>, m: &PodMeta, state: i32) -> bool {
    f.is_none_or(|f| {
        id_selected(&m.id, &f.id)
            && f.state.as_ref().is_none_or(|st| st.state == state)
            && labels_selected(&m.config.labels, &f.label_selector)
    })
}

/// ListContainerStats: id, pod and labels.
pub fn container_stats(f: Option<&cri::ContainerStatsFilter>, m: &ContainerMeta) -> bool {
    f.is_none_or(|f| {
        id_selected(&m.id, &f.id)
            && id_selected(&m.pod_id, &f.pod_sandbox_id)
            && labels_selected(&m.config.labels, &f.label_selector)
    })
}

/// ListPodSandboxStats: id and labels.
pub fn pod_stats(f: Option<&cri::PodSandboxStatsFilter>, m: &PodMeta) -> bool {
    f.is_none_or(|f| {
        id_selected(&m.id, &f.id) && labels_selected(&m.config.labels, &f.label_selector)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_selectors() {
        assert!(id_selected("abcdef", ""));
        assert!(id_selected("abcdef", "abc"));
        assert!(!id_selected("abcdef", "abd"));
        let labels: HashMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "a".into()),
        ]
        .into();
        assert!(labels_selected(&labels, &HashMap::new()));
        assert!(labels_selected(
            &labels,
            &[("app".to_string(), "web".to_string())].into()
        ));
        assert!(!labels_selected(
            &labels,
            &[("app".to_string(), "db".to_string())].into()
        ));
        assert!(!labels_selected(
            &labels,
            &[("x".to_string(), "web".to_string())].into()
        ));
    }
}
