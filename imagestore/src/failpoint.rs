//! The image store's crash points (the mechanism is `rootstock_fsutil::failpoint`: with
//! `ROOTSTOCK_FAILPOINT=<name>[@n]` a `failpoints` build SIGKILLs itself at [`hit`]).

pub use rootstock_fsutil::failpoint::hit;

/// Every failpoint in the crate, in pull order (tests iterate over them).
pub const ALL: &[&str] = &[
    "unpack.begin",
    "unpack.object-written",
    "unpack.object-linked",
    "unpack.entries-done",
    "unpack.before-rename",
    "unpack.after-rename",
    "unpack.after-record",
    "render.begin",
    "render.layer-applied",
    "render.before-rename",
    "render.after-rename",
    "render.after-record",
    "gc.tree-record-deleted",
    "gc.object-sweep",
];

/// The failpoints of the schema 1 → 2 migration at open (`crate::migrate`), in order; not in
/// [`ALL`], since a pull never reaches them.
pub const MIGRATION: &[&str] = &[
    "migrate.map-written",
    "migrate.object-linked",
    "migrate.manifest-written",
    "migrate.manifests-done",
    "migrate.object-unlinked",
    "migrate.before-schema",
];
