//! The refresh: profiles, traits, behaviour counts and every tag, as one new
//! index version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::def::{STANDARD_EVENT_TYPES, TagKind};
use crate::identity::Progress;
use crate::index::{BehaviourKey, DailyCounts, IndexSet, NumericIndex, Ordinal};
use crate::profile::{self, BehaviourPlan, PersonMap};
use crate::segment::{Expr, evaluate};
use crate::store::Workspace;
use crate::{Error, Result};

const DAY_US: i64 = 86_400_000_000;

/// One tag after a refresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagCoverage {
    /// The tag.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Persons in it (any value, for an enum tag).
    pub count: u64,
    /// Per value, for an enum tag.
    pub values: Vec<(String, u64)>,
    /// Manual tags: identifiers in the list no live person holds.
    pub unknown_identifiers: u64,
}

/// What a refresh built.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshReport {
    /// The new index version.
    pub version: u64,
    /// "Now" for windows, µs.
    pub now: i64,
    /// Events read.
    pub events: u64,
    /// Events none of whose identifiers a live person holds (not resolved yet).
    pub unattributed_events: u64,
    /// Live persons.
    pub persons: u64,
    /// Per tag, in definition order.
    pub tags: Vec<TagCoverage>,
    /// Behaviour keys indexed.
    pub behaviour_keys: u64,
    /// Bytes of the version's index files.
    pub index_bytes: u64,
    /// Seconds per phase: scan, traits, behaviour, tags, write.
    pub phases: Vec<(String, f64)>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// `v / 10^scale` as text: `123456` at scale 2 is `1234.56`.
pub(crate) fn format_scaled(v: i64, scale: u8) -> String {
    if scale == 0 {
        return v.to_string();
    }
    let p = 10i64.pow(u32::from(scale));
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        a / p as u64,
        a % p as u64,
        width = scale as usize
    )
}

impl Workspace {
    /// Rebuilds profiles, traits, behaviour counts and every defined tag as a
    /// new index version, with windows relative to `now` (µs; default: the
    /// current time). Writes the `profiles` and `attribute_history` tables,
    /// keeps the newest `tags.keep_versions` versions. Needs a resolve first.
    pub async fn refresh_tags(
        &self,
        now: Option<i64>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<RefreshReport> {
        let state = self.tag_state();
        let _g = state.lock.lock().await;
        let started = Instant::now();
        let now = now.unwrap_or_else(crate::store::now_micros);
        let now_day = now.div_euclid(DAY_US) as i32;
        let defs = self.tag_definitions()?;
        let order = defs.check(&self.checked_catalog().await?)?;
        let rules = self.identity_rules()?;
        let persons = PersonMap::load(self, &rules).await?.ok_or_else(|| {
            Error::invalid(
                "workspace",
                format!(
                    "`{}` has no persons yet: run `quiver resolve` before refreshing tags",
                    self.name()
                ),
            )
        })?;
        let mut phases: Vec<(String, f64)> = Vec::new();
        let mut phase = |name: &str, t: &mut Instant| {
            phases.push((name.to_string(), t.elapsed().as_secs_f64()));
            *t = Instant::now();
        };
        let mut t = Instant::now();

        // Scan: every event once.
        let mut combos: Vec<BehaviourKey> = Vec::new();
        for (_, e) in &order {
            did_combos(e, &mut combos);
        }
        combos.sort();
        combos.dedup();
        let plan = BehaviourPlan {
            dimensions: defs.behaviour.dimensions.clone(),
            combos,
        };
        let scan = profile::scan(self, &persons, &plan).await?;
        progress(Progress {
            phase: "scan",
            done: scan.read,
        });
        phase("scan", &mut t);

        // Traits and profile tables.
        let persons = Arc::new(persons);
        let scan = Arc::new(scan);
        let derived = {
            let (p, s) = (persons.clone(), scan.clone());
            tokio::task::spawn_blocking(move || profile::derive(&s, &p.live, now))
                .await
                .map_err(|e| Error::Internal(format!("trait task: {e}")))?
        };
        let mut set = IndexSet {
            built_at: crate::store::now_micros(),
            now_day,
            live: persons.live.clone(),
            dimensions: defs.behaviour.dimensions.clone(),
            event_types: STANDARD_EVENT_TYPES
                .iter()
                .map(|s| s.to_string())
                .chain(scan.event_types.names.iter().cloned())
                .collect(),
            ..IndexSet::default()
        };
        let derived = Arc::new(derived);
        let (numbers, enums) = {
            let (p, s, d) = (persons.clone(), scan.clone(), derived.clone());
            tokio::task::spawn_blocking(move || {
                let numbers: BTreeMap<String, NumericIndex> = d
                    .numeric_traits(&s, &p.live)
                    .into_iter()
                    .map(|(name, scale, values)| {
                        let bsi = crate::index::Bsi::from_values(
                            values.into_iter().map(|(o, v)| (Ordinal(o), v)),
                        );
                        (name.to_string(), NumericIndex { scale, bsi })
                    })
                    .collect();
                (numbers, d.enumerated(&s, &p.live))
            })
            .await
            .map_err(|e| Error::Internal(format!("trait task: {e}")))?
        };
        set.numbers = numbers;
        set.enums = enums;
        // The profile tables are written while the behaviour counts build.
        let tables_task = {
            let (dir, p, s, d) = (
                self.dir().to_path_buf(),
                persons.clone(),
                scan.clone(),
                derived.clone(),
            );
            tokio::spawn(async move { profile::write_tables(&dir, &p, &s, &d).await })
        };
        progress(Progress {
            phase: "traits",
            done: set.live.len(),
        });
        phase("traits", &mut t);

        // Behaviour: per-day counts per key.
        let behaviour = {
            let s = scan.clone();
            tokio::task::spawn_blocking(move || {
                s.behaviour
                    .iter()
                    .map(|(key, pairs)| {
                        let counts =
                            DailyCounts::from_events(pairs.iter().map(|&(d, o)| (d, Ordinal(o))))?;
                        Ok((key.clone(), counts))
                    })
                    .collect::<Result<BTreeMap<BehaviourKey, DailyCounts>>>()
            })
            .await
            .map_err(|e| Error::Internal(format!("behaviour task: {e}")))??
        };
        set.behaviour = behaviour;
        tables_task
            .await
            .map_err(|e| Error::Internal(format!("profile table task: {e}")))??;
        let events = scan.read;
        let unattributed = scan.unattributed;
        drop(scan);
        drop(derived);
        progress(Progress {
            phase: "behaviour",
            done: set.behaviour.len() as u64,
        });
        phase("behaviour", &mut t);

        // Tags: rules in dependency order, then the other kinds.
        let mut coverage = Vec::new();
        // Rule tags may refer to each other: `order` puts a tag after those it uses.
        for (name, e) in order {
            let b = evaluate(&e, &set, now_day)?;
            set.tags.insert(name, b);
        }
        for tdef in &defs.tags {
            let mut unknown = 0;
            match tdef.kind {
                TagKind::Boolean => {}
                TagKind::Enum => {
                    let source = tdef.source.as_deref().unwrap_or_default();
                    let mut values = set.enums.get(source).cloned().unwrap_or_default();
                    if let Some(keep) = &tdef.values {
                        values.retain(|v, _| keep.contains(v));
                        for v in keep {
                            values.entry(v.clone()).or_default();
                        }
                    }
                    set.enums.insert(tdef.name.clone(), values);
                }
                TagKind::Numeric => {
                    let source = tdef.source.as_deref().unwrap_or_default();
                    if let Some(n) = set.numbers.get(source).cloned() {
                        set.numbers.insert(tdef.name.clone(), n);
                    }
                }
                TagKind::Manual => {
                    let mut b = RoaringBitmap::new();
                    for (k, v) in self.manual_members(&tdef.name)? {
                        match persons.ordinal_of(&k, &v) {
                            Some(o) => {
                                b.insert(o);
                            }
                            None => unknown += 1,
                        }
                    }
                    set.tags.insert(tdef.name.clone(), b);
                }
            }
            let (count, values) = match tdef.kind {
                TagKind::Boolean | TagKind::Manual => {
                    (set.tags.get(&tdef.name).map_or(0, |b| b.len()), Vec::new())
                }
                TagKind::Enum => {
                    let per: Vec<(String, u64)> = set
                        .enums
                        .get(&tdef.name)
                        .map(|m| m.iter().map(|(v, b)| (v.clone(), b.len())).collect())
                        .unwrap_or_default();
                    (per.iter().map(|x| x.1).sum(), per)
                }
                TagKind::Numeric => (
                    set.numbers.get(&tdef.name).map_or(0, |n| n.bsi.len()),
                    Vec::new(),
                ),
            };
            coverage.push(TagCoverage {
                name: tdef.name.clone(),
                kind: tdef.kind.as_str().to_string(),
                count,
                values,
                unknown_identifiers: unknown,
            });
        }
        progress(Progress {
            phase: "tags",
            done: coverage.len() as u64,
        });
        phase("tags", &mut t);

        // Write the version, manifest last; prune old ones.
        let root = self.index_dir();
        set.version = IndexSet::versions(&root)?.last().copied().unwrap_or(0) + 1;
        let mut report = RefreshReport {
            version: set.version,
            now,
            events,
            unattributed_events: unattributed,
            persons: set.live.len(),
            tags: coverage,
            behaviour_keys: set.behaviour.len() as u64,
            ..RefreshReport::default()
        };
        let extra = serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?;
        let set = Arc::new(set);
        {
            let (set, root) = (set.clone(), root.clone());
            tokio::task::spawn_blocking(move || set.write(&root, extra))
                .await
                .map_err(|e| Error::Internal(format!("index write task: {e}")))??;
        }
        let keep = self.tag_state_keep();
        IndexSet::prune(&root, keep)?;
        report.index_bytes = dir_bytes(&root, set.version);
        *self.tag_state().latest.write() = Some(set);
        progress(Progress {
            phase: "write",
            done: report.version,
        });
        phase("write", &mut t);
        report.phases = phases;
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(ws = %self.name(), version = report.version, persons = report.persons, events = report.events, tags = report.tags.len(), seconds = report.seconds, "tags refreshed");
        Ok(report)
    }

    fn tag_state_keep(&self) -> usize {
        self.tag_state().cfg.keep_versions.max(1)
    }
}

/// Bytes of every file of `version` under `root`.
fn dir_bytes(root: &std::path::Path, version: u64) -> u64 {
    let tag = format!("v{version:010}.");
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if e.file_name().to_string_lossy().starts_with(&tag)
                && let Ok(m) = e.metadata()
            {
                total += m.len();
            }
        }
    }
    total
}

/// The multi-filter behaviour keys `e` needs (single filters are dimensions).
fn did_combos(e: &Expr, out: &mut Vec<BehaviourKey>) {
    match e {
        Expr::And { args } | Expr::Or { args } => args.iter().for_each(|a| did_combos(a, out)),
        Expr::Not { arg } => did_combos(arg, out),
        Expr::Did(d) if d.filters.len() > 1 => {
            out.push(BehaviourKey::new(&d.event_type, d.filters.clone()))
        }
        _ => {}
    }
}
