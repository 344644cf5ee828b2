//! OneID: the persons behind identifiers, as a batch connected-components job
//! over the workspace's events, under per-workspace [rules](IdentityRules).
//!
//! A run ([`Workspace::resolve`]) reads the `identifiers` of every event
//! (Delta ∪ memtable), builds the graph of values seen together
//! (`graph`), computes persons with a union-find that applies the rules
//! strongest first (`components`), keeps ids stable against the previous run
//! (`assign`), and writes the `identifiers`, `persons` and `identity_history`
//! Delta tables (`tables`). [`Workspace::person`] and [`Workspace::explain`]
//! read them back.

mod assign;
mod components;
mod explain;
pub(crate) mod graph;
pub(crate) mod rules;
pub(crate) mod snapshot;
pub(crate) mod tables;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use explain::{
    Evidence, Explanation, Link, PersonIdentifier, PersonKey, PersonView, SeenEvent,
};
pub use rules::{IdentityRules, KindRule};
pub use tables::{QuarantinedValue, RefusedUnion};

use crate::store::Workspace;
use crate::{Error, Result};

/// The identity tables of a workspace, as SQL names them.
pub const TABLES: [&str; 3] = [tables::IDENTIFIERS, tables::PERSONS, tables::HISTORY];

/// Opens one of [`TABLES`] if a resolve has written it.
pub(crate) async fn open_table(
    ws: &Workspace,
    name: &str,
) -> Result<Option<deltalake_core::DeltaTable>> {
    tables::open(&ws.dir().join(name)).await
}

/// How to run [`Workspace::resolve`].
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// Recompute every person from every event, even when an incremental run could.
    pub full: bool,
    /// Rules to use instead of the workspace's; saved as the workspace's rules
    /// unless `dry_run`.
    pub rules: Option<IdentityRules>,
}

/// Progress of a run, reported as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `read`, `components`, `assign`, `write`.
    pub phase: &'static str,
    /// Units done in this phase (events for `read`).
    pub done: u64,
}

/// What a run found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolveReport {
    /// The run number (the next run's when dry).
    pub run: u64,
    /// Nothing was written.
    pub dry_run: bool,
    /// Only the events since the last run were read, only what they reach recomputed.
    pub incremental: bool,
    /// Events read.
    pub events: u64,
    /// Distinct identifier values.
    pub identifiers: u64,
    /// Values whose person was recomputed (all of them in a full run).
    pub touched_identifiers: u64,
    /// Distinct pairs of values seen together.
    pub edges: u64,
    /// Persons after the run.
    pub persons: u64,
    /// Live persons before it.
    pub previous_persons: u64,
    /// Persons that did not exist before.
    pub new_persons: u64,
    /// Persons retired into a survivor.
    pub merges: u64,
    /// Previous persons whose values now sit in more than one person.
    pub splits: u64,
    /// Previous persons that kept their id and ordinal, not merged or split.
    pub kept: u64,
    /// Quarantined values, most persons first (at most 20 listed).
    pub quarantined: Vec<QuarantinedValue>,
    /// All quarantined values.
    pub quarantined_count: u64,
    /// Unions refused by a cap (at most 20 listed).
    pub refused: Vec<RefusedUnion>,
    /// All refused unions.
    pub refused_count: u64,
    /// Identifier occurrences skipped by the rules' blocklists and patterns.
    pub blocked: u64,
    /// Time per phase: read, components, assign, write.
    pub phases: Vec<(&'static str, Duration)>,
    /// Wall time (of the OneID run; a tag refresh after it is not included).
    pub elapsed: Duration,
    /// The tag index version refreshed after the run (`tags.refresh_after_resolve`).
    pub tags_version: Option<u64>,
}

impl Workspace {
    fn rules_path(&self) -> PathBuf {
        self.dir().join("identity.toml")
    }

    /// The workspace's OneID rules (the defaults until some are saved).
    pub fn identity_rules(&self) -> Result<IdentityRules> {
        let path = self.rules_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => IdentityRules::from_toml(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IdentityRules::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn save_rules(&self, rules: &IdentityRules) -> Result<()> {
        let path = self.rules_path();
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, rules.to_toml()).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Runs OneID. One run at a time per workspace; `progress` is called as
    /// phases advance.
    ///
    /// Everything acknowledged is flushed to Delta first; the run covers the
    /// `events` table up to that version. An incremental run (the default once
    /// a run has left a snapshot, with the same rules) reads only the events
    /// committed since the last run and recomputes only the raw components
    /// (connected through any link, before rules) they reach; all other
    /// persons are carried over as they are. Rules act within raw components,
    /// so the result equals a full run's.
    pub async fn resolve(
        &self,
        opts: ResolveOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<ResolveReport> {
        // Shared with the snapshot's writer, which may outlive a run that
        // fails: the next run waits for it.
        let guard = std::sync::Arc::new(self.identity_lock().await);
        let started = Instant::now();
        let rules = match &opts.rules {
            Some(r) => r.clone(),
            None => self.identity_rules()?,
        };
        let compiled = rules.compile()?;
        let rules_hash = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(rules.to_toml().as_bytes())
        );
        let dir = self.dir().to_path_buf();
        let state = tables::read_state(&dir)?;
        let run = state.run + 1;
        let now = chrono::Utc::now().timestamp_micros();
        let mut phases = Vec::new();

        // Read: the graph of every event up to the Delta version just flushed.
        let t = Instant::now();
        let mut steps = Steps::new();
        self.flush().await?;
        steps.done("flush");
        let (table, _) = self.read_view();
        let version = table.version().unwrap_or(0);
        let mut base = None;
        if !opts.full
            && state.rules_hash == rules_hash
            && state.run > 0
            && let Some(from) = state.events_version
            && let Some(files) = snapshot::added_files(&table, from, version).await?
            && let Some(snap) = snapshot::read(&dir, state.run)?
        {
            base = Some((snap, files));
        }
        steps.done("snapshot read");
        let incremental = base.is_some();
        // The owners the last run gave the snapshot's nodes, when it kept them.
        let mut base_ordinals = None;
        // The snapshot run and node count the graph extends.
        let mut base_nodes = None;
        let mut g = match base {
            Some((snap, files)) => {
                base_ordinals = snap.ordinals;
                let mut g = snap.graph;
                base_nodes = Some((state.run, g.len()));
                let before = g.events;
                g.track = true;
                g.link_in_background();
                snapshot::read_files(&table, &files, &mut g, &compiled).await?;
                g.events -= before;
                steps.done("new events read");
                g
            }
            None => {
                let mut g = graph::Graph::default();
                // A workspace resolved before has about as many values as
                // its last graph (an eighth more for new events): the node
                // arrays and index are sized once instead of doubling
                // through every size, each doubling a copy into memory the
                // process has not touched yet.
                if state.run > 0
                    && let Some((nodes, bytes)) = snapshot::size_hint(&dir, state.run)
                {
                    g.reserve(nodes + nodes / 8, bytes);
                }
                let mut next_report = 0u64;
                let paths = crate::store::datafiles::paths(&table)?;
                g.link_in_background();
                snapshot::read_paths(&table, paths, &compiled, |batch| {
                    g.add_prepared(&batch)?;
                    if g.events >= next_report {
                        progress(Progress {
                            phase: "read",
                            done: g.events,
                        });
                        next_report = g.events + 1_000_000;
                    }
                    Ok(())
                })
                .await?;
                g
            }
        };
        g.seal();
        steps.done("seal");
        progress(Progress {
            phase: "read",
            done: g.events,
        });
        phases.push(("read", t.elapsed()));
        if g.len() > components::MAX_NODES {
            return Err(Error::InvalidArgument {
                field: "identifiers".into(),
                reason: format!(
                    "{} distinct identifiers: OneID resolves at most {} in one workspace",
                    g.len(),
                    components::MAX_NODES
                ),
            });
        }
        // Shared with the snapshot writer below.
        let g = std::sync::Arc::new(g);
        // The snapshot's keys and links need no persons: they are written
        // on a blocking thread while this one works the persons out (a
        // phase that keeps one core busy); the seen times and ordinals
        // follow once the persons are known.
        let graph_written = (!opts.dry_run).then(|| {
            let (dir, g, guard) = (dir.clone(), std::sync::Arc::clone(&g), guard.clone());
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                let t = Instant::now();
                let r = snapshot::write_graph(&dir, run, &g, base_nodes);
                tracing::debug!(
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    "snapshot keys and links written"
                );
                r
            })
        });

        // Components: of the whole graph, or of the raw components new events reach.
        let t = Instant::now();
        let scope_nodes: Option<Vec<u32>> = incremental.then(|| reached(&g));
        steps.done("reached");
        let sub;
        let (work, c) = match &scope_nodes {
            Some(nodes) => {
                sub = g.subgraph(nodes);
                steps.done("subgraph");
                let c = components::components(&sub, &compiled);
                (&sub, c)
            }
            None => {
                let c = components::components(&g, &compiled);
                (&*g, c)
            }
        };
        progress(Progress {
            phase: "components",
            done: u64::from(c.persons),
        });
        phases.push(("components", t.elapsed()));

        // Assign stable ids; carry every person outside the scope over.
        let t = Instant::now();
        steps.done("components");
        let mut prev = tables::read_previous(&dir, &g, base_ordinals.as_deref()).await?;
        drop(base_ordinals);
        steps.done("previous read");
        let previous_persons = prev
            .persons
            .iter()
            .filter(|p| p.merged_into.is_none())
            .count() as u64;
        // The previous owners of the work's nodes, and the previous persons in scope.
        let work_owner: Vec<u32>;
        let owner = match &scope_nodes {
            Some(nodes) => {
                work_owner = nodes.iter().map(|&n| prev.owner[n as usize]).collect();
                &work_owner
            }
            None => &prev.owner,
        };
        let scope: Option<Vec<bool>> = scope_nodes.as_ref().map(|_| {
            let mut s = vec![false; prev.persons.len()];
            for &q in owner.iter().filter(|&&q| q != components::NONE) {
                s[q as usize] = true;
            }
            s
        });
        steps.done("scope");
        let a = assign::assign(work, &c, &prev, owner, now, scope.as_deref());
        let retired = a.all_retired(&prev);
        steps.done("assign");
        let mut persons = a.persons.clone();
        let mut node_person = vec![components::NONE; g.len()];
        let mut carried = 0u64;
        match &scope_nodes {
            Some(nodes) => {
                // Previous person → its index in `persons` when carried over
                // (its id moved, not copied: `prev` is done with after this).
                let mut index = vec![components::NONE; prev.persons.len()];
                for (q, p) in prev.persons.iter_mut().enumerate() {
                    if p.merged_into.is_none() && scope.as_ref().is_some_and(|s| !s[q]) {
                        index[q] = persons.len() as u32;
                        persons.push(assign::Person {
                            person_id: std::mem::take(&mut p.person_id),
                            ordinal: p.ordinal,
                            created_at: p.created_at,
                        });
                        carried += 1;
                    }
                }
                for (slot, &q) in node_person.iter_mut().zip(&prev.owner) {
                    if q != components::NONE {
                        *slot = index[q as usize];
                    }
                }
                for (i, &n) in nodes.iter().enumerate() {
                    node_person[n as usize] = c.person[i];
                }
            }
            None => node_person.clone_from(&c.person),
        }
        drop(prev);
        steps.done("carry over");
        progress(Progress {
            phase: "assign",
            done: persons.len() as u64,
        });
        phases.push(("assign", t.elapsed()));

        // Quarantines and refusals: this run's in scope, the last run's elsewhere.
        let in_scope: Option<hashbrown::HashSet<String>> = scope_nodes.as_ref().map(|_| {
            (0..work.len() as u32)
                .map(|n| format!("{}:{}", work.kind(n), work.value(n)))
                .collect()
        });
        let mut quarantined: Vec<QuarantinedValue> = c
            .quarantined
            .iter()
            .map(|q| QuarantinedValue {
                kind: work.kind(q.node).to_string(),
                value: work.value(q.node).to_string(),
                persons: q.persons,
                limit: q.limit,
            })
            .collect();
        let mut refused: Vec<RefusedUnion> = c
            .refused
            .iter()
            .map(|r| RefusedUnion {
                a: format!("{}:{}", work.kind(r.a), work.value(r.a)),
                b: format!("{}:{}", work.kind(r.b), work.value(r.b)),
                class: r.class.clone(),
                would_hold: r.would_hold,
                cap: r.cap,
            })
            .collect();
        if let Some(in_scope) = &in_scope {
            quarantined.extend(
                state
                    .quarantined
                    .iter()
                    .filter(|q| !in_scope.contains(&format!("{}:{}", q.kind, q.value)))
                    .cloned(),
            );
            refused.extend(
                state
                    .refused
                    .iter()
                    .filter(|r| !in_scope.contains(&r.a))
                    .cloned(),
            );
        }

        // Shared with the table writer's batches.
        let (persons, node_person) = (
            std::sync::Arc::new(persons),
            std::sync::Arc::new(node_person),
        );
        if !opts.dry_run {
            let t = Instant::now();
            let mut history = a.changes.clone();
            history.extend(new_history(&state, &quarantined, &refused));
            // The snapshot (plain Arrow files) is written on a blocking
            // thread while the Delta tables are encoded here: the state file
            // below, which makes both current, waits for both.
            let ordinals: Vec<u32> = node_person
                .iter()
                .map(|&p| match p {
                    components::NONE => components::NONE,
                    p => persons[p as usize].ordinal,
                })
                .collect();
            // The seen times go into the directory the keys and links made,
            // once those are written; the tables do not wait for either.
            let snap = {
                let (dir, g, guard) = (dir.clone(), std::sync::Arc::clone(&g), guard.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Some(part) = graph_written {
                        part.await.map_err(|e| {
                            Error::Internal(format!("identity snapshot writer: {e}"))
                        })??;
                    }
                    tokio::task::spawn_blocking(move || {
                        let t = Instant::now();
                        let r = snapshot::write_seen(&dir, run, &g, &ordinals);
                        tracing::debug!(
                            ms = t.elapsed().as_secs_f64() * 1e3,
                            "snapshot seen written"
                        );
                        r
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("identity snapshot writer: {e}")))?
                })
            };
            let outputs = tables::write_outputs(
                &dir,
                std::sync::Arc::clone(&g),
                std::sync::Arc::clone(&node_person),
                std::sync::Arc::clone(&persons),
                &retired,
                history,
                run,
                now,
            )
            .await;
            snap.await
                .map_err(|e| Error::Internal(format!("identity snapshot writer: {e}")))??;
            steps.done("tables and snapshot written");
            outputs?;
            tables::write_state(
                &dir,
                &tables::State {
                    run,
                    at: now,
                    quarantined: quarantined.clone(),
                    refused: refused.clone(),
                    events_version: Some(version),
                    rules_hash,
                },
            )?;
            snapshot::prune(&dir, run)?;
            if let Some(rules) = &opts.rules {
                self.save_rules(rules)?;
            }
            progress(Progress {
                phase: "write",
                done: persons.len() as u64,
            });
            phases.push(("write", t.elapsed()));
        }

        let mut top = quarantined.clone();
        top.sort_by(|x, y| {
            y.persons
                .cmp(&x.persons)
                .then_with(|| (&x.kind, &x.value).cmp(&(&y.kind, &y.value)))
        });
        top.truncate(20);
        let report = ResolveReport {
            run,
            dry_run: opts.dry_run,
            incremental,
            events: g.events,
            identifiers: g.len() as u64,
            touched_identifiers: work.len() as u64,
            edges: g.links().len() as u64,
            persons: persons.len() as u64,
            previous_persons,
            new_persons: a.new_persons,
            merges: a.merges,
            splits: a.splits,
            kept: a.kept + carried,
            quarantined_count: quarantined.len() as u64,
            quarantined: top,
            refused_count: refused.len() as u64,
            refused: refused.into_iter().take(20).collect(),
            blocked: g.blocked,
            phases,
            elapsed: started.elapsed(),
            tags_version: None,
        };
        let mut report = report;
        drop(guard);
        if !opts.dry_run
            && self.tag_state().refresh_after_resolve()
            && !self.tag_definitions()?.tags.is_empty()
        {
            let r = self.refresh_tags(None, progress).await?;
            report.tags_version = Some(r.version);
        }
        tracing::info!(ws = %self.name(), run, dry_run = opts.dry_run, incremental, events = report.events, touched = report.touched_identifiers, persons = report.persons, merges = report.merges, splits = report.splits, quarantined = report.quarantined_count, refused = report.refused_count, elapsed_ms = report.elapsed.as_millis() as u64, "identity resolved");
        Ok(report)
    }
}

/// Times the steps inside a phase, logged at debug level
/// (`QUIVER_LOG=quiver_engine::identity=debug`).
struct Steps(Instant);

impl Steps {
    fn new() -> Self {
        Steps(Instant::now())
    }

    fn done(&mut self, step: &str) {
        let now = Instant::now();
        tracing::debug!(
            step,
            ms = (now - self.0).as_secs_f64() * 1e3,
            "identity step"
        );
        self.0 = now;
    }
}

/// The nodes of every raw component (connected through any link, before
/// rules) that holds a node new events touched, sorted.
fn reached(g: &graph::Graph) -> Vec<u32> {
    let mut uf = components::UnionFind::new(g.len());
    for &(key, _) in g.links() {
        let (a, b) = graph::edge_ends(key);
        let (ra, rb) = (uf.find(a), uf.find(b));
        if ra != rb {
            uf.link(ra, rb);
        }
    }
    let roots: hashbrown::HashSet<u32> = g.touched.iter().map(|&n| uf.find(n)).collect();
    (0..g.len() as u32)
        .filter(|&n| roots.contains(&uf.find(n)))
        .collect()
}

/// History rows for quarantines and refusals the previous run did not have.
fn new_history(
    state: &tables::State,
    quarantined: &[QuarantinedValue],
    refused: &[RefusedUnion],
) -> Vec<assign::Change> {
    let old_q: hashbrown::HashSet<(&str, &str)> = state
        .quarantined
        .iter()
        .map(|q| (q.kind.as_str(), q.value.as_str()))
        .collect();
    let old_r: hashbrown::HashSet<(&str, &str)> = state
        .refused
        .iter()
        .map(|r| (r.a.as_str(), r.b.as_str()))
        .collect();
    let mut out = Vec::new();
    for q in quarantined
        .iter()
        .filter(|q| !old_q.contains(&(q.kind.as_str(), q.value.as_str())))
    {
        out.push(assign::Change {
            kind: "quarantine",
            person_ids: Vec::new(),
            evidence: serde_json::json!({
                "identifier": format!("{}:{}", q.kind, q.value),
                "persons": q.persons,
                "limit": q.limit,
            })
            .to_string(),
        });
    }
    for r in refused
        .iter()
        .filter(|r| !old_r.contains(&(r.a.as_str(), r.b.as_str())))
    {
        out.push(assign::Change {
            kind: "refused",
            person_ids: Vec::new(),
            evidence: serde_json::to_string(r).unwrap_or_default(),
        });
    }
    out
}
