//! Analytics: SQL over one or more workspaces through DataFusion, and the
//! person-level questions BI asks (funnels, retention).
//!
//! A [`SqlSession`] sees catalog `quiver` with one schema per workspace it
//! was given, each holding:
//!
//! - `events`: the Delta table ∪ the memtable, plus `person_id` and
//!   `ordinal`, the live person owning the event's strongest identifier (the
//!   attribution profiles and tags use; null before the first resolve or
//!   for an event nobody owns);
//! - `identifiers`, `persons`, `identity_history` (written by OneID),
//!   `profiles`, `attribute_history` (written by a tag refresh);
//! - `person_tags (person_id, ordinal, tag, value)`: the latest tag index as
//!   rows;
//!
//! and two functions over the session's default workspace, evaluated by the
//! bitmap engine rather than by SQL: the table function
//! `segment('<expression>' [, '<workspace>'])` (`person_id, ordinal` of the
//! members) and the filter `in_segment(person_id | ordinal, '<expression>')`.
//! Sessions are read-only: DDL, DML and statements are refused.

mod functions;
mod session;
#[cfg(test)]
mod tests;

pub(crate) use session::AnalyticsState;
pub use session::{CATALOG, SqlSession, TableInfo};
