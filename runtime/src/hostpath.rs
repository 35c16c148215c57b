//! Sources of CRI bind mounts. A `host_path` that does not exist is created as a directory,
//! as containerd does for hostPath volumes without a type (kubelet checks typed ones itself);
//! runc would otherwise fail the create with a bare "no such file or directory".

use std::os::unix::fs::DirBuilderExt;

use crate::error::{Error, Result};
use crate::spec::BindMount;

/// Creates the missing sources of `mounts` (mode 0755, parents included). A dangling
/// symlink is left alone: the OCI runtime reports it.
pub fn ensure_sources(mounts: &[BindMount]) -> Result<()> {
    for m in mounts {
        match std::fs::symlink_metadata(&m.host_path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&m.host_path)
                    .map_err(|e| Error::io("create mount source", &m.host_path, e))?;
            }
            Err(e) => return Err(Error::io("stat mount source", &m.host_path, e)),
        }
    }
    Ok(())
}
