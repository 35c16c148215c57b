//! Lease reconciliation at daemon start-up: the one question recovery asks the store about
//! containers, so that the daemon never reaches into the metadata database itself.

use std::collections::HashSet;

use crate::error::Result;
use crate::store::ImageStore;

/// What [`ImageStore::reconcile_leases`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaseReconciliation {
    /// Leases given back (their holder is gone).
    pub released: Vec<String>,
    /// Leases whose release failed, with the reason; they stay, so the next start retries.
    pub failed: Vec<(String, String)>,
}

impl ImageStore {
    /// Gives back every image tree lease whose holder is not in `live` (lease ids are
    /// container ids): a crash between RemoveContainer's teardown and its release, or a
    /// half-created container that recovery removed, would otherwise pin its tree forever.
    /// Call at start-up, before anything takes new leases.
    pub async fn reconcile_leases(&self, live: &HashSet<String>) -> Result<LeaseReconciliation> {
        // One small read at start-up, before the daemon serves: nothing else waits on this
        // worker meanwhile.
        let leases = self.metadata().leases()?;
        let mut done = LeaseReconciliation::default();
        for lease in leases.into_iter().filter(|l| !live.contains(&l.id)) {
            match self.release(&lease.id).await {
                Ok(()) => done.released.push(lease.id),
                Err(e) => done.failed.push((lease.id, e.to_string())),
            }
        }
        Ok(done)
    }
}
