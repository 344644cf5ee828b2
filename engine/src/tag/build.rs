//! The refresh: profiles, traits, behaviour counts and every tag, as one new
//! index version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::def::{STANDARD_EVENT_TYPES, TagKind};
use crate::identity::IdentityRules;
use crate::identity::Progress;
use crate::identity::snapshot;
use crate::identity::tables::{self, HISTORY, State as IdentityState};
use crate::index::{BehaviourKey, DailyCounts, DayLists, IndexSet, NumericIndex};
use crate::profile::state::StateMeta;
use crate::profile::{self, BehaviourPlan, PersonMap, Scan};
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
    /// Events the index covers (every event OneID resolved).
    pub events: u64,
    /// Events this refresh read: those committed since the last refresh when
    /// incremental, else all of them.
    pub events_read: u64,
    /// Whether it started from the last refresh's state.
    pub incremental: bool,
    /// Why it read every event instead (empty when incremental).
    pub full_reason: String,
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
    /// Seconds per phase: persons (OneID's owners of each value), scan,
    /// traits, behaviour, profiles (the rest of writing the profile tables,
    /// begun with the traits), tags, write.
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

/// Where an incremental refresh starts: the last refresh's accumulators and
/// behaviour counts with OneID's merges since folded in, and the data files
/// committed since.
struct Base {
    scan: Scan,
    behaviour: BTreeMap<BehaviourKey, DailyCounts>,
    files: Vec<String>,
}

/// Hash of the quarantined values of a OneID run (a change in them can move
/// old events to other persons).
fn quarantine_hash(state: &IdentityState) -> String {
    let mut values: Vec<String> = state
        .quarantined
        .iter()
        .map(|q| format!("{}:{}", q.kind, q.value))
        .collect();
    values.sort();
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(values.join("\n").as_bytes())
    )
}

impl Workspace {
    /// Brings profiles, traits, behaviour counts and every defined tag up to
    /// date as a new index version, with windows relative to `now` (µs;
    /// default: the current time). Covers the events OneID has resolved (the
    /// `events` table at the last resolve's version), attributed through its
    /// `identifiers` table. Incremental when it can be (see
    /// [`Workspace::refresh_tags_with`]). Needs a resolve first.
    pub async fn refresh_tags(
        &self,
        now: Option<i64>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<RefreshReport> {
        self.refresh_tags_with(now, false, progress).await
    }

    /// [`Workspace::refresh_tags`], reading every event when `full`.
    ///
    /// Otherwise a refresh starts from the accumulators the last one kept
    /// (`index/refresh.state`): it folds the persons OneID merged since into
    /// their survivors (counts and sums add, first/last take min/max,
    /// attributes the latest) and reads only the data files committed since,
    /// then recomputes what needs the whole population (RFM quintiles) and
    /// every index from the accumulators. It reads every event instead when
    /// there is no usable state, the behaviour keys or the OneID rules
    /// changed, or OneID split persons or changed its quarantined values
    /// since: those move old events between persons. The report says which
    /// and why; both give the same index.
    pub async fn refresh_tags_with(
        &self,
        now: Option<i64>,
        full: bool,
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
        let mut phases: Vec<(String, f64)> = Vec::new();
        let mut phase = |name: &str, t: &mut Instant| {
            phases.push((name.to_string(), t.elapsed().as_secs_f64()));
            *t = Instant::now();
        };
        let mut t = Instant::now();
        // Persons: who owns each value after OneID's last run.
        let (identity, persons) = self.resolved_persons(&rules).await?;
        // Shared with the scan's reading threads and the trait tasks.
        let persons = Arc::new(persons);
        let events_version = identity.events_version.unwrap_or(0);
        phase("persons", &mut t);

        // Scan: the events since the last refresh, or every event OneID covered.
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
        let (mut table, _) = self.read_view();
        let base = if full {
            Err("a full refresh was asked for".to_string())
        } else {
            self.incremental_base(&identity, &persons, &plan, &table)
                .await?
        };
        let (mut scan, previous, full_reason, events_read) = match base {
            Ok(b) => {
                let mut s = b.scan;
                let before = s.read;
                profile::scan_files(&table, &b.files, &persons, &plan, &mut s).await?;
                let read = s.read - before;
                (s, Some(b.behaviour), None, read)
            }
            Err(reason) => {
                // The version OneID covered, or a later one when only
                // compaction came after it: the same rows in fewer files.
                let latest = table.version().unwrap_or(0);
                let at = if latest > events_version {
                    snapshot::same_rows_until(&table, events_version, latest).await?
                } else {
                    events_version
                };
                if table.version() != Some(at) {
                    table.load_version(at).await?;
                }
                let s = profile::scan(&table, &persons, &plan).await?;
                let read = s.read;
                (s, None, Some(reason), read)
            }
        };
        progress(Progress {
            phase: "scan",
            done: events_read,
        });
        phase("scan", &mut t);

        // Behaviour counts build while the traits are derived and the
        // profile tables written: each of those keeps at most one core busy.
        let lists = std::mem::take(&mut scan.behaviour);
        let behaviour_task = tokio::task::spawn_blocking(move || {
            build_behaviour(previous.unwrap_or_default(), lists)
        });

        // Traits and profile tables.
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
                    .map(|(name, scale, bsi)| (name.to_string(), NumericIndex { scale, bsi }))
                    .collect();
                (numbers, d.enumerated(&s, &p.live))
            })
            .await
            .map_err(|e| Error::Internal(format!("trait task: {e}")))?
        };
        set.numbers = numbers;
        set.enums = enums;
        // The profile tables are written while the behaviour counts build
        // and the index is written.
        let mut tables_task = {
            let (dir, p, s, d) = (
                self.dir().to_path_buf(),
                persons.clone(),
                scan.clone(),
                derived.clone(),
            );
            crate::AbortOnDrop(tokio::spawn(async move {
                profile::write_tables(&dir, p, s, d).await
            }))
        };
        progress(Progress {
            phase: "traits",
            done: set.live.len(),
        });
        phase("traits", &mut t);

        // Behaviour: per-day counts per key, new or added to the last ones.
        let behaviour = behaviour_task
            .await
            .map_err(|e| Error::Internal(format!("behaviour task: {e}")))??;
        set.behaviour = behaviour;
        // A key rules ask for exists even when nobody did it.
        for combo in &plan.combos {
            set.behaviour.entry(combo.clone()).or_default();
        }
        progress(Progress {
            phase: "behaviour",
            done: set.behaviour.len() as u64,
        });
        phase("behaviour", &mut t);
        let events = scan.read;
        let unattributed = scan.unattributed;
        drop(derived);

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
            incremental: full_reason.is_none(),
            full_reason: full_reason.unwrap_or_default(),
            events_read,
            ..RefreshReport::default()
        };
        let extra = serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?;
        let set = Arc::new(set);
        // The accumulators for the next refresh are written beside the index
        // files. They are a cache: a missing, torn or stale state only makes
        // the next refresh read every event, so it is not fsynced and a
        // failure to write it does not fail the refresh.
        let state_task = {
            let meta = StateMeta {
                index_version: set.version,
                events_version,
                identity_run: identity.run,
                rules_hash: identity.rules_hash.clone(),
                quarantine_hash: quarantine_hash(&identity),
                dimensions: plan.dimensions.clone(),
                combos: plan.combos.clone(),
            };
            let root = root.clone();
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let r = profile::state::write(&root, &meta, &scan);
                tracing::debug!(
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    "refresh state written"
                );
                r
            })
        };
        {
            let (set, root) = (set.clone(), root.clone());
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let m = set.write(&root, extra)?;
                tracing::debug!(
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    behaviour_files = m.behaviour.len(),
                    "index files written"
                );
                Ok::<_, Error>(())
            })
            .await
            .map_err(|e| Error::Internal(format!("index write task: {e}")))??;
        }
        let keep = self.tag_state_keep();
        let t_prune = Instant::now();
        IndexSet::prune(&root, keep)?;
        tracing::debug!(
            ms = t_prune.elapsed().as_secs_f64() * 1e3,
            "old index versions pruned"
        );
        match state_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(ws = %self.name(), error = %e, "refresh state not written; the next refresh reads every event")
            }
            Err(e) => {
                tracing::warn!(ws = %self.name(), error = %e, "refresh state task failed; the next refresh reads every event")
            }
        }
        report.index_bytes = dir_bytes(&root, set.version);
        *self.tag_state().latest.write() = Some(set);
        progress(Progress {
            phase: "write",
            done: report.version,
        });
        phase("write", &mut t);
        // What is left of writing the profile tables (they started with the
        // traits). The index version stands on its own: it is durable and
        // loaded whether or not they fail.
        (&mut tables_task.0)
            .await
            .map_err(|e| Error::Internal(format!("profile table task: {e}")))??;
        phase("profiles", &mut t);
        report.phases = phases;
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(ws = %self.name(), version = report.version, persons = report.persons, events = report.events, tags = report.tags.len(), seconds = report.seconds, "tags refreshed");
        Ok(report)
    }

    /// The OneID state and the persons it left, read consistently (a run
    /// finishing in between is read again).
    async fn resolved_persons(&self, rules: &IdentityRules) -> Result<(IdentityState, PersonMap)> {
        let dir = self.dir();
        for _ in 0..3 {
            let before = tables::read_state(dir)?;
            let persons = PersonMap::load(self, rules, before.run).await?;
            let after = tables::read_state(dir)?;
            if before.run != after.run {
                continue;
            }
            let (Some(persons), Some(_)) = (persons, after.events_version) else {
                return Err(Error::invalid(
                    "workspace",
                    format!(
                        "`{}` has no persons yet: run `quiver resolve` before refreshing tags",
                        self.name()
                    ),
                ));
            };
            return Ok((after, persons));
        }
        Err(Error::Internal(
            "OneID runs kept finishing while the refresh read its persons".into(),
        ))
    }

    /// The last refresh's state with OneID's changes since applied, or why
    /// every event has to be read instead.
    async fn incremental_base(
        &self,
        identity: &IdentityState,
        persons: &PersonMap,
        plan: &BehaviourPlan,
        table: &deltalake_core::DeltaTable,
    ) -> Result<std::result::Result<Base, String>> {
        let root = self.index_dir();
        let (meta, mut scan) = match profile::state::read(&root) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(Err("no earlier refresh left its state".into())),
            Err(e) => {
                tracing::warn!(ws = %self.name(), error = %e, "unreadable refresh state; reading every event");
                return Ok(Err(format!(
                    "the earlier refresh's state is unreadable: {e}"
                )));
            }
        };
        let latest = IndexSet::versions(&root)?.last().copied();
        if latest != Some(meta.index_version) {
            return Ok(Err(format!(
                "the refresh state is of index version {}, the latest is {latest:?}",
                meta.index_version
            )));
        }
        if meta.dimensions != plan.dimensions || meta.combos != plan.combos {
            return Ok(Err("the behaviour keys the tags need changed".into()));
        }
        if meta.rules_hash != identity.rules_hash {
            return Ok(Err("the OneID rules changed".into()));
        }
        if meta.quarantine_hash != quarantine_hash(identity) {
            return Ok(Err("OneID's quarantined values changed".into()));
        }
        let to = identity.events_version.unwrap_or(0);
        if identity.run < meta.identity_run || to < meta.events_version {
            return Ok(Err("OneID's state is older than the last refresh's".into()));
        }
        if identity.run > meta.identity_run {
            for batch in tables::scan(&self.dir().join(HISTORY), &["run", "kind"]).await? {
                let runs = tables::ints(batch.column(0))?;
                let kinds = tables::strings(batch.column(1))?;
                for (run, kind) in runs.iter().zip(kinds) {
                    if *run as u64 > meta.identity_run && kind.as_deref() == Some("split") {
                        return Ok(Err(format!("OneID run {run} split persons")));
                    }
                }
            }
        }
        let Some(files) = snapshot::added_files(table, meta.events_version, to).await? else {
            return Ok(Err("the Delta log since the last refresh is gone".into()));
        };
        let previous = match self.tag_index()? {
            Some(set) if set.version == meta.index_version => set,
            _ => return Ok(Err("the last index version is gone".into())),
        };
        // Persons live then and retired since: fold each into its survivor.
        let retired = &previous.live - &persons.live;
        let mut survivors = Vec::with_capacity(retired.len() as usize);
        for o in &retired {
            match persons.survivor(o) {
                Some(s) => survivors.push((o, s)),
                None => {
                    return Ok(Err(format!(
                        "person ordinal {o} was retired without a survivor"
                    )));
                }
            }
        }
        for &(o, s) in &survivors {
            scan.fold(o, s);
        }
        let survivor: hashbrown::HashMap<u32, u32> = survivors.into_iter().collect();
        let to_survivor = |o: u32| survivor.get(&o).copied().unwrap_or(o);
        let behaviour = if retired.is_empty() {
            previous.behaviour.clone()
        } else {
            previous
                .behaviour
                .iter()
                .map(|(k, c)| Ok((k.clone(), c.moved(&retired, to_survivor)?)))
                .collect::<Result<_>>()?
        };
        Ok(Ok(Base {
            scan,
            behaviour,
            files,
        }))
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

/// Each key's counts: built from the scan's lists, or added to `previous`
/// (an incremental refresh); keys of `previous` the scan did not see stay.
/// Keys are spread over the cores, largest first, and each key's lists are
/// dropped as soon as its counts exist.
fn build_behaviour(
    mut previous: BTreeMap<BehaviourKey, DailyCounts>,
    mut lists: Vec<(BehaviourKey, DayLists)>,
) -> Result<BTreeMap<BehaviourKey, DailyCounts>> {
    lists.sort_by_cached_key(|(_, l)| std::cmp::Reverse(l.len()));
    let work: Vec<(BehaviourKey, DayLists, Option<DailyCounts>)> = lists
        .into_iter()
        .map(|(key, l)| {
            let old = previous.remove(&key);
            (key, l, old)
        })
        .collect();
    let queue = std::sync::Mutex::new(work.into_iter());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let built = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let next = queue.lock().map_err(|_| poisoned())?.next();
                        let Some((key, l, old)) = next else {
                            return Ok::<_, Error>(out);
                        };
                        let counts = match old {
                            Some(c) => c.add_days(&l)?,
                            None => DailyCounts::from_days(&l),
                        };
                        drop(l);
                        out.push((key, counts));
                    }
                })
            })
            .collect();
        // join every worker before looking at any result: a scope whose
        // panicked thread was not joined panics itself
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        joined
            .into_iter()
            .map(|j| j.map_err(|_| poisoned())?)
            .collect::<Result<Vec<_>>>()
    })?;
    previous.extend(built.into_iter().flatten());
    Ok(previous)
}

fn poisoned() -> Error {
    Error::Internal("a behaviour worker panicked".into())
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
