//! CRI `NamespaceOption.userns_options` (Kubernetes `hostUsers: false`) and the id mappings
//! of CRI mounts, checked at the boundary.
//!
//! Mode NODE is the node's user namespace (what every pod had before). Mode POD gives the
//! pod a namespace of its own with kubelet's mappings: one uid and one gid range mapping
//! container id 0 (containerd and CRI-O accept no more, and critest checks both refusals),
//! at least 65,536 long (images use ids up to 65535, and the pod helpers run as 65535), never
//! mapping the node's root. By default only what kubelet allocates is taken: host ids from
//! 65536 on (kubelet keeps the first 65,536 for the node), a multiple of 65,536 long
//! (`userNamespaces.idsPerPod`); `runtime.userns_kubelet_ranges_only = false` accepts any
//! such range, as containerd does. CONTAINER and TARGET are not modes a user namespace has
//! (CRI: "supports only POD and NODE").

use k8s_cri::v1::{IdMapping, NamespaceMode, NamespaceOption};
use rootstock_runtime::userns::{IdRange, UserNamespace};

use crate::error::CriError;

const FIELD: &str = "RunPodSandbox: config.linux.security_context.namespace_options";
/// The ids kubelet allocates in blocks of, and keeps the first of for the node.
const BLOCK: u32 = 65_536;

fn invalid(field: &str, why: String) -> CriError {
    CriError::InvalidArgument(format!("{FIELD}.{field}: {why}"))
}

/// The pod's user namespace from its namespace options (`None`: the node's).
pub(super) fn pod_user_namespace(
    ns: &NamespaceOption,
    kubelet_ranges_only: bool,
) -> Result<Option<UserNamespace>, CriError> {
    let Some(opts) = &ns.userns_options else {
        return Ok(None);
    };
    match NamespaceMode::try_from(opts.mode) {
        Ok(NamespaceMode::Node) => {
            if !opts.uids.is_empty() || !opts.gids.is_empty() {
                return Err(invalid(
                    "userns_options",
                    "mode NODE takes no uids/gids mappings".to_owned(),
                ));
            }
            return Ok(None);
        }
        Ok(NamespaceMode::Pod) => {}
        Ok(other) => {
            return Err(invalid(
                "userns_options.mode",
                format!(
                    "{} is not supported for user namespaces (only POD and NODE are)",
                    other.as_str_name()
                ),
            ));
        }
        Err(_) => {
            return Err(invalid(
                "userns_options.mode",
                format!("unknown mode {}", opts.mode),
            ));
        }
    }
    // kubelet refuses hostUsers: false with any host namespace; the pod's user namespace
    // must own its network (sysfs), IPC (mqueue) and PID (procfs) namespaces.
    for (name, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if mode == NamespaceMode::Node as i32 {
            return Err(invalid(
                name,
                "NODE cannot be combined with a user namespace (userns_options mode POD)"
                    .to_owned(),
            ));
        }
    }
    Ok(Some(UserNamespace {
        uids: range("userns_options.uids", &opts.uids, kubelet_ranges_only)?,
        gids: range("userns_options.gids", &opts.gids, kubelet_ranges_only)?,
    }))
}

fn range(field: &str, maps: &[IdMapping], kubelet_only: bool) -> Result<IdRange, CriError> {
    let [m] = maps else {
        return Err(invalid(
            field,
            format!("exactly one mapping is supported, got {}", maps.len()),
        ));
    };
    let bad = |why: String| Err(invalid(&format!("{field}[0]"), why));
    if m.container_id != 0 {
        return bad(format!(
            "container id 0 must be mapped (the mapping starts at {})",
            m.container_id
        ));
    }
    if m.length < BLOCK {
        return bad(format!(
            "length {} is under {BLOCK}: ids 0-65535 must all be mapped",
            m.length
        ));
    }
    if m.host_id == 0 {
        return bad("host id 0: the pod's root would be the node's root".to_owned());
    }
    if m.host_id.checked_add(m.length).is_none() {
        return bad(format!(
            "host ids {}+{} run past the largest id",
            m.host_id, m.length
        ));
    }
    if kubelet_only && (m.host_id < BLOCK || m.length % BLOCK != 0) {
        return bad(format!(
            "host ids {}+{} are not a range kubelet allocates (from {BLOCK} on, a multiple of \
             {BLOCK} long; runtime.userns_kubelet_ranges_only = false accepts it)",
            m.host_id, m.length
        ));
    }
    Ok(IdRange {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// Whether CRI mount `index` is to be idmapped with the pod's user namespace: kubelet sends
/// the pod's own mappings on the volumes of a `hostUsers: false` pod. Mappings without a
/// pod user namespace, or other than the pod's, are refused (an idmapped mount needs a
/// user namespace with exactly those mappings, and the pod's is the one there is).
pub(super) fn mount_idmapped(
    index: usize,
    mount: &k8s_cri::v1::Mount,
    pod: Option<&UserNamespace>,
) -> Result<bool, CriError> {
    if mount.uid_mappings.is_empty() && mount.gid_mappings.is_empty() {
        return Ok(false);
    }
    let invalid = |why: String| {
        CriError::InvalidArgument(format!(
            "CreateContainer: mounts[{index}].uid_mappings/gid_mappings: {why}"
        ))
    };
    let Some(pod) = pod else {
        return Err(invalid(
            "id mappings need a pod with its own user namespace (userns_options mode POD)"
                .to_owned(),
        ));
    };
    let same = |maps: &[IdMapping], r: &IdRange| {
        matches!(maps, [m] if m.container_id == r.container_id
            && m.host_id == r.host_id
            && m.length == r.length)
    };
    if !same(&mount.uid_mappings, &pod.uids) || !same(&mount.gid_mappings, &pod.gids) {
        return Err(invalid(format!(
            "only the pod's own mappings are supported (uids {}+{}, gids {}+{})",
            pod.uids.host_id, pod.uids.length, pod.gids.host_id, pod.gids.length
        )));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use k8s_cri::v1::UserNamespace as CriUserns;

    fn map(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    fn pod(uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> NamespaceOption {
        NamespaceOption {
            userns_options: Some(CriUserns {
                mode: NamespaceMode::Pod as i32,
                uids,
                gids,
            }),
            ..Default::default()
        }
    }

    fn refused(r: Result<impl std::fmt::Debug, CriError>, needle: &str) {
        match r {
            Err(CriError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected InvalidArgument naming {needle:?}: {other:?}"),
        }
    }

    #[test]
    fn kubelet_ranges_are_taken() {
        let ns = pod(vec![map(0, 65536, 65536)], vec![map(0, 131072, 131072)]);
        let got = pod_user_namespace(&ns, true).unwrap().unwrap();
        assert_eq!((got.root_uid(), got.root_gid()), (65536, 131072));
        assert_eq!(
            pod_user_namespace(&NamespaceOption::default(), true).unwrap(),
            None
        );
    }

    #[test]
    fn what_kubelet_never_sends_is_refused_naming_the_field() {
        let one = || vec![map(0, 65536, 65536)];
        refused(
            pod_user_namespace(
                &pod(vec![map(0, 65536, 65536), map(0, 1 << 20, 65536)], one()),
                false,
            ),
            "userns_options.uids: exactly one mapping",
        );
        refused(
            pod_user_namespace(&pod(one(), vec![]), false),
            "userns_options.gids",
        );
        refused(
            pod_user_namespace(&pod(vec![map(1, 65536, 65536)], one()), false),
            "uids[0]: container id 0",
        );
        refused(
            pod_user_namespace(&pod(vec![map(0, 0, 65536)], one()), false),
            "host id 0",
        );
        refused(
            pod_user_namespace(&pod(vec![map(0, 65536, 100)], one()), false),
            "length 100",
        );
        refused(
            pod_user_namespace(&pod(vec![map(0, u32::MAX - 10, 65536)], one()), false),
            "past the largest id",
        );
        // Overlapping the node's ids, or not a multiple of 65536: only when kubelet's
        // ranges alone are accepted (critest's 0→1000 ×100000 is taken otherwise).
        let critest = pod(vec![map(0, 1000, 100_000)], vec![map(0, 1000, 100_000)]);
        refused(
            pod_user_namespace(&critest, true),
            "not a range kubelet allocates",
        );
        assert!(pod_user_namespace(&critest, false).unwrap().is_some());
        let mut hostnet = pod(one(), one());
        hostnet.network = NamespaceMode::Node as i32;
        refused(
            pod_user_namespace(&hostnet, false),
            "namespace_options.network",
        );
    }

    #[test]
    fn modes_container_and_target_are_refused_node_is_the_nodes() {
        for mode in [NamespaceMode::Container, NamespaceMode::Target] {
            let ns = NamespaceOption {
                userns_options: Some(CriUserns {
                    mode: mode as i32,
                    ..Default::default()
                }),
                ..Default::default()
            };
            refused(pod_user_namespace(&ns, true), "userns_options.mode");
        }
        let node = NamespaceOption {
            userns_options: Some(CriUserns {
                mode: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_user_namespace(&node, true).unwrap(), None);
    }

    #[test]
    fn mount_mappings_must_be_the_pods() {
        let ns = pod_user_namespace(
            &pod(vec![map(0, 65536, 65536)], vec![map(0, 65536, 65536)]),
            true,
        )
        .unwrap()
        .unwrap();
        let mut m = k8s_cri::v1::Mount::default();
        assert!(!mount_idmapped(0, &m, Some(&ns)).unwrap());
        m.uid_mappings = vec![map(0, 65536, 65536)];
        m.gid_mappings = vec![map(0, 65536, 65536)];
        assert!(mount_idmapped(0, &m, Some(&ns)).unwrap());
        refused(mount_idmapped(2, &m, None), "mounts[2].uid_mappings");
        m.gid_mappings = vec![map(0, 1 << 20, 65536)];
        refused(
            mount_idmapped(1, &m, Some(&ns)),
            "only the pod's own mappings",
        );
    }
}
