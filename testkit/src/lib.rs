//! Test support that needs no gRPC, shared by the image store's, the CNI crate's and the
//! end-to-end tests and by the benchmark:
//! - fixture images built from busybox-static (`fixtures`);
//! - a local `docker-registry` on loopback (`registry`) and its token issuer (`token`);
//! - private CNI networks (`network`) and pinned network namespaces for tests that drive CNI
//!   directly (`netns`);
//! - the request head a test's own misbehaving HTTP server reads (`http`);
//! - what a store left on disk (`files`), and the clean-up every test needs: children tied
//!   to their test (`process`) and leftover mounts (`mounts`).

pub mod files;
pub mod fixtures;
pub mod http;
pub mod mounts;
pub mod netns;
pub mod network;
pub mod process;
pub mod prop;
pub mod registry;
pub mod token;
