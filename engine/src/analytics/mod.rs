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
//!
//! Funnels, retention and channel attribution ([`Workspace::funnel`],
//! [`Workspace::retention`], [`Workspace::attribution`]) run over per-person
//! timelines: the events the last OneID run resolved, attributed like
//! profiles and tags, laid out per person in time order, built once per run
//! and kept in memory.
//!
//! [`Workspace::funnel`]: crate::Workspace::funnel
//! [`Workspace::retention`]: crate::Workspace::retention
//! [`Workspace::attribution`]: crate::Workspace::attribution

mod functions;
mod reports;
mod session;
#[cfg(test)]
mod tests;
mod timeline;

pub use reports::{
    Attribution, AttributionRequest, ChannelCredit, Cohort, Funnel, FunnelRequest, FunnelStep,
    NO_TOUCH, Period, Retention, RetentionRequest,
};
pub(crate) use session::AnalyticsState;
pub use session::{CATALOG, SqlSession, TableInfo};
pub use timeline::TimelineStats;
