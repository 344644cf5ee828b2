//! Reading persons back: the 360 view of one person ([`Workspace::person`])
//! and why two identifiers are, or are not, one person ([`Workspace::explain`]).
//!
//! Both look the person up in the `identifiers` and `persons` tables, then
//! scan the events that carry the person's values for the evidence (the
//! latest events; the links and the events behind each). Explain answers
//! "not one person" from the last run's quarantined values and refused unions.

use std::collections::VecDeque;

use arrow::array::{Array, AsArray, GenericListArray, RecordBatch, StructArray};
use arrow::datatypes::TimestampMicrosecondType;
use datafusion::prelude::{SessionContext, col, lit};
use futures::StreamExt;
use hashbrown::{HashMap, HashSet};

use super::graph::Strings;
use super::tables::{self, IDENTIFIERS, PERSONS, strings};
use crate::event::Normalized;
use crate::store::{Workspace, table_provider};
use crate::{Error, Result};

/// An event as shown with a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// Its id.
    pub event_id: String,
    /// When it happened, µs since the epoch.
    pub event_time: i64,
    /// Channel.
    pub channel: String,
    /// Event type.
    pub event_type: String,
    /// Its identifiers, `kind:value`.
    pub identifiers: Vec<String>,
}

/// One identifier of a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonIdentifier {
    /// Kind.
    pub kind: String,
    /// Normalised value.
    pub value: String,
    /// First and last event time, µs.
    pub first_seen: i64,
    /// Last event time, µs.
    pub last_seen: i64,
}

/// A person as [`Workspace::person`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonView {
    /// Stable id.
    pub person_id: String,
    /// Bit position in every bitmap.
    pub ordinal: u32,
    /// When the person was first found, µs.
    pub created_at: i64,
    /// The retired id that was asked for, when it redirected here.
    pub redirected_from: Option<String>,
    /// Its identifiers, by kind then value.
    pub identifiers: Vec<PersonIdentifier>,
    /// Earliest event time, µs.
    pub first_seen: i64,
    /// Latest event time, µs.
    pub last_seen: i64,
    /// The latest events, newest first.
    pub latest_events: Vec<SeenEvent>,
    /// Attributes (latest value each), as of the latest tag refresh.
    pub attributes: Vec<(String, String)>,
    /// Computed traits, as of the latest tag refresh.
    pub traits: Vec<(String, String)>,
    /// Tags at the latest index version (see [`Workspace::person_tags`]).
    pub tags: Vec<(String, String)>,
    /// That version (0: never refreshed).
    pub tags_version: u64,
}

/// An event behind a link.
pub type Evidence = SeenEvent;

/// One link of a chain: two values seen together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `kind:value`.
    pub from: String,
    /// `kind:value`.
    pub to: String,
    /// How many events carried both.
    pub events: u64,
    /// The earliest of them (at most three).
    pub evidence: Vec<Evidence>,
    /// Why this link did not merge, when it did not.
    pub blocked: Option<String>,
}

/// The answer of [`Workspace::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Whether both values are in one person.
    pub same_person: bool,
    /// The person of the first value, if any.
    pub person_a: Option<String>,
    /// The person of the second value, if any.
    pub person_b: Option<String>,
    /// The shortest chain of links from the first value to the second, if any.
    pub chain: Vec<Link>,
    /// One sentence.
    pub reason: String,
}

/// What a person lookup may start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonKey {
    /// An identifier, `kind` and raw value (normalised here).
    Identifier(String, String),
    /// A person id (a retired one redirects).
    PersonId(String),
}

const LATEST: usize = 10;

impl Workspace {
    fn normalize_key(&self, kind: &str, value: &str) -> Result<(String, String)> {
        match self.normalizer().normalize(kind, value) {
            Ok(Normalized::Value(k, v)) => Ok((k.into_owned(), v)),
            Ok(Normalized::Dropped(why)) => Err(Error::invalid(
                "identifier",
                format!("`{kind}:{value}` is never used for identity ({why})"),
            )),
            Err(why) => Err(Error::invalid(
                "identifier",
                format!("`{kind}:{value}`: {why}"),
            )),
        }
    }

    async fn identity_table(&self, name: &str) -> Result<datafusion::dataframe::DataFrame> {
        let Some(table) = tables::open(&self.dir().join(name)).await? else {
            return Err(Error::NotFound {
                what: "identity table (run `quiver resolve` first)",
                name: name.to_string(),
            });
        };
        let ctx = SessionContext::new_with_config(crate::store::session_config());
        Ok(ctx.read_table(table_provider(&table).await?)?)
    }

    /// The person of a normalised value, if it is in one.
    async fn person_of(&self, kind: &str, value: &str) -> Result<Option<String>> {
        let df = self
            .identity_table(IDENTIFIERS)
            .await?
            .filter(col("kind").eq(lit(kind)).and(col("value").eq(lit(value))))?
            .select_columns(&["person_id"])?;
        for batch in df.collect().await? {
            if let Some(Some(id)) = strings(batch.column(0))?.into_iter().next() {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// `(ordinal, created_at, merged_into)` of a person id.
    async fn person_row(&self, id: &str) -> Result<Option<(u32, i64, Option<String>)>> {
        let df = self
            .identity_table(PERSONS)
            .await?
            .filter(col("person_id").eq(lit(id)))?
            .select_columns(&["ordinal", "created_at", "merged_into"])?;
        for batch in df.collect().await? {
            if batch.num_rows() == 0 {
                continue;
            }
            let ord = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int64)?;
            let ord = ord.as_primitive::<arrow::datatypes::Int64Type>().value(0);
            let at = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Int64)?;
            let at = at.as_primitive::<arrow::datatypes::Int64Type>().value(0);
            let merged = strings(batch.column(2))?.into_iter().next().flatten();
            return Ok(Some((ord as u32, at, merged)));
        }
        Ok(None)
    }

    async fn identifiers_of(&self, id: &str) -> Result<Vec<PersonIdentifier>> {
        let df = self
            .identity_table(IDENTIFIERS)
            .await?
            .filter(col("person_id").eq(lit(id)))?
            .select_columns(&["kind", "value", "first_seen", "last_seen"])?;
        let mut out = Vec::new();
        for batch in df.collect().await? {
            let kinds = strings(batch.column(0))?;
            let values = strings(batch.column(1))?;
            let first = arrow::compute::cast(batch.column(2), &arrow::datatypes::DataType::Int64)?;
            let last = arrow::compute::cast(batch.column(3), &arrow::datatypes::DataType::Int64)?;
            let first = first.as_primitive::<arrow::datatypes::Int64Type>();
            let last = last.as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..batch.num_rows() {
                out.push(PersonIdentifier {
                    kind: kinds[i].clone().unwrap_or_default(),
                    value: values[i].clone().unwrap_or_default(),
                    first_seen: first.value(i),
                    last_seen: last.value(i),
                });
            }
        }
        out.sort_by(|a, b| (&a.kind, &a.value).cmp(&(&b.kind, &b.value)));
        Ok(out)
    }

    /// Every event carrying one of `wanted` (`kind:value`).
    async fn events_with(&self, wanted: &HashSet<String>) -> Result<Vec<SeenEvent>> {
        let mut stream = self
            .sql("SELECT event_id, event_time, channel, event_type, identifiers FROM events")
            .await?;
        let mut out = Vec::new();
        let mut key = String::new();
        while let Some(batch) = stream.next().await {
            collect_matching(&batch?, wanted, &mut key, &mut out)?;
        }
        Ok(out)
    }

    /// The person behind an identifier or a person id: its identifiers, first
    /// and last seen, and its latest events.
    pub async fn person(&self, key: &PersonKey) -> Result<PersonView> {
        let (mut id, asked) = match key {
            PersonKey::Identifier(kind, value) => {
                let (k, v) = self.normalize_key(kind, value)?;
                let id = self
                    .person_of(&k, &v)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        what: "person with identifier",
                        name: format!("{k}:{v}"),
                    })?;
                (id, None)
            }
            PersonKey::PersonId(id) => (id.clone(), Some(id.clone())),
        };
        let mut hops = 0;
        let (ordinal, created_at) = loop {
            let Some((ord, at, merged)) = self.person_row(&id).await? else {
                return Err(Error::NotFound {
                    what: "person",
                    name: id,
                });
            };
            match merged {
                None => break (ord, at),
                Some(next) if !next.is_empty() && hops < 64 => {
                    id = next;
                    hops += 1;
                }
                Some(_) => {
                    return Err(Error::NotFound {
                        what: "person (retired: its identifiers left it)",
                        name: id,
                    });
                }
            }
        };
        let identifiers = self.identifiers_of(&id).await?;
        let wanted: HashSet<String> = identifiers
            .iter()
            .map(|i| format!("{}:{}", i.kind, i.value))
            .collect();
        let mut events = self.events_with(&wanted).await?;
        events.sort_by(|a, b| {
            b.event_time
                .cmp(&a.event_time)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        events.truncate(LATEST);
        let profile = self.person_profile(ordinal)?;
        Ok(PersonView {
            attributes: profile.attributes,
            traits: profile.traits,
            tags: profile.tags,
            tags_version: profile.version,
            redirected_from: asked.filter(|a| *a != id),
            person_id: id,
            ordinal,
            created_at,
            first_seen: identifiers.iter().map(|i| i.first_seen).min().unwrap_or(0),
            last_seen: identifiers.iter().map(|i| i.last_seen).max().unwrap_or(0),
            identifiers,
            latest_events: events,
        })
    }

    /// Why `a` and `b` (`(kind, raw value)`) are one person — the chain of
    /// links and the events behind each — or why they are not.
    pub async fn explain(&self, a: (&str, &str), b: (&str, &str)) -> Result<Explanation> {
        let (ka, va) = self.normalize_key(a.0, a.1)?;
        let (kb, vb) = self.normalize_key(b.0, b.1)?;
        let (na, nb) = (format!("{ka}:{va}"), format!("{kb}:{vb}"));
        let pa = self.person_of(&ka, &va).await?;
        let pb = self.person_of(&kb, &vb).await?;
        let state = tables::read_state(self.dir())?;
        let quarantined: HashMap<String, (u32, u32)> = state
            .quarantined
            .iter()
            .map(|q| (format!("{}:{}", q.kind, q.value), (q.persons, q.limit)))
            .collect();
        let refused: HashMap<(String, String), String> = state
            .refused
            .iter()
            .flat_map(|r| {
                let why = format!(
                    "union refused: the person would hold {} values of `{}` (cap {})",
                    r.would_hold, r.class, r.cap
                );
                [
                    ((r.a.clone(), r.b.clone()), why.clone()),
                    ((r.b.clone(), r.a.clone()), why),
                ]
            })
            .collect();
        for (n, p) in [(&na, &pa), (&nb, &pb)] {
            if p.is_none() && !quarantined.contains_key(n.as_str()) {
                return Err(Error::NotFound {
                    what: "identifier (never seen, or not resolved yet)",
                    name: n.clone(),
                });
            }
        }
        let same = pa.is_some() && pa == pb;
        // The events of both persons; the chain may also pass through
        // quarantined values when they are not one person.
        let mut wanted: HashSet<String> = HashSet::from([na.clone(), nb.clone()]);
        let persons: Vec<&String> = if same {
            pa.iter().collect()
        } else {
            [&pa, &pb].into_iter().flatten().collect()
        };
        for p in persons {
            for i in self.identifiers_of(p).await? {
                wanted.insert(format!("{}:{}", i.kind, i.value));
            }
        }
        let mut allowed = wanted.clone();
        if !same {
            allowed.extend(quarantined.keys().cloned());
        }
        let events = self.events_with(&wanted).await?;
        let chain = shortest_chain(&events, &allowed, &na, &nb, &quarantined, &refused);
        let reason = if same {
            format!(
                "one person ({}): {} link(s) join them",
                pa.clone().unwrap_or_default(),
                chain.len()
            )
        } else if chain.is_empty() {
            "not one person: no chain of events links them".to_string()
        } else {
            let blocks: Vec<String> = chain.iter().filter_map(|l| l.blocked.clone()).collect();
            if blocks.is_empty() {
                "not one person: linked only through values that may not merge".to_string()
            } else {
                format!("not one person: {}", blocks.join("; "))
            }
        };
        Ok(Explanation {
            same_person: same,
            person_a: pa,
            person_b: pb,
            chain,
            reason,
        })
    }
}

/// Appends the events of `batch` that carry a value in `wanted`.
fn collect_matching(
    batch: &RecordBatch,
    wanted: &HashSet<String>,
    key: &mut String,
    out: &mut Vec<SeenEvent>,
) -> Result<()> {
    let ids = Strings::of(batch.column(0).as_ref(), "event_id")?;
    let times = batch
        .column(1)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| Error::Internal("event_time is not µs".into()))?;
    let channels = Strings::of(batch.column(2).as_ref(), "channel")?;
    let types = Strings::of(batch.column(3).as_ref(), "event_type")?;
    let list: &GenericListArray<i32> = batch
        .column(4)
        .as_list_opt()
        .ok_or_else(|| Error::Internal("identifiers is not a list".into()))?;
    let entries: &StructArray = list.values().as_struct();
    let kinds = Strings::of(entries.column(0).as_ref(), "identifiers.kind")?;
    let values = Strings::of(entries.column(1).as_ref(), "identifiers.value")?;
    let offsets = list.value_offsets();
    for row in 0..batch.num_rows() {
        if list.is_null(row) {
            continue;
        }
        let range = offsets[row] as usize..offsets[row + 1] as usize;
        let mut hit = false;
        for j in range.clone() {
            key.clear();
            key.push_str(kinds.get(j).unwrap_or(""));
            key.push(':');
            key.push_str(values.get(j).unwrap_or(""));
            if wanted.contains(key.as_str()) {
                hit = true;
                break;
            }
        }
        if !hit {
            continue;
        }
        out.push(SeenEvent {
            event_id: ids.get(row).unwrap_or("").to_string(),
            event_time: times.value(row),
            channel: channels.get(row).unwrap_or("").to_string(),
            event_type: types.get(row).unwrap_or("").to_string(),
            identifiers: range
                .map(|j| {
                    format!(
                        "{}:{}",
                        kinds.get(j).unwrap_or(""),
                        values.get(j).unwrap_or("")
                    )
                })
                .collect(),
        });
    }
    Ok(())
}

/// The shortest chain of co-occurrence links from `a` to `b` through `allowed`
/// values, each with its evidence and, for links that did not merge, why.
fn shortest_chain(
    events: &[SeenEvent],
    allowed: &HashSet<String>,
    a: &str,
    b: &str,
    quarantined: &HashMap<String, (u32, u32)>,
    refused: &HashMap<(String, String), String>,
) -> Vec<Link> {
    // Adjacency with the events behind each pair (indexes into `events`), oldest first.
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&x, &y| {
        events[x]
            .event_time
            .cmp(&events[y].event_time)
            .then_with(|| events[x].event_id.cmp(&events[y].event_id))
    });
    let mut adj: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut behind: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for &i in &order {
        let ids: Vec<&str> = events[i]
            .identifiers
            .iter()
            .map(String::as_str)
            .filter(|v| allowed.contains(*v))
            .collect();
        for (x, &u) in ids.iter().enumerate() {
            for &v in &ids[x + 1..] {
                if u == v {
                    continue;
                }
                let (lo, hi) = if u < v { (u, v) } else { (v, u) };
                let list = behind.entry((lo, hi)).or_default();
                if list.is_empty() {
                    adj.entry(u).or_default().push(v);
                    adj.entry(v).or_default().push(u);
                }
                list.push(i);
            }
        }
    }
    for list in adj.values_mut() {
        list.sort_unstable();
    }
    // BFS from a.
    let mut prev: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([a]);
    prev.insert(a, a);
    while let Some(u) = queue.pop_front() {
        if u == b {
            break;
        }
        for &v in adj.get(u).map(Vec::as_slice).unwrap_or(&[]) {
            if !prev.contains_key(v) {
                prev.insert(v, u);
                queue.push_back(v);
            }
        }
    }
    if !prev.contains_key(b) || a == b {
        return Vec::new();
    }
    let mut path = vec![b];
    let mut at = b;
    while at != a {
        at = prev[at];
        path.push(at);
    }
    path.reverse();
    path.windows(2)
        .map(|w| {
            let (u, v) = (w[0], w[1]);
            let (lo, hi) = if u < v { (u, v) } else { (v, u) };
            let list = behind.get(&(lo, hi)).map(Vec::as_slice).unwrap_or(&[]);
            let blocked = [u, v]
                .iter()
                .find_map(|x| {
                    quarantined.get(*x).map(|(persons, limit)| {
                        format!(
                            "`{x}` is quarantined: it would join {persons} persons (limit {limit})"
                        )
                    })
                })
                .or_else(|| refused.get(&(u.to_string(), v.to_string())).cloned());
            Link {
                from: u.to_string(),
                to: v.to_string(),
                events: list.len() as u64,
                evidence: list.iter().take(3).map(|&i| events[i].clone()).collect(),
                blocked,
            }
        })
        .collect()
}
