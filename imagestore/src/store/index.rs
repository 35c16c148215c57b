//! The in-memory index of images and names: resolving what a caller typed to an image id,
//! and committing an image record (metadata first, then memory).

use std::collections::HashMap;

use super::{Image, Inner, RECORD_VERSION};
use crate::error::{Error, Result};
use crate::metadata::{ImageChanges, ImageRecord};
use crate::reference::{Digest, ImageLookup};

#[derive(Default)]
pub(super) struct Index {
    pub(super) images: HashMap<Digest, ImageRecord>,
    pub(super) refs: HashMap<String, Digest>,
}

/// Resolve a lookup string to an image id.
pub(super) fn resolve(index: &Index, input: &str) -> Result<Option<Digest>> {
    let lookup = ImageLookup::parse(input).map_err(|e| Error::invalid_reference(input, e))?;
    let by_prefix = |prefix: &str| -> Result<Option<Digest>> {
        let matches: Vec<&Digest> = index
            .images
            .keys()
            .filter(|id| id.hex().starts_with(prefix))
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => Err(Error::AmbiguousId {
                prefix: prefix.to_string(),
                count: many.len(),
            }),
        }
    };
    match lookup {
        ImageLookup::Id(id) => Ok(index.images.contains_key(&id).then_some(id)),
        ImageLookup::Prefix(p) => by_prefix(&p),
        ImageLookup::Name { reference, prefix } => {
            let key = match reference.digest() {
                Some(d) => reference.repo_digest(d),
                None => reference
                    .repo_tag()
                    .unwrap_or_else(|| reference.to_string()),
            };
            if let Some(id) = index.refs.get(&key) {
                return Ok(Some(id.clone()));
            }
            match prefix {
                Some(p) => by_prefix(&p),
                None => Ok(None),
            }
        }
    }
}

impl Inner {
    pub(super) fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        match self.index.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(super) fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        match self.index.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The `Image` for a record, with its tree path.
    pub(super) fn image(&self, record: &ImageRecord) -> Image {
        let mut image = Image::from(record);
        image.tree = record
            .chain_id
            .as_ref()
            .map(|c| self.paths.trees.join(c.0.hex()));
        image
    }

    /// Write `record` (merged with an existing image of the same id) and move its tag away
    /// from any other image. Caller holds `gc_lock`. Blocking.
    pub(super) fn commit_image(&self, record: ImageRecord) -> Result<ImageRecord> {
        let mut changes = ImageChanges::default();
        let merged = {
            let index = self.read_index();
            let mut merged = match index.images.get(&record.id) {
                Some(existing) => {
                    let mut m = existing.clone();
                    for t in &record.repo_tags {
                        if !m.repo_tags.contains(t) {
                            m.repo_tags.push(t.clone());
                        }
                    }
                    for d in &record.repo_digests {
                        if !m.repo_digests.contains(d) {
                            m.repo_digests.push(d.clone());
                        }
                    }
                    for b in &record.blobs {
                        if !m.blobs.contains(b) {
                            m.blobs.push(b.clone());
                        }
                    }
                    m
                }
                None => record.clone(),
            };
            merged.version = RECORD_VERSION;
            // A tag names one image: moving it here takes it from its previous holder
            // (which stays, untagged, until removed, as with containerd).
            for r in record.repo_tags.iter().chain(record.repo_digests.iter()) {
                if let Some(old_id) = index.refs.get(r)
                    && old_id != &record.id
                    && let Some(old) = index.images.get(old_id)
                {
                    let mut old = changes
                        .put
                        .iter()
                        .find(|p| &p.id == old_id)
                        .cloned()
                        .unwrap_or_else(|| old.clone());
                    old.repo_tags.retain(|t| t != r);
                    old.repo_digests.retain(|t| t != r);
                    changes.put.retain(|p| &p.id != old_id);
                    changes.put.push(old);
                }
                changes.put_refs.push((r.clone(), record.id.clone()));
            }
            merged
        };
        changes.put.push(merged.clone());
        self.meta.apply(&changes)?;
        let mut index = self.write_index();
        for r in &changes.put {
            index.images.insert(r.id.clone(), r.clone());
        }
        for (r, id) in &changes.put_refs {
            index.refs.insert(r.clone(), id.clone());
        }
        Ok(merged)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::manifest::RuntimeConfig;

    fn record(id: Digest, tag: &str) -> ImageRecord {
        ImageRecord {
            version: 1,
            id,
            repo_tags: vec![tag.to_string()],
            repo_digests: vec![],
            size: 0,
            config: RuntimeConfig::default(),
            created: None,
            layers: vec![],
            chain_id: None,
            blobs: vec![],
            pulled_at: 0,
        }
    }

    #[test]
    fn lookups_resolve_names_ids_and_unique_prefixes() {
        let a = Digest::from_hex(&format!("abcd1{}", "0".repeat(59))).unwrap();
        let b = Digest::from_hex(&format!("abcd2{}", "0".repeat(59))).unwrap();
        let mut index = Index::default();
        for (id, tag) in [
            (&a, "docker.io/library/a:latest"),
            (&b, "docker.io/library/b:1"),
        ] {
            index.images.insert(id.clone(), record(id.clone(), tag));
            index.refs.insert(tag.to_string(), id.clone());
        }
        assert_eq!(resolve(&index, "a").unwrap(), Some(a.clone()));
        assert_eq!(
            resolve(&index, "docker.io/library/b:1").unwrap(),
            Some(b.clone())
        );
        assert_eq!(resolve(&index, "b").unwrap(), None);
        assert_eq!(resolve(&index, a.as_str()).unwrap(), Some(a.clone()));
        assert_eq!(resolve(&index, "abcd1").unwrap(), Some(a.clone()));
        assert_eq!(resolve(&index, "sha256:abcd2").unwrap(), Some(b));
        let err = resolve(&index, "abcd").unwrap_err();
        assert!(matches!(err, Error::AmbiguousId { count: 2, .. }), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert_eq!(resolve(&index, "ffff").unwrap(), None);
        let json = serde_json::to_value(Image::from(&record(a, "x"))).unwrap();
        assert!(json.is_object());
    }
}
