//! The image store's failpoints (`imagestore/src/failpoint.rs`), with the image operation
//! that reaches each: shared by the store's crash test and the whole-lifecycle crash matrix.
//! A renamed point is never reached, and those tests fail on the daemon that did not die.

/// The image operation that reaches a store failpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// PullImage.
    Pull,
    /// RemoveImage (its GC).
    Remove,
}

/// Every store failpoint, in pull order.
pub const STORE_POINTS: &[(&str, StoreOp)] = &[
    ("unpack.begin", StoreOp::Pull),
    ("unpack.object-written", StoreOp::Pull),
    ("unpack.object-linked", StoreOp::Pull),
    ("unpack.entries-done", StoreOp::Pull),
    ("unpack.before-rename", StoreOp::Pull),
    ("unpack.after-rename", StoreOp::Pull),
    ("unpack.after-record", StoreOp::Pull),
    ("render.begin", StoreOp::Pull),
    ("render.layer-applied", StoreOp::Pull),
    ("render.before-rename", StoreOp::Pull),
    ("render.after-rename", StoreOp::Pull),
    ("render.after-record", StoreOp::Pull),
    ("gc.tree-record-deleted", StoreOp::Remove),
    // The first sweep is start-up's; the second is the removal's.
    ("gc.object-sweep@2", StoreOp::Remove),
];
