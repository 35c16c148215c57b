//! Short ids, as containerd's truncindex: every by-id RPC and every `id` filter accepts a
//! unique prefix of a container or sandbox id (`crictl stop 3f2a…` is how people use it).
//! An exact id wins; a prefix matching several ids is `InvalidArgument` listing them. An id
//! nothing matches is NotFound, except for Stop/Remove, which keep CRI's idempotent OK.

use rootstock_runtime::{ContainerId, SandboxId};

use super::RuntimeApi;
use crate::error::CriError;

/// The id `given` names among `ids`: itself, else the one id it is a prefix of. `None` when
/// nothing matches.
fn resolve<I: AsRef<str>>(what: &str, given: &str, ids: &[I]) -> Result<Option<String>, CriError> {
    if given.is_empty() {
        return Err(CriError::InvalidArgument(format!("no {what} id given")));
    }
    if ids.iter().any(|id| id.as_ref() == given) {
        return Ok(Some(given.to_owned()));
    }
    let mut matches: Vec<&str> = ids
        .iter()
        .map(AsRef::as_ref)
        .filter(|id| id.starts_with(given))
        .collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.pop().map(str::to_owned)),
        _ => {
            matches.sort_unstable();
            Err(CriError::InvalidArgument(format!(
                "{what} id prefix {given:?} is ambiguous: it matches {}; give more of the id",
                matches.join(", ")
            )))
        }
    }
}

impl RuntimeApi {
    /// The container a by-id RPC names; NotFound when none.
    pub(super) fn container_id(&self, given: &str) -> Result<ContainerId, CriError> {
        self.known_container_id(given)?
            .ok_or_else(|| CriError::NotFound(format!("container {given:?} not found")))
    }

    /// The container `given` names, `None` when it names none (Stop/Remove: already done).
    pub(super) fn known_container_id(&self, given: &str) -> Result<Option<ContainerId>, CriError> {
        resolve("container", given, &self.rt.container_ids())?
            .map(ContainerId::new)
            .transpose()
            .map_err(CriError::from)
    }

    /// The sandbox a by-id RPC names; NotFound when none.
    pub(super) fn sandbox_id(&self, given: &str) -> Result<SandboxId, CriError> {
        let ids = self.rt.sandbox_ids();
        match resolve("pod sandbox", given, &ids)? {
            Some(id) => Ok(SandboxId::new(id)?),
            None => Err(CriError::NotFound(format!(
                "pod sandbox {given:?} not found"
            ))),
        }
    }

    /// The sandbox Stop/RemovePodSandbox act on: the one `given` names, else `given` itself
    /// (validated), whose CNI attachment may outlive its record after a crash.
    pub(super) fn sandbox_id_or_given(&self, given: &str) -> Result<SandboxId, CriError> {
        let ids = self.rt.sandbox_ids();
        let id = resolve("pod sandbox", given, &ids)?.unwrap_or_else(|| given.to_owned());
        Ok(SandboxId::new(id)?)
    }

    /// An `id` filter of a list: empty is no filter; a unique prefix becomes the full id;
    /// an id nothing matches stays as given, so the list comes back empty.
    pub(super) fn container_filter(&self, given: &str) -> Result<String, CriError> {
        if given.is_empty() {
            return Ok(String::new());
        }
        let ids = self.rt.container_ids();
        Ok(resolve("container", given, &ids)?.unwrap_or_else(|| given.to_owned()))
    }

    /// [`Self::container_filter`] for sandbox ids.
    pub(super) fn sandbox_filter(&self, given: &str) -> Result<String, CriError> {
        if given.is_empty() {
            return Ok(String::new());
        }
        let ids = self.rt.sandbox_ids();
        Ok(resolve("pod sandbox", given, &ids)?.unwrap_or_else(|| given.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn exact_wins_unique_prefix_resolves_ambiguous_lists_matches() {
        let ids = ["abc123", "abd456", "ab"];
        assert_eq!(resolve("c", "ab", &ids).ok(), Some(Some("ab".into())));
        assert_eq!(resolve("c", "abc", &ids).ok(), Some(Some("abc123".into())));
        assert_eq!(resolve("c", "zz", &ids).ok(), Some(None));
        let err = resolve("c", "a", &ids).unwrap_err().to_string();
        assert!(err.contains("ab, abc123, abd456"), "{err}");
        assert!(resolve("c", "", &ids).is_err());
    }
}
