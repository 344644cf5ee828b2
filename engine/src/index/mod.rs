//! Bitmap indexes over person ordinals: the structures tags and segments are
//! answered from, and their file formats.
//!
//! - [`Bsi`]: a bit-sliced index of one numeric trait (`total_spend`,
//!   `order_count`): equality and range queries as bitmap operations, no scan.
//! - [`DailyCounts`]: per-day behaviour counts with block sums, so "did X at
//!   least n times in a window" is exact without an event scan.
//! - [`IndexDir`]: versioned index files, written atomically, old versions pruned.
//! - [`IndexSet`]: every index of one version, with its manifest.
//!
//! Every bitmap is a [`RoaringBitmap`] whose bits are person ordinals (the
//! dense `u32` each person keeps for life, see `identity`). On disk each
//! bitmap is in the **portable roaring format**, the one CRoaring, Java and Go
//! read, so a file can be opened by any roaring library once its small
//! framing (documented per type) is skipped.
//!
//! Not here: which persons a rule selects (`tag`), or the segment language.

mod behaviour;
mod bsi;
mod files;
mod set;

pub use behaviour::{BehaviourKey, DailyCounts, DayLists};
pub(crate) use bsi::Crc32Writer;
pub use bsi::{Bsi, Compare};
pub use files::{IndexDir, IndexKind, write_file_atomic};
pub use roaring::RoaringBitmap;
pub use set::{Entry, IndexSet, Manifest, NumericIndex};

/// A person's dense bit position in every bitmap. Never reused; a retired
/// person's bits move to its survivor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ordinal(pub u32);
