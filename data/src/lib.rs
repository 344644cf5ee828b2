//! Quiver's data generator (`quiver gen`): deterministic, realistic omni-channel retail events
//! with known identity truth.
//!
//! Persons carry true identifiers (phone 90%, email 40%, unionid 60%, openids on the WeChat
//! apps they use, 1–3 devices, member card 30%) and act over `days` days ending on
//! `end_date` across ten channels (pos, miniprogram, official_account, tmall, jd, douyin,
//! xiaohongshu, ad, crm, service) with power-law activity (≈12 events per person on average,
//! a heavy tail, some persons with only `register` + `profile_update`). Events carry the
//! identifiers their channel would see, with the noise a real CDP sees: phone formats, email
//! case and spaces, junk values, family devices, store default phones, recycled numbers,
//! typos and retried duplicates (rates in `activity` and `noise`).
//!
//! [`generate`] writes into [`GenConfig::out`]:
//! - `events-00000.<parquet|ndjson|csv>`, … — at most `rows_per_file` rows each, columns
//!   [`file_schema`]; rows come in units of 1024 persons, each unit ordered by arrival time;
//! - `truth.parquet` — `kind, value, true_person`: every identifier value (normalised) that
//!   appears on a person's events and belongs to them, typo'd values included; junk values
//!   and store default phones excluded. Shared values (family tablets, recycled numbers) have
//!   one row per owner;
//! - `tags.toml` — the seed tags; `manifest.json` — parameters and files.
//!
//! Inside (private modules, each opening with what it owns): `config` (GenConfig, Format),
//! `catalog` (vocabularies and weights), `ids` (true identifiers, unique by construction),
//! `population` (persons, households, recycled numbers), `activity` (sessions → events, and
//! which identifiers reach truth), `noise` (how values are written), `event` (rows in
//! memory), `encode` (Arrow / NDJSON / CSV), `sink` (files), `generate` (threads, order).
//!
//! Output depends only on `(persons, days, seed, end_date)`: each person draws from its own
//! RNG seeded by `(seed, index)` and units are concatenated in order whatever the thread
//! count. [`generate_batches`] returns the same events in memory.
//!
//! ```no_run
//! let cfg = quiver_data::GenConfig { persons: 1_000, out: "/tmp/q".into(), ..Default::default() };
//! let summary = quiver_data::generate(&cfg, &|_done| {})?;
//! assert!(summary.events > 1_000);
//! # Ok::<(), quiver_data::Error>(())
//! ```

#![warn(missing_docs)]

mod accuracy;
mod activity;
mod catalog;
mod config;
mod encode;
mod error;
mod event;
mod generate;
mod ids;
mod noise;
mod population;
mod sink;

#[cfg(test)]
mod tests;

pub use accuracy::{Accuracy, pairwise, read_truth};
pub use catalog::TAGS_TOML as SEED_TAGS_TOML;
pub use config::{Format, GenConfig};
pub use encode::file_schema;
pub use error::{Error, Result};
pub use generate::{GenSummary, TruthRow, generate, generate_batches};
