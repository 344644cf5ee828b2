//! The one pass over `events` that profiles and behaviour counts come from.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Decimal128Array, MapArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use roaring::RoaringBitmap;

use crate::identity::IdentityRules;
use crate::identity::graph::{KeyMap, Strings, key128};
use crate::identity::snapshot;
use crate::identity::tables::{self, IDENTIFIERS, PERSONS};
pub use crate::index::BehaviourKey;
use crate::index::DayLists;
use crate::store::Workspace;
use crate::store::datafiles::{self, Columns};

const DAY_US: i64 = 86_400_000_000;
use crate::{Error, Result};

/// Which person each identifier value belongs to, after the last OneID run.
#[derive(Debug, Default)]
pub(crate) struct PersonMap {
    /// `key128(kind, value)` → ordinal of the live owner.
    owner: KeyMap<u32>,
    /// Each configured kind's priority; other kinds have `default_priority`.
    priorities: hashbrown::HashMap<String, u8>,
    default_priority: u8,
    /// `person_id` by ordinal (`None`: retired or never used).
    pub person_ids: Vec<Option<String>>,
    /// Live persons.
    pub live: RoaringBitmap,
    /// Retired ordinals and the ordinal each was merged into (absent: retired
    /// without a survivor).
    pub merged_into: hashbrown::HashMap<u32, u32>,
}

impl PersonMap {
    /// An empty map that ranks identifier kinds by `rules`' priorities.
    fn with_rules(rules: &IdentityRules) -> Self {
        PersonMap {
            priorities: (rules.kinds.iter())
                .map(|(k, r)| (k.clone(), r.priority))
                .collect(),
            default_priority: rules.default_kind.priority,
            ..PersonMap::default()
        }
    }

    /// Loads the `persons` table and who owns each value after OneID's run
    /// `run`: from that run's graph snapshot (keys and ordinals, no value
    /// hashed), or from the `identifiers` table when the snapshot is gone or
    /// of the old format. `None` before the first resolve.
    pub async fn load(ws: &Workspace, rules: &IdentityRules, run: u64) -> Result<Option<Self>> {
        let dir = ws.dir();
        if tables::open(&dir.join(PERSONS)).await?.is_none() {
            return Ok(None);
        }
        // The snapshot is read on its own thread while the persons table is.
        let owners = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || snapshot::read_owners(&dir, run))
        };
        let batches =
            tables::scan(&dir.join(PERSONS), &["person_id", "ordinal", "merged_into"]).await?;
        let mut map = PersonMap::with_rules(rules);
        // Retired ordinals and the id of the person each was merged into.
        let mut redirects: Vec<(u32, &str)> = Vec::new();
        let mut columns = Vec::with_capacity(batches.len());
        for batch in &batches {
            let ids = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
            let merged = arrow::compute::cast(batch.column(2), &DataType::Utf8)?;
            let ords = tables::ints(batch.column(1))?;
            let ords: Vec<u32> = ords
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    u32::try_from(o).map_err(|_| {
                        Error::Internal(format!("persons row {i}: ordinal {o} out of range"))
                    })
                })
                .collect::<Result<_>>()?;
            if let Some(&top) = ords.iter().max()
                && map.person_ids.len() <= top as usize
            {
                map.person_ids.resize(top as usize + 1, None);
            }
            columns.push((ids, ords, merged));
        }
        for (ids, ords, merged) in &columns {
            let (ids, merged) = (ids.as_string::<i32>(), merged.as_string::<i32>());
            for (i, &o) in ords.iter().enumerate() {
                if merged.is_valid(i) {
                    redirects.push((o, merged.value(i)));
                } else {
                    map.person_ids[o as usize] = ids.is_valid(i).then(|| ids.value(i).to_string());
                    map.live.insert(o);
                }
            }
        }
        // The ordinals of the redirect targets only: one pass over the ids
        // instead of a map of every id.
        if !redirects.is_empty() {
            let mut target: hashbrown::HashMap<&str, u32> =
                redirects.iter().map(|&(_, to)| (to, u32::MAX)).collect();
            for (ids, ords, _) in &columns {
                let ids = ids.as_string::<i32>();
                for (i, &o) in ords.iter().enumerate() {
                    if ids.is_valid(i)
                        && let Some(t) = target.get_mut(ids.value(i))
                    {
                        *t = o;
                    }
                }
            }
            for (o, to) in redirects {
                let to = target[to];
                if to != u32::MAX {
                    map.merged_into.insert(o, to);
                }
            }
        }
        // A snapshot pruned by a run finishing meanwhile, or damaged, only
        // costs the slower read below.
        let owners = owners
            .await
            .map_err(|e| Error::Internal(format!("owner snapshot task: {e}")))?
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "owners read from `identifiers` instead of the snapshot");
                None
            });
        if let Some(owners) = owners {
            // Only live persons own values: a lookup needs no liveness check.
            let mut is_live = vec![false; map.person_ids.len()];
            for o in &map.live {
                is_live[o as usize] = true;
            }
            let live = |o: u32| is_live.get(o as usize).copied().unwrap_or(false);
            // Each node's entry, worked out in node order: the map's build
            // visits the nodes in slot order, where looking up an ordinal and
            // then its liveness would be two dependent cache misses a node.
            let entries: Vec<Option<u32>> = (owners.ordinals.iter())
                .map(|&o| (o != snapshot::Owners::NO_PERSON && live(o)).then_some(o))
                .collect();
            map.owner = KeyMap::of_entries(&owners.keys, 0, |i| entries[i]).map_err(|i| {
                Error::Internal(format!(
                    "identity snapshot of run {run}: node {i} repeats an earlier key"
                ))
            })?;
            return Ok(Some(map));
        }
        // One allocation for the owner map: every row, retired ones included.
        if let Some(t) = tables::open(&dir.join(IDENTIFIERS)).await? {
            map.owner.reserve(crate::store::table::num_records(&t));
        }
        for batch in tables::scan(&dir.join(IDENTIFIERS), &["kind", "value", "ordinal"]).await? {
            let kinds = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
            let values = arrow::compute::cast(batch.column(1), &DataType::Utf8)?;
            let (kinds, values) = (kinds.as_string::<i32>(), values.as_string::<i32>());
            let ords = tables::ints(batch.column(2))?;
            for (i, &ordinal) in ords.iter().enumerate() {
                // Only live persons own values: a lookup needs no liveness check.
                let Ok(ordinal) = u32::try_from(ordinal) else {
                    continue;
                };
                if !map.live.contains(ordinal) {
                    continue;
                }
                map.owner
                    .insert(key128(kinds.value(i), values.value(i)), ordinal);
            }
        }
        Ok(Some(map))
    }

    /// The live person holding `kind:value` (normalised).
    pub fn ordinal_of(&self, kind: &str, value: &str) -> Option<u32> {
        self.owner.get(key128(kind, value)).copied()
    }

    /// The priority of identifier kind `kind` under the rules the map was
    /// loaded with.
    pub fn priority(&self, kind: &str) -> u8 {
        (self.priorities.get(kind).copied()).unwrap_or(self.default_priority)
    }

    /// The person an event with identifiers `ids` (kind, normalised value)
    /// belongs to: the live owner of its strongest value (by the kind's
    /// priority; the first of equals).
    pub fn owner_of<'a>(&self, ids: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<u32> {
        let mut ranked: Vec<(u8, &str, &str)> = (ids.into_iter())
            .map(|(k, v)| (self.priority(k), k, v))
            .collect();
        self.owner_of_ranked(&mut ranked)
    }

    /// [`owner_of`](Self::owner_of) for identifiers given with their kind's
    /// priority, in the event's order (`ranked` is reordered). The values
    /// are looked up strongest first, and the first owned one is the answer:
    /// an event mostly needs one lookup, not one per identifier.
    pub fn owner_of_ranked(&self, ranked: &mut [(u8, &str, &str)]) -> Option<u32> {
        // A stable sort: equals keep the event's order.
        ranked.sort_by_key(|&(p, ..)| std::cmp::Reverse(p));
        (ranked.iter()).find_map(|&(_, k, v)| self.owner.get(key128(k, v)).copied())
    }

    /// One past the highest ordinal.
    pub fn ordinal_space(&self) -> usize {
        self.person_ids.len()
    }

    /// The live person a retired ordinal's merges lead to (itself when live).
    pub fn survivor(&self, mut o: u32) -> Option<u32> {
        for _ in 0..64 {
            if self.live.contains(o) {
                return Some(o);
            }
            o = *self.merged_into.get(&o)?;
        }
        None
    }
}

/// Which behaviours to count: every event type, every (type, value) of each
/// configured dimension, and the multi-property keys rules ask for.
#[derive(Debug, Clone, Default)]
pub(crate) struct BehaviourPlan {
    /// Properties indexed one at a time (`category`, `channel`).
    pub dimensions: Vec<String>,
    /// Keys with two or more filters.
    pub combos: Vec<BehaviourKey>,
}

/// A string ↔ dense id table.
#[derive(Debug, Default, Clone)]
pub(crate) struct Interner {
    ids: hashbrown::HashMap<String, u32>,
    /// Strings by id.
    pub names: Vec<String>,
}

impl Interner {
    /// The id of `s`, if interned.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(s.to_string(), id);
        self.names.push(s.to_string());
        id
    }
}

/// A change of one attribute, as `attribute_history` keeps it.
#[derive(Debug, Clone)]
pub(crate) struct AttributeChange {
    pub ordinal: u32,
    pub key: u32,
    pub value: u32,
    pub at: i64,
    pub event_id: String,
}

/// Sentinel for "never".
pub(crate) const NEVER: i64 = i64::MIN;

/// What one pass over `events` gathered, per ordinal.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub first_seen: Vec<i64>,
    pub last_seen: Vec<i64>,
    pub events: Vec<u32>,
    pub orders: Vec<u32>,
    /// Purchase amounts in cents (scale 2).
    pub spend: Vec<i64>,
    pub last_order: Vec<i64>,
    /// (time, channel id) of the first `register`.
    pub registered: Vec<(i64, u32)>,
    /// Events per channel id.
    pub channel_counts: Counts,
    /// Events per category id.
    pub category_counts: Counts,
    /// Latest (key, time, value) per attribute.
    pub attributes: Vec<Vec<(u32, i64, u32)>>,
    pub channels: Interner,
    pub categories: Interner,
    pub attr_keys: Interner,
    pub attr_values: Interner,
    pub history: Vec<AttributeChange>,
    /// Behaviour keys and their events' ordinals by day.
    pub behaviour: Vec<(BehaviourKey, DayLists)>,
    /// Events read.
    pub read: u64,
    /// Events none of whose values belong to a live person (not resolved yet).
    pub unattributed: u64,
    /// Event types seen.
    pub event_types: Interner,
}

/// Ids of a vocabulary that get a column of their own in [`Counts`].
const DENSE_IDS: usize = 32;

/// Per-person counts of the ids of a small vocabulary (channels,
/// categories). Each of the first [`DENSE_IDS`] ids interned has a column
/// of counts by ordinal, so counting an event touches one slot (a list per
/// person cost two cache misses and an allocation); ids past them, the long
/// tail of a large vocabulary, go to a short list per person.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// Ordinals `0..len` have a slot.
    len: usize,
    /// Counts by id, then by ordinal.
    dense: Vec<Vec<u32>>,
    /// (id, count) per ordinal for ids from [`DENSE_IDS`] on; empty until
    /// the first such id.
    spill: Vec<Vec<(u32, u32)>>,
}

impl Counts {
    /// Room for ordinals `0..n`.
    fn grow(&mut self, n: usize) {
        if n <= self.len {
            return;
        }
        self.len = n;
        for c in &mut self.dense {
            c.resize(n, 0);
        }
        if !self.spill.is_empty() {
            self.spill.resize(n, Vec::new());
        }
    }

    /// Adds `k` to person `p`'s count of `id`; `p` has a slot.
    pub fn add(&mut self, p: usize, id: u32, k: u32) {
        let i = id as usize;
        if i < DENSE_IDS {
            if i >= self.dense.len() {
                let len = self.len;
                self.dense.resize_with(i + 1, || vec![0; len]);
            }
            self.dense[i][p] += k;
        } else {
            if self.spill.is_empty() {
                self.spill.resize(self.len, Vec::new());
            }
            add_count(&mut self.spill[p], id, k);
        }
    }

    /// Person `p`'s counts above zero, as (id, count).
    pub fn of(&self, p: usize) -> impl Iterator<Item = (u32, u32)> + '_ {
        let dense = self.dense.iter().enumerate().filter_map(move |(id, c)| {
            let k = c.get(p).copied().unwrap_or(0);
            (k > 0).then_some((id as u32, k))
        });
        dense.chain(self.spill.get(p).into_iter().flatten().copied())
    }

    /// Moves person `from`'s counts onto `into`'s; both have slots.
    fn fold(&mut self, from: usize, into: usize) {
        for c in &mut self.dense {
            let k = std::mem::take(&mut c[from]);
            c[into] += k;
        }
        if !self.spill.is_empty() {
            for (id, k) in std::mem::take(&mut self.spill[from]) {
                add_count(&mut self.spill[into], id, k);
            }
        }
    }

    /// The columns of the dense ids, by id.
    pub fn columns(&self) -> &[Vec<u32>] {
        &self.dense
    }

    /// The lists of the spilled ids, by ordinal (empty: none spilled).
    pub fn spilled(&self) -> &[Vec<(u32, u32)>] {
        &self.spill
    }

    /// Counts made of `columns` (each of length `len`) and `spill` (empty
    /// or of length `len`), as [`Counts::columns`] and [`Counts::spilled`]
    /// gave them; `None` when the shapes disagree.
    pub fn from_parts(
        len: usize,
        columns: Vec<Vec<u32>>,
        spill: Vec<Vec<(u32, u32)>>,
    ) -> Option<Self> {
        let ok = columns.len() <= DENSE_IDS
            && columns.iter().all(|c| c.len() == len)
            && (spill.is_empty() || spill.len() == len)
            && spill
                .iter()
                .flatten()
                .all(|&(id, _)| id as usize >= DENSE_IDS);
        ok.then_some(Counts {
            len,
            dense: columns,
            spill,
        })
    }

    /// One past the highest id counted.
    pub fn ids(&self) -> usize {
        let spilled = self.spill.iter().flatten().map(|&(id, _)| id as usize + 1);
        spilled.max().unwrap_or(0).max(self.dense.len())
    }
}

/// Where the behaviour pairs of one event go.
struct Slots {
    /// Slot of each event type id.
    by_type: Vec<usize>,
    /// (type id, dimension index, value id) → slot.
    by_dim: hashbrown::HashMap<(u32, usize, u32), usize>,
    /// Each dimension's values.
    dim_values: Vec<Interner>,
}

impl Slots {
    fn new(plan: &BehaviourPlan) -> Self {
        Slots {
            by_type: Vec::new(),
            by_dim: hashbrown::HashMap::new(),
            dim_values: vec![Interner::default(); plan.dimensions.len()],
        }
    }
}

impl Scan {
    /// Accumulators for ordinals `0..n`, nothing read yet.
    pub fn new(n: usize) -> Self {
        let mut s = Scan::default();
        s.grow(n);
        s
    }

    /// Room for ordinals `0..n` (new persons start empty).
    pub fn grow(&mut self, n: usize) {
        if n <= self.events.len() {
            return;
        }
        self.first_seen.resize(n, i64::MAX);
        self.last_seen.resize(n, NEVER);
        self.events.resize(n, 0);
        self.orders.resize(n, 0);
        self.spend.resize(n, 0);
        self.last_order.resize(n, NEVER);
        self.registered.resize(n, (i64::MAX, u32::MAX));
        self.channel_counts.grow(n);
        self.category_counts.grow(n);
        self.attributes.resize(n, Vec::new());
    }

    /// Folds person `from`'s accumulators into `into`'s (a merge in OneID):
    /// exactly what reading their events together would have given.
    pub fn fold(&mut self, from: u32, into: u32) {
        let (f, t) = (from as usize, into as usize);
        if f == t || f >= self.events.len() {
            return;
        }
        self.grow(t + 1);
        self.first_seen[t] = self.first_seen[t].min(self.first_seen[f]);
        self.last_seen[t] = self.last_seen[t].max(self.last_seen[f]);
        self.events[t] += std::mem::take(&mut self.events[f]);
        self.orders[t] += std::mem::take(&mut self.orders[f]);
        self.spend[t] += std::mem::take(&mut self.spend[f]);
        self.last_order[t] = self.last_order[t].max(self.last_order[f]);
        self.first_seen[f] = i64::MAX;
        self.last_seen[f] = NEVER;
        self.last_order[f] = NEVER;
        let reg = std::mem::replace(&mut self.registered[f], (i64::MAX, u32::MAX));
        if earlier_register(&self.channels.names, reg, self.registered[t]) {
            self.registered[t] = reg;
        }
        self.channel_counts.fold(f, t);
        self.category_counts.fold(f, t);
        for (key, at, value) in std::mem::take(&mut self.attributes[f]) {
            set_attribute(
                &mut self.attributes[t],
                &self.attr_values.names,
                (key, at, value),
            );
        }
        for c in &mut self.history {
            if c.ordinal == from {
                c.ordinal = into;
            }
        }
    }
}

/// Whether register `a` (time, channel id) comes before `b`: by time, then by
/// channel name, so the result does not depend on read order.
fn earlier_register(names: &[String], a: (i64, u32), b: (i64, u32)) -> bool {
    let name = |id: u32| names.get(id as usize).map(String::as_str);
    a.0 < b.0 || (a.0 == b.0 && a.0 != i64::MAX && name(a.1) < name(b.1))
}

fn add_count(counts: &mut Vec<(u32, u32)>, id: u32, n: u32) {
    match counts.iter_mut().find(|(k, _)| *k == id) {
        Some((_, c)) => *c += n,
        None => counts.push((id, n)),
    }
}

/// Keeps the latest value of an attribute: by event time, ties to the larger
/// value as text (ids are interned in read order), so the result does not
/// depend on read order.
fn set_attribute(attrs: &mut Vec<(u32, i64, u32)>, names: &[String], new: (u32, i64, u32)) {
    let (key, t, value) = new;
    match attrs.iter_mut().find(|(k, _, _)| *k == key) {
        Some(slot)
            if t > slot.1 || (t == slot.1 && names[value as usize] > names[slot.2 as usize]) =>
        {
            *slot = new
        }
        Some(_) => {}
        None => attrs.push(new),
    }
}

/// The columns of `events` a scan reads: the typed property columns only
/// when they are dimensions.
fn scan_column_names(plan: &BehaviourPlan) -> Vec<&'static str> {
    let mut columns = vec![
        "event_id",
        "event_time",
        "channel",
        "event_type",
        "identifiers",
        "category",
        "amount",
        "properties",
    ];
    columns.extend(
        ["sku", "currency", "store_id", "campaign", "page"]
            .into_iter()
            .filter(|c| plan.dimensions.iter().any(|d| d == c)),
    );
    columns
}

/// What a scan reads of each data file.
fn scan_columns(plan: &BehaviourPlan) -> Columns {
    Columns {
        names: scan_column_names(plan)
            .into_iter()
            .map(String::from)
            .collect(),
        dictionary: [
            "channel",
            "event_type",
            "category",
            "currency",
            "store_id",
            "campaign",
            "identifiers.kind",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    }
}

/// Reads every event of `table` (the `events` table at the version OneID
/// covered) once, into fresh accumulators.
pub(crate) async fn scan(
    table: &deltalake_core::DeltaTable,
    persons: &Arc<PersonMap>,
    plan: &BehaviourPlan,
) -> Result<Scan> {
    let mut s = Scan::new(persons.ordinal_space());
    read_into(table, datafiles::paths(table)?, persons, plan, &mut s).await?;
    Ok(s)
}

/// Adds the events of the data files `paths` of `table` (those committed
/// since `s` was last fed, as `add` actions name them) to `s`.
pub(crate) async fn scan_files(
    table: &deltalake_core::DeltaTable,
    paths: &[String],
    persons: &Arc<PersonMap>,
    plan: &BehaviourPlan,
    s: &mut Scan,
) -> Result<()> {
    read_into(table, datafiles::paths_of_adds(paths)?, persons, plan, s).await
}

async fn read_into(
    table: &deltalake_core::DeltaTable,
    paths: Vec<deltalake_core::Path>,
    persons: &Arc<PersonMap>,
    plan: &BehaviourPlan,
    s: &mut Scan,
) -> Result<()> {
    s.grow(persons.ordinal_space());
    let mut slots = Slots::new(plan);
    let persons = Arc::clone(persons);
    datafiles::read_map(
        table,
        paths,
        &scan_columns(plan),
        move |batch| {
            let owners = owners(&batch, &persons)?;
            Ok((batch, owners))
        },
        |(batch, owners)| add_batch(s, &mut slots, &batch, &owners, plan),
    )
    .await
}

/// The live owner of each event of `batch` (its strongest owned identifier's
/// person, [`NO_OWNER`] for none): worked out on the thread that read the
/// batch, as the owner map is only read, so the one thread that adds
/// batches up does not probe it.
fn owners(batch: &RecordBatch, persons: &PersonMap) -> Result<Vec<u32>> {
    let ids = batch
        .column_by_name("identifiers")
        .ok_or_else(|| Error::Internal("events batch has no `identifiers`".into()))?
        .as_list::<i32>();
    let id_struct: &StructArray = ids.values().as_struct();
    let id_kinds = Strings::of(id_struct.column(0).as_ref(), "identifiers.kind")?;
    let id_values = Strings::of(id_struct.column(1).as_ref(), "identifiers.value")?;
    let offsets = ids.value_offsets();
    let priorities = kind_priorities(persons, &id_kinds, id_struct.len());
    let mut ranked = Vec::new();
    Ok((0..batch.num_rows())
        .map(|row| {
            ranked.clear();
            ranked.extend(
                (offsets[row] as usize..offsets[row + 1] as usize)
                    .filter(|&j| !id_struct.is_null(j))
                    .map(|j| (priorities[j], id_kinds.value(j), id_values.value(j))),
            );
            persons.owner_of_ranked(&mut ranked).unwrap_or(NO_OWNER)
        })
        .collect())
}

/// An owner slot's "no live person holds any of the event's values".
const NO_OWNER: u32 = u32::MAX;

/// The string column `name` of `batch`: plain, or a dictionary (the
/// low-cardinality columns, see [`scan_columns`]).
fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<Strings<'a>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("events batch has no `{name}`")))?;
    Strings::of(col.as_ref(), name)
}

/// The ids of `column`'s values at `rows`, interned in row order; a null
/// taken as `null` ([`NONE`] when `None`: a column the schema says is never
/// null still gets a real id for one). A dictionary's values are looked up
/// once each; runs of one plain value (a file's rows often share a channel
/// or type) once per run.
fn intern_rows(
    interner: &mut Interner,
    column: &Strings,
    rows: &[usize],
    null: Option<&str>,
) -> Vec<u32> {
    let null = |interner: &mut Interner| null.map_or(NONE, |v| interner.intern(v));
    let mut out = Vec::with_capacity(rows.len());
    if let Strings::Dict(keys, values) = column {
        let mut of_key = vec![NONE; values.len()];
        for &row in rows {
            let Some(k) = keys.is_valid(row).then(|| keys.value(row) as usize) else {
                out.push(null(interner));
                continue;
            };
            if values.is_null(k) {
                out.push(null(interner));
                continue;
            }
            if of_key[k] == NONE {
                of_key[k] = interner.intern(values.value(k));
            }
            out.push(of_key[k]);
        }
        return out;
    }
    let mut last: Option<(&str, u32)> = None;
    for &row in rows {
        let Some(v) = column.get(row) else {
            out.push(null(interner));
            continue;
        };
        let id = match last {
            Some((l, id)) if l == v => id,
            _ => interner.intern(v),
        };
        last = Some((v, id));
        out.push(id);
    }
    out
}

/// The priority of each identifier's kind in a batch: worked out once per
/// dictionary entry when the kinds are dictionary-encoded (they are in the
/// data files), else once per run of equal kinds.
fn kind_priorities(persons: &PersonMap, kinds: &Strings, n: usize) -> Vec<u8> {
    if let Strings::Dict(keys, values) = kinds {
        // A null is the kind "", as `Strings::value` reads it.
        let of_key: Vec<u8> = (0..values.len())
            .map(|k| {
                persons.priority(if values.is_null(k) {
                    ""
                } else {
                    values.value(k)
                })
            })
            .collect();
        let null = persons.priority("");
        return (keys.iter())
            .map(|k| k.map_or(null, |k| of_key[k as usize]))
            .collect();
    }
    let mut last: Option<(&str, u8)> = None;
    (0..n)
        .map(|j| {
            let kind = kinds.value(j);
            match last {
                Some((l, p)) if l == kind => p,
                _ => {
                    let p = persons.priority(kind);
                    last = Some((kind, p));
                    p
                }
            }
        })
        .collect()
}

/// An id slot's "null".
const NONE: u32 = u32::MAX;

fn add_batch(
    s: &mut Scan,
    slots: &mut Slots,
    batch: &RecordBatch,
    owners: &[u32],
    plan: &BehaviourPlan,
) -> Result<()> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("events batch has no `{name}`")))
    };
    let event_ids = strings(batch, "event_id")?;
    let times = arrow::compute::cast(
        col("event_time")?,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )?;
    let times = times.as_primitive::<TimestampMicrosecondType>();
    let channels = strings(batch, "channel")?;
    let types = strings(batch, "event_type")?;
    let categories = strings(batch, "category")?;
    let amounts = col("amount")?
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .ok_or_else(|| Error::Internal("events `amount` is not Decimal128".into()))?
        .clone();
    let props: &MapArray = col("properties")?.as_map();
    let prop_keys = arrow::compute::cast(props.keys(), &DataType::Utf8)?;
    let prop_values = arrow::compute::cast(props.values(), &DataType::Utf8)?;
    let (prop_keys, prop_values) = (prop_keys.as_string::<i32>(), prop_values.as_string::<i32>());
    // Dimension columns: a typed column when there is one, else the map.
    let dim_columns: Vec<Option<Strings>> = plan
        .dimensions
        .iter()
        .map(|d| {
            batch
                .column_by_name(d)
                .map(|c| Strings::of(c.as_ref(), d))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let prop_of = |row: usize, key: &str| -> Option<&str> {
        if props.is_null(row) {
            return None;
        }
        let offsets = props.value_offsets();
        (offsets[row] as usize..offsets[row + 1] as usize)
            .find(|&j| prop_keys.value(j) == key)
            .filter(|&j| prop_values.is_valid(j))
            .map(|j| prop_values.value(j))
    };
    let n = batch.num_rows();
    s.read += n as u64;

    // The batch is taken in passes, each a short loop over the rows: the
    // random accesses of one pass (per-person slots) do not depend on each
    // other, so the CPU overlaps their cache misses, where one long loop
    // body per row would wait on each in turn.
    let rows: Vec<usize> = (0..n).filter(|&r| owners[r] != NO_OWNER).collect();
    s.unattributed += (n - rows.len()) as u64;
    let micros = times.values();
    for &row in &rows {
        let (p, t) = (owners[row] as usize, micros[row]);
        s.first_seen[p] = s.first_seen[p].min(t);
        s.last_seen[p] = s.last_seen[p].max(t);
        s.events[p] += 1;
    }
    // `channel` and `event_type` are never null (the schema says so).
    let channel_ids = intern_rows(&mut s.channels, &channels, &rows, Some(""));
    for (&row, &c) in rows.iter().zip(&channel_ids) {
        s.channel_counts.add(owners[row] as usize, c, 1);
    }
    let category_ids = intern_rows(&mut s.categories, &categories, &rows, None);
    for (&row, &c) in rows.iter().zip(&category_ids) {
        if c != NONE {
            s.category_counts.add(owners[row] as usize, c, 1);
        }
    }
    let type_ids = intern_rows(&mut s.event_types, &types, &rows, Some(""));
    let purchase = s.event_types.get("purchase");
    let register = s.event_types.get("register");
    let profile_update = s.event_types.get("profile_update");
    for ((&row, &type_id), &channel) in rows.iter().zip(&type_ids).zip(&channel_ids) {
        let o = owners[row];
        let (p, t) = (o as usize, micros[row]);
        if Some(type_id) == purchase {
            s.orders[p] += 1;
            if amounts.is_valid(row) {
                s.spend[p] += amounts.value(row) as i64;
            }
            s.last_order[p] = s.last_order[p].max(t);
        } else if Some(type_id) == register {
            if earlier_register(&s.channels.names, (t, channel), s.registered[p]) {
                s.registered[p] = (t, channel)
            }
        } else if Some(type_id) == profile_update && props.is_valid(row) {
            let o2 = props.value_offsets();
            for j in o2[row] as usize..o2[row + 1] as usize {
                if prop_values.is_null(j) {
                    continue;
                }
                let key = s.attr_keys.intern(prop_keys.value(j));
                let value = s.attr_values.intern(prop_values.value(j));
                s.history.push(AttributeChange {
                    ordinal: o,
                    key,
                    value,
                    at: t,
                    event_id: event_ids.value(row).to_string(),
                });
                set_attribute(&mut s.attributes[p], &s.attr_values.names, (key, t, value));
            }
        }
    }

    // Behaviour: the type, each dimension's value, the combos.
    // `event_date` is the UTC date of `event_time`; data files do not hold
    // the partition column, so it is derived here.
    let day_of = |row: usize| micros[row].div_euclid(DAY_US) as i32;
    for (&row, &type_id) in rows.iter().zip(&type_ids) {
        let ti = type_id as usize;
        if slots.by_type.len() <= ti {
            slots.by_type.resize(ti + 1, usize::MAX);
        }
        if slots.by_type[ti] == usize::MAX {
            slots.by_type[ti] = s.behaviour.len();
            s.behaviour.push((
                BehaviourKey::new(types.value(row), Vec::new()),
                DayLists::default(),
            ));
        }
        s.behaviour[slots.by_type[ti]]
            .1
            .push(day_of(row), owners[row]);
    }
    for (d, dim) in plan.dimensions.iter().enumerate() {
        // A dimension column's values are interned once per dictionary entry
        // (or run of one value), not once per row.
        let value_ids = match &dim_columns[d] {
            Some(c) => intern_rows(&mut slots.dim_values[d], c, &rows, None),
            None => (rows.iter())
                .map(|&row| prop_of(row, dim).map_or(NONE, |v| slots.dim_values[d].intern(v)))
                .collect(),
        };
        for ((&row, &type_id), &value_id) in rows.iter().zip(&type_ids).zip(&value_ids) {
            if value_id == NONE {
                continue;
            }
            let slot = match slots.by_dim.get(&(type_id, d, value_id)) {
                Some(&slot) => slot,
                None => {
                    let slot = s.behaviour.len();
                    let value = slots.dim_values[d].names[value_id as usize].clone();
                    s.behaviour.push((
                        BehaviourKey::new(types.value(row), vec![(dim.clone(), value)]),
                        DayLists::default(),
                    ));
                    slots.by_dim.insert((type_id, d, value_id), slot);
                    slot
                }
            };
            s.behaviour[slot].1.push(day_of(row), owners[row]);
        }
    }
    for combo in &plan.combos {
        for &row in &rows {
            if types.value(row) != combo.event_type {
                continue;
            }
            let all = combo.filters.iter().all(|(prop, v)| {
                let got = match plan.dimensions.iter().position(|d| d == prop) {
                    Some(d) => match &dim_columns[d] {
                        Some(c) => c.get(row),
                        None => prop_of(row, prop),
                    },
                    None => prop_of(row, prop),
                };
                got == Some(v.as_str())
            });
            if all {
                let (day, o) = (day_of(row), owners[row]);
                match s.behaviour.iter_mut().find(|(k, _)| k == combo) {
                    Some((_, lists)) => lists.push(day, o),
                    None => {
                        let mut lists = DayLists::default();
                        lists.push(day, o);
                        s.behaviour.push((combo.clone(), lists));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(c: &Counts, p: usize) -> Vec<(u32, u32)> {
        c.of(p).collect()
    }

    #[test]
    fn kind_priorities_agree_for_plain_and_dictionary_kinds() {
        use arrow::array::{DictionaryArray, StringArray};
        use arrow::datatypes::Int32Type;
        let rules = IdentityRules::default();
        let persons = PersonMap::with_rules(&rules);
        let kinds = [
            Some("device"),
            Some("device"),
            Some("member"),
            None,
            Some("loyalty_card"),
            Some("phone"),
        ];
        // Unknown kinds and nulls (read as "") take the default priority.
        let expected = vec![10, 10, 100, 50, 50, 80];
        let plain = StringArray::from(kinds.to_vec());
        let got = kind_priorities(&persons, &Strings::of(&plain, "kind").unwrap(), 6);
        assert_eq!(got, expected);
        let dict: DictionaryArray<Int32Type> = kinds.into_iter().collect();
        let got = kind_priorities(&persons, &Strings::of(&dict, "kind").unwrap(), 6);
        assert_eq!(got, expected);
    }

    #[test]
    fn owner_of_takes_the_strongest_owned_value_then_the_first_of_equals() {
        let rules = IdentityRules::default();
        let mut persons = PersonMap::with_rules(&rules);
        persons.owner.insert(key128("device", "d1"), 1);
        persons.owner.insert(key128("phone", "+8613800138000"), 2);
        persons.owner.insert(key128("email", "a@example.com"), 3);
        persons.owner.insert(key128("email", "b@example.com"), 4);
        let phone = ("phone", "+8613800138000");
        assert_eq!(persons.owner_of([("device", "d1"), phone]), Some(2));
        assert_eq!(persons.owner_of([phone, ("device", "d1")]), Some(2));
        // An unowned strong value gives way to the next owned one.
        assert_eq!(
            persons.owner_of([
                ("member", "m9"),
                ("device", "d1"),
                ("email", "a@example.com")
            ]),
            Some(3)
        );
        let (a, b) = (("email", "a@example.com"), ("email", "b@example.com"));
        assert_eq!(persons.owner_of([b, a]), Some(4));
        assert_eq!(persons.owner_of([a, b]), Some(3));
        assert_eq!(persons.owner_of([("member", "m9")]), None);
        assert_eq!(persons.owner_of([]), None);
    }

    #[test]
    fn counts_keep_dense_and_spilled_ids_and_fold_both() {
        let mut c = Counts::default();
        c.grow(3);
        c.add(0, 2, 1);
        c.add(0, 2, 1);
        c.add(1, 0, 5);
        c.add(1, 40, 2);
        c.add(2, 40, 1);
        c.add(2, 33, 7);
        assert_eq!(of(&c, 0), vec![(2, 2)]);
        assert_eq!(of(&c, 1), vec![(0, 5), (40, 2)]);
        assert_eq!(c.ids(), 41);
        // New persons start empty, in the columns and the lists.
        c.grow(5);
        c.add(4, 1, 1);
        assert_eq!(of(&c, 3), vec![]);
        assert_eq!(of(&c, 4), vec![(1, 1)]);
        c.fold(1, 2);
        assert_eq!(of(&c, 1), vec![]);
        assert_eq!(of(&c, 2), vec![(0, 5), (40, 3), (33, 7)]);
        // Taken apart and put back together.
        let again = Counts::from_parts(5, c.columns().to_vec(), c.spilled().to_vec()).unwrap();
        assert_eq!(
            (0..5).map(|p| of(&again, p)).collect::<Vec<_>>(),
            (0..5).map(|p| of(&c, p)).collect::<Vec<_>>()
        );
        // Shapes that disagree are refused.
        assert!(Counts::from_parts(4, c.columns().to_vec(), Vec::new()).is_none());
        assert!(Counts::from_parts(5, Vec::new(), vec![vec![(1, 1)]; 5]).is_none());
    }
}
