//! The end-to-end harness: the real `rootstock` daemon on a private root and socket
//! (`daemon`) and the CRI requests kubelet sends (`cri`). The gRPC-free test support — fixture
//! images, the local registry and its token issuer, test CNI networks and network
//! namespaces — lives in `rootstock-testkit`; its modules are re-exported here so an e2e test
//! names one crate (`rootstock_test_e2e::registry::Registry`).

pub mod cri;
pub mod daemon;
pub mod failpoints;

pub use rootstock_testkit::{
    files, fixtures, http, mounts, netns, network, process, registry, token,
};
