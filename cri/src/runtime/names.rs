//! Name reservations. CRI makes a sandbox's (name, namespace, uid, attempt) and a container's
//! (sandbox, name, attempt) unique until the owner is removed; kubelet relies on the error to
//! notice a leftover and retries with the next attempt. The reservation is taken before the
//! slow work starts, so two concurrent creates of one name cannot both succeed.

use std::collections::HashMap;
use std::sync::Mutex;

use rootstock_runtime::Runtime;

use super::meta::{ContainerMeta, SandboxMeta};
use crate::error::CriError;

/// Reserved name → the id holding it.
#[derive(Debug, Default)]
pub(super) struct Names {
    held: Mutex<HashMap<String, String>>,
}

impl Names {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reserves the names of everything recovered from disk at start-up.
    pub fn rebuild(&self, rt: &Runtime) {
        let mut held = self.held();
        for sb in rt.list_sandboxes() {
            held.insert(
                SandboxMeta::of(&sb).reserved_name(),
                sb.record.id.to_string(),
            );
        }
        for c in rt.list_containers() {
            held.insert(
                ContainerMeta::of(&c).reserved_name(&c),
                c.record.id.to_string(),
            );
        }
    }

    /// Reserves `name` for `id`; `what` names the kind in the error ("pod sandbox").
    pub fn reserve(&self, what: &str, name: &str, id: &str) -> Result<Reservation<'_>, CriError> {
        let mut held = self.held();
        if let Some(holder) = held.get(name) {
            return Err(CriError::AlreadyExists(format!(
                "{what} name {name:?} is reserved by {holder}: remove it first, or use another \
                 attempt"
            )));
        }
        held.insert(name.to_owned(), id.to_owned());
        Ok(Reservation {
            names: self,
            name: name.to_owned(),
            kept: false,
        })
    }

    /// Frees `name` if `id` holds it (RemovePodSandbox / RemoveContainer).
    pub fn release(&self, name: &str, id: &str) {
        let mut held = self.held();
        if held.get(name).map(String::as_str) == Some(id) {
            held.remove(name);
        }
    }
}

/// A reservation that is given back on drop unless [`Reservation::keep`] was called: a create
/// that fails at any step frees its name.
pub(super) struct Reservation<'a> {
    names: &'a Names,
    name: String,
    kept: bool,
}

impl Reservation<'_> {
    /// The create succeeded: the name stays reserved until removal.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.names.held().remove(&self.name);
        }
    }
}
