//! The result cache: per (network, container id, ifname) the exact config an ADD ran with, its
//! capability arguments and its result, so that DEL (and CHECK) can run later with exactly
//! that — after a daemon crash, after the conflist changed or vanished, and after the netns is
//! gone. libcni keeps the same data under `/var/lib/cni/results`.
//!
//! The entry is written *before* ADD runs (without a result) and rewritten with the result
//! afterwards: a crash in the middle of ADD still leaves the config DEL needs.
//!
//! Entries are replaced atomically but not fsynced, as libcni's are not: a daemon crash
//! leaves the page cache, and so the entry, intact; a power loss may tear it, but then the
//! netns is gone too and DEL only has to release what the plugins keep on disk (host-local's
//! addresses), which [`ResultCache::find`]'s caller does from the file's name and the
//! network in use. Two fsync pairs per pod start were ~1 ms of RunPodSandbox (#18).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, Result};

/// Version of the on-disk format.
const CACHE_VERSION: u32 = 1;

/// One cache entry (versioned, written atomically).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Format version.
    pub version: u32,
    /// Network name of the list.
    pub network: String,
    /// `CNI_CONTAINERID` (the sandbox id).
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The netns path ADD was given.
    pub netns: PathBuf,
    /// The network config list as used (the whole list, with all plugins).
    pub config: Value,
    /// `CNI_ARGS` as used.
    pub cni_args: String,
    /// Capability arguments (`portMappings`, `bandwidth`, `dns`) as used; each plugin gets
    /// the subset it declares.
    pub capability_args: serde_json::Map<String, Value>,
    /// The final ADD result; `None` while ADD runs (or if it crashed).
    pub result: Option<Value>,
}

impl CacheEntry {
    /// A new entry with the current format version and no result.
    pub(crate) fn new(
        network: &str,
        container_id: &str,
        ifname: &str,
        netns: &Path,
        config: Value,
        cni_args: String,
        capability_args: serde_json::Map<String, Value>,
    ) -> Self {
        Self {
            version: CACHE_VERSION,
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            netns: netns.to_path_buf(),
            config,
            cni_args,
            capability_args,
            result: None,
        }
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
        move |source| CniError::Cache {
            path: path.to_path_buf(),
            source,
        }
    }

    fn path_of(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join(format!("{network}-{container_id}-{ifname}.json"))
    }

    /// Writes `entry` atomically (temp file, rename; no fsync, see the module's doc): a
    /// reader or a daemon crash sees the old or the new entry, never a torn one.
    pub(crate) fn store(&self, entry: &CacheEntry) -> Result<PathBuf> {
        // Root only, as libcni's: the entries name pods and their addresses.
        rootstock_fsutil::create_private_dir(&self.dir).map_err(Self::cache_err(&self.dir))?;
        let path = self.path_of(&entry.network, &entry.container_id, &entry.ifname);
        let data = serde_json::to_vec_pretty(entry).map_err(|e| CniError::Cache {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        rootstock_fsutil::write_per_boot(&path, &data).map_err(Self::cache_err(&path))?;
        Ok(path)
    }

    /// Finds the entry of `container_id`/`ifname` whatever its network (the network's name
    /// may have changed since ADD): its path and content, or why the file named for it could
    /// not be read (torn by a power loss).
    pub(crate) fn find(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<(PathBuf, std::result::Result<CacheEntry, CniError>)>> {
        let suffix = format!("-{container_id}-{ifname}.json");
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::cache_err(&self.dir)(e)),
        };
        for e in entries {
            let e = e.map_err(Self::cache_err(&self.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(&suffix) {
                continue;
            }
            let path = e.path();
            match Self::load(&path) {
                Ok(entry) if entry.container_id == container_id && entry.ifname == ifname => {
                    return Ok(Some((path, Ok(entry))));
                }
                Ok(_) => {}
                Err(err @ CniError::CorruptCache { .. }) => return Ok(Some((path, Err(err)))),
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    fn load(path: &Path) -> Result<CacheEntry> {
        let data = std::fs::read(path).map_err(Self::cache_err(path))?;
        let entry: CacheEntry =
            serde_json::from_slice(&data).map_err(|e| CniError::CorruptCache {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if entry.version != CACHE_VERSION {
            return Err(CniError::CorruptCache {
                path: path.to_path_buf(),
                reason: format!("unknown format version {}", entry.version),
            });
        }
        Ok(entry)
    }

    /// Removes an entry; absent is fine (DEL is idempotent, and one a power loss brings back
    /// is DELed again).
    pub(crate) fn remove(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::cache_err(path)(e)),
        }
    }

    /// The container ids that have an entry (for DEL of sandboxes whose teardown a crash
    /// interrupted); an unreadable entry counts under the id its name gives. Called at
    /// start-up, before any ADD: a temp file (`.<name>.tmp`) is then a crash's leftover that
    /// nothing would ever overwrite (its sandbox id is not reused), so it is removed.
    pub(crate) fn container_ids(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::cache_err(&self.dir)(e)),
        };
        let mut ids = Vec::new();
        for e in entries {
            let e = e.map_err(Self::cache_err(&self.dir))?;
            let path = e.path();
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
            {
                if let Err(err) = std::fs::remove_file(&path) {
                    tracing::warn!(%err, path = %path.display(), "removing a CNI cache temp file");
                }
                continue;
            }
            if e.file_name()
                .to_str()
                .is_none_or(|n| n.starts_with('.') || !n.ends_with(".json"))
            {
                continue;
            }
            match Self::load(&path) {
                Ok(entry) => ids.push(entry.container_id),
                Err(err) => match id_in_name(&path) {
                    Some(id) => {
                        tracing::warn!(%err, "unreadable CNI cache entry, DEL from its name");
                        ids.push(id);
                    }
                    None => tracing::warn!(%err, "skipping unreadable CNI cache entry"),
                },
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// The container id in an entry's file name, `<network>-<container id>-<ifname>.json`: ids
/// are hex (the runtime's) and ifnames have no `-` (the runtime's `eth0`), networks may.
fn id_in_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.strip_suffix(".json")?;
    let (rest, _ifname) = name.rsplit_once('-')?;
    let (_network, id) = rest.rsplit_once('-')?;
    rootstock_fsutil::validate_id(id).ok()?;
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn store_find_remove_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path().join("cache"));
        assert!(c.find("abc", "eth0").unwrap().is_none());
        let mut e = CacheEntry::new(
            "net-1",
            "abc",
            "eth0",
            Path::new("/run/x"),
            serde_json::json!({"name": "net-1"}),
            "IgnoreUnknown=1".into(),
            Default::default(),
        );
        c.store(&e).unwrap();
        e.result = Some(serde_json::json!({"cniVersion": "1.0.0"}));
        c.store(&e).unwrap();
        let (p, got) = c.find("abc", "eth0").unwrap().unwrap();
        assert_eq!(got.unwrap(), e);
        assert!(c.find("bc", "eth0").unwrap().is_none());
        // A temp file left by a crash in the middle of a store is swept at start-up.
        let leftover = d.path().join("cache").join(".net-def-eth0.json.tmp");
        std::fs::write(&leftover, b"{").unwrap();
        assert_eq!(c.container_ids().unwrap(), vec!["abc".to_string()]);
        assert!(!leftover.exists(), "the crash's temp file is left behind");
        c.remove(&p).unwrap();
        c.remove(&p).unwrap();
        assert!(c.find("abc", "eth0").unwrap().is_none());
    }

    #[test]
    fn a_torn_entry_is_found_by_its_name() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path().join("cache"));
        std::fs::create_dir_all(d.path().join("cache")).unwrap();
        let id = "0123456789abcdef".repeat(4);
        let torn = d
            .path()
            .join("cache")
            .join(format!("my-net-{id}-eth0.json"));
        for content in [&b""[..], b"{\n  \"version\": 1,\n  \"netw"] {
            std::fs::write(&torn, content).unwrap();
            let (p, got) = c.find(&id, "eth0").unwrap().unwrap();
            assert_eq!(p, torn);
            assert!(matches!(got, Err(CniError::CorruptCache { .. })), "{got:?}");
            assert_eq!(c.container_ids().unwrap(), vec![id.clone()]);
        }
        assert!(c.find("0123", "eth0").unwrap().is_none());
        // A name without an id in it is left alone.
        std::fs::remove_file(&torn).unwrap();
        std::fs::write(d.path().join("cache").join("junk.json"), b"").unwrap();
        assert!(c.container_ids().unwrap().is_empty());
    }
}
