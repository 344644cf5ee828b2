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
mod graph;
mod rules;
mod tables;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;

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
    /// Recompute every person from every event (the only mode so far; see the README).
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
    /// Events read.
    pub events: u64,
    /// Distinct identifier values.
    pub identifiers: u64,
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
    /// Wall time.
    pub elapsed: Duration,
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

    /// Runs OneID over every event of the workspace. One run at a time per
    /// workspace; `progress` is called as phases advance.
    pub async fn resolve(
        &self,
        opts: ResolveOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<ResolveReport> {
        let _guard = self.identity_lock().lock().await;
        let started = Instant::now();
        let rules = match &opts.rules {
            Some(r) => r.clone(),
            None => self.identity_rules()?,
        };
        let compiled = rules.compile()?;
        let dir = self.dir().to_path_buf();
        let state = tables::read_state(&dir)?;
        let run = state.run + 1;
        let now = chrono::Utc::now().timestamp_micros();
        let mut phases = Vec::new();

        // Read: every event's identifiers.
        let t = Instant::now();
        let mut g = graph::Graph::default();
        let mut stream = self
            .sql("SELECT event_time, identifiers FROM events")
            .await?;
        let mut next_report = 0u64;
        while let Some(batch) = stream.next().await {
            g.add_batch(&batch?, &compiled)?;
            if g.events >= next_report {
                progress(Progress {
                    phase: "read",
                    done: g.events,
                });
                next_report = g.events + 1_000_000;
            }
        }
        progress(Progress {
            phase: "read",
            done: g.events,
        });
        phases.push(("read", t.elapsed()));

        let t = Instant::now();
        let c = components::components(&g, &compiled);
        progress(Progress {
            phase: "components",
            done: u64::from(c.persons),
        });
        phases.push(("components", t.elapsed()));

        let t = Instant::now();
        let prev = tables::read_previous(&dir).await?;
        let previous_persons = prev
            .persons
            .iter()
            .filter(|p| p.merged_into.is_none())
            .count() as u64;
        let a = assign::assign(&g, &c, &prev, now);
        drop(prev);
        progress(Progress {
            phase: "assign",
            done: a.persons.len() as u64,
        });
        phases.push(("assign", t.elapsed()));

        let quarantined: Vec<QuarantinedValue> = c
            .quarantined
            .iter()
            .map(|q| QuarantinedValue {
                kind: g.kind(q.node).to_string(),
                value: g.value(q.node).to_string(),
                persons: q.persons,
                limit: q.limit,
            })
            .collect();
        let refused: Vec<RefusedUnion> = c
            .refused
            .iter()
            .map(|r| RefusedUnion {
                a: format!("{}:{}", g.kind(r.a), g.value(r.a)),
                b: format!("{}:{}", g.kind(r.b), g.value(r.b)),
                class: r.class.clone(),
                would_hold: r.would_hold,
                cap: r.cap,
            })
            .collect();

        if !opts.dry_run {
            let t = Instant::now();
            let mut history = a.changes.clone();
            history.extend(new_history(&state, &quarantined, &refused));
            tables::write_outputs(&dir, &g, &c, &a, history, run, now).await?;
            tables::write_state(
                &dir,
                &tables::State {
                    run,
                    at: now,
                    quarantined: quarantined.clone(),
                    refused: refused.clone(),
                },
            )?;
            if let Some(rules) = &opts.rules {
                self.save_rules(rules)?;
            }
            progress(Progress {
                phase: "write",
                done: a.persons.len() as u64,
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
            events: g.events,
            identifiers: g.len() as u64,
            edges: g.edges.len() as u64,
            persons: u64::from(c.persons),
            previous_persons,
            new_persons: a.new_persons,
            merges: a.merges,
            splits: a.splits,
            kept: a.kept,
            quarantined_count: quarantined.len() as u64,
            quarantined: top,
            refused_count: refused.len() as u64,
            refused: refused.into_iter().take(20).collect(),
            blocked: g.blocked,
            phases,
            elapsed: started.elapsed(),
        };
        tracing::info!(ws = %self.name(), run, dry_run = opts.dry_run, persons = report.persons, merges = report.merges, splits = report.splits, quarantined = report.quarantined_count, refused = report.refused_count, elapsed_ms = report.elapsed.as_millis() as u64, "identity resolved");
        Ok(report)
    }
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
