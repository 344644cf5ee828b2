//! Profiles: each person's attributes (from `profile_update` events, latest by
//! event time wins, every change kept) and computed traits over the events of
//! all its identifiers (first/last seen, events by channel, orders, spend,
//! average order value, RFM scores, preferred channel and category,
//! registered channel).
//!
//! One pass over `events` ([`scan`]) attributes every event to a person
//! through the `identifiers` table that OneID wrote (an event whose values
//! sit in different persons goes to the person of its strongest kind), and
//! feeds both the profiles and the behaviour counts that tags are built from.
//! The result is written as the workspace's `profiles` and
//! `attribute_history` Delta tables (overwritten per refresh; Delta time
//! travel keeps earlier ones).

mod scan;
pub(crate) mod state;
mod table;
mod traits;

pub use scan::BehaviourKey;
pub(crate) use scan::{BehaviourPlan, PersonMap, Scan, scan, scan_files};
pub(crate) use table::write_tables;
pub(crate) use traits::derive;

/// The Delta tables a refresh writes.
pub const TABLES: [&str; 2] = [table::PROFILES, table::ATTRIBUTE_HISTORY];

/// A computed trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraitDef {
    /// Its name in rules and segments.
    pub name: &'static str,
    /// Numeric (range queries) or enumerated (one bitmap per value).
    pub kind: TraitKind,
    /// What it means.
    pub description: &'static str,
}

/// How a trait is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraitKind {
    /// A number with this many decimal places (money: 2), in a bit-sliced index.
    Numeric {
        /// Decimal places kept.
        scale: u8,
    },
    /// A string, one bitmap per value.
    Enumerated,
}

const fn num(name: &'static str, scale: u8, description: &'static str) -> TraitDef {
    TraitDef {
        name,
        kind: TraitKind::Numeric { scale },
        description,
    }
}

const fn enumerated(name: &'static str, description: &'static str) -> TraitDef {
    TraitDef {
        name,
        kind: TraitKind::Enumerated,
        description,
    }
}

/// Every computed trait. Attributes (`member_level`, `city`, ...) come on top,
/// from the `profile_update` events themselves.
pub const TRAITS: [TraitDef; 14] = [
    num("events", 0, "events of all the person's identifiers"),
    num("order_count", 0, "purchase events"),
    num("total_spend", 2, "sum of purchase amounts (CNY)"),
    num(
        "avg_order_value",
        2,
        "total_spend / order_count (CNY; purchasers only)",
    ),
    num(
        "days_since_last_seen",
        0,
        "whole days from the last event to the refresh's now",
    ),
    num(
        "days_since_first_seen",
        0,
        "whole days from the first event to the refresh's now",
    ),
    num(
        "recency_days",
        0,
        "whole days from the last purchase to the refresh's now (purchasers only)",
    ),
    num(
        "rfm_r",
        0,
        "recency score 1-5 among purchasers (5: most recent quintile)",
    ),
    num(
        "rfm_f",
        0,
        "frequency score 1-5 among purchasers (by order_count)",
    ),
    num(
        "rfm_m",
        0,
        "monetary score 1-5 among purchasers (by total_spend)",
    ),
    enumerated("rfm", "the three scores as one code, e.g. '545'"),
    enumerated(
        "preferred_channel",
        "the channel with most events (ties: first by name)",
    ),
    enumerated(
        "preferred_category",
        "the category with most events that carry one (ties: first by name)",
    ),
    enumerated(
        "registered_channel",
        "the channel of the person's first `register` event",
    ),
];

/// The computed trait named `name`.
pub fn trait_def(name: &str) -> Option<&'static TraitDef> {
    TRAITS.iter().find(|t| t.name == name)
}
