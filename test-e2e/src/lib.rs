//! The end-to-end harness: the real `rootstock` daemon on a private root and socket
//! (`daemon`), a local `docker-registry` on loopback (`registry`), and fixture images built
//! from busybox-static (`fixtures`).

pub mod daemon;
pub mod fixtures;
pub mod registry;
pub mod token;
