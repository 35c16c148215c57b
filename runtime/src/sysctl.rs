//! Which pod sysctls may be set: only those the kernel keeps per namespace, and only when
//! the pod owns that namespace — the rules of runc (`libcontainer/configs/validate`) and
//! CRI-O. A pod sysctl is written from inside the pod's new namespaces; a sysctl that is
//! not namespaced (`kernel.core_pattern`, `vm.*`) would change the whole node, and `net.*`
//! in a hostNetwork pod would change the node's network stack.

use crate::error::{Error, Result};

/// The namespaces a pod has of its own (not the node's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnNamespaces {
    /// Network namespace (not hostNetwork).
    pub net: bool,
    /// IPC namespace (not hostIPC).
    pub ipc: bool,
    /// UTS namespace (comes with the network one).
    pub uts: bool,
}

/// IPC-namespaced sysctls by exact name (runc's list).
const IPC_NAMES: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Checks one pod sysctl; the error names it and says why.
pub fn check(name: &str, value: &str, own: OwnNamespaces) -> Result<()> {
    let refuse = |why: &str| Err(Error::InvalidArgument(format!("sysctl {name:?}: {why}")));
    // The name becomes a path under /proc/sys: nothing that could walk out of it.
    if name.is_empty()
        || name.contains(['/', '\0'])
        || name.split('.').any(|c| c.is_empty() || c == "..")
    {
        return refuse("not a sysctl name (dot-separated, no '/', '..' or NUL)");
    }
    if value.contains(['\0', '\n']) {
        return refuse("the value holds a NUL or newline");
    }
    let (needs, what) = if is_ipc(name) {
        (own.ipc, "the pod shares the node's IPC namespace (hostIPC)")
    } else if name.starts_with("net.") {
        (
            own.net,
            "the pod shares the node's network namespace (hostNetwork)",
        )
    } else if name == "kernel.domainname" || name == "kernel.hostname" {
        (
            own.uts,
            "the pod shares the node's UTS namespace (hostNetwork)",
        )
    } else {
        return refuse("not a namespaced sysctl; setting it would change the whole node");
    };
    if needs { Ok(()) } else { refuse(what) }
}

/// Whether `name` belongs to the IPC namespace. In a pod's user namespace these are the
/// ones only the namespace's root may write (the kernel compares the writer's euid with
/// the root of the user namespace owning the IPC namespace; `net.*` asks for a capability
/// there, `kernel.hostname`/`domainname` for the node's root).
pub fn is_ipc(name: &str) -> bool {
    IPC_NAMES.contains(&name) || name.starts_with("fs.mqueue.")
}

/// The `/proc/sys` path of a checked sysctl name.
pub fn proc_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: OwnNamespaces = OwnNamespaces {
        net: true,
        ipc: true,
        uts: true,
    };
    const HOST_NET: OwnNamespaces = OwnNamespaces {
        net: false,
        ipc: true,
        uts: false,
    };

    #[test]
    fn namespaced_sysctls_pass_when_the_pod_owns_the_namespace() {
        for name in [
            "kernel.shmmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "net.core.somaxconn",
            "kernel.domainname",
        ] {
            check(name, "1", OWN).unwrap();
        }
        check("kernel.msgmax", "1", HOST_NET).unwrap();
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }

    #[test]
    fn node_wide_and_malformed_sysctls_are_refused_naming_them() {
        for (name, own) in [
            ("kernel.core_pattern", OWN),
            ("vm.swappiness", OWN),
            ("kernel.shm", OWN),
            ("net.ipv4.ip_forward", HOST_NET),
            ("kernel.hostname", HOST_NET),
            ("../x", OWN),
            ("net/ipv4/ip_forward", OWN),
            ("net..ipv4", OWN),
            ("net.\0", OWN),
            ("", OWN),
        ] {
            let err = check(name, "1", own).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{name:?}");
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
        assert!(check("net.core.somaxconn", "1\n2", OWN).is_err());
    }
}
