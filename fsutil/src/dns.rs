//! The pod's DNS settings (CRI `DNSConfig`), one type for the two crates that use them: the
//! runtime writes them into the sandbox's `resolv.conf`, CNI passes them to plugins that
//! declare the `dns` capability. Neither crate may depend on the other, hence here.

/// DNS settings of a pod (CRI `DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers (`nameserver` lines).
    pub servers: Vec<String>,
    /// Search domains (`search`).
    pub searches: Vec<String>,
    /// resolv.conf `options`.
    pub options: Vec<String>,
}
