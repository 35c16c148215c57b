//! The end-to-end harness: the real `rootstock` daemon on a private root and socket
//! (`daemon`), a local `docker-registry` on loopback (`registry`), fixture images built
//! from busybox-static (`fixtures`), a private CNI network (`network`), pinned network
//! namespaces for tests that drive CNI directly (`netns`), and the side-by-side benchmark
//! against containerd (`bench`).

pub mod bench;
pub mod daemon;
pub mod fixtures;
pub mod netns;
pub mod network;
pub mod registry;
pub mod token;
