//! The identity graph: every identifier value seen on events (a node) and every
//! pair of values seen on the same event (an edge, with how many events
//! evidenced it). Built from the `identifiers` column of event batches.
//!
//! Nodes are interned in arrival order, but everything that decides the result
//! (the union order, ties) uses [`Graph::key_hash`], a hash of the node's
//! content, so the same events give the same persons in any order.

use arrow::array::{
    Array, AsArray, GenericListArray, Int32Array, RecordBatch, StringArray, StringViewArray,
    StructArray,
};
use arrow::datatypes::{DataType, Int32Type, TimestampMicrosecondType};
use hashbrown::HashMap;
use xxhash_rust::xxh3::xxh3_64;

use super::rules::CompiledRules;
use crate::{Error, Result};

/// Events with more identifiers than this link them as a star from the first
/// (strongest) one instead of all pairs.
const CLIQUE_MAX: usize = 8;

/// The links of a graph: `(edge key, events that carried both ends)`, sorted
/// by key (so by lower end, then upper end), and the occurrences added since
/// the last merge.
///
/// An event's links are appended, not looked up: a hash map of links costs a
/// cache miss per occurrence, an append costs none. The appended run is
/// radix-sorted and merged in when it grows to half the sorted part, and by
/// [`Graph::seal`]; passes over the links then go in node order, which keeps
/// their lookups of per-node arrays close together.
///
/// A graph built from many events can hand the sorting to a thread of its
/// own ([`Links::in_background`]): pending runs then go to it as they fill,
/// and [`Links::merge`] takes its result back.
#[derive(Debug, Default)]
struct Links {
    sorted: Vec<(u64, u32)>,
    pending: Vec<(u64, u32)>,
    /// Bits of a node index, for the radix sort's key.
    node_bits: u32,
    /// The thread holding `sorted` while it sorts runs, when one does.
    worker: Option<LinkWorker>,
}

/// A thread that sorts and merges runs of pending links.
#[derive(Debug)]
struct LinkWorker {
    /// Full runs, with the node count when they filled.
    runs: std::sync::mpsc::SyncSender<(Vec<(u64, u32)>, usize)>,
    /// Emptied runs, for reuse: their pages are touched already. (In a
    /// mutex, never contended, so that a graph can be shared.)
    spent: std::sync::Mutex<std::sync::mpsc::Receiver<Vec<(u64, u32)>>>,
    thread: std::thread::JoinHandle<Links>,
}

/// Pending occurrences never wait for less than this before a merge (tests
/// merge and hand runs off often).
const PENDING_MIN: usize = if cfg!(test) { 64 } else { 1 << 20 };

impl Links {
    fn push(&mut self, key: u64, events: u32, nodes: usize) {
        self.pending.push((key, events));
        match &self.worker {
            Some(w) if self.pending.len() >= PENDING_MIN => {
                let fresh = w
                    .spent
                    .lock()
                    .ok()
                    .and_then(|spent| spent.try_recv().ok())
                    .unwrap_or_else(|| Vec::with_capacity(PENDING_MIN));
                let run = std::mem::replace(&mut self.pending, fresh);
                if let Err(std::sync::mpsc::SendError((run, _))) = w.runs.send((run, nodes)) {
                    // The thread is gone (only a panic ends it early): take
                    // it back, which passes its panic on to this thread.
                    self.pending.extend_from_slice(&run);
                    self.take_back();
                }
            }
            None if self.pending.len() >= PENDING_MIN.max(self.sorted.len() / 2) => {
                self.merge(nodes)
            }
            _ => {}
        }
    }

    /// From now on, full runs of pending links are sorted and merged on a
    /// thread of their own, until [`Links::merge`].
    fn in_background(&mut self) {
        if self.worker.is_some() {
            return;
        }
        let mut links = Links {
            sorted: std::mem::take(&mut self.sorted),
            pending: std::mem::take(&mut self.pending),
            node_bits: self.node_bits,
            worker: None,
        };
        let (runs, inbox) = std::sync::mpsc::sync_channel::<(Vec<(u64, u32)>, usize)>(1);
        let (give_back, spent) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("quiver-links".into())
            .spawn(move || {
                for (mut run, nodes) in inbox {
                    if links.pending.is_empty() {
                        std::mem::swap(&mut links.pending, &mut run);
                    } else {
                        links.pending.extend_from_slice(&run);
                    }
                    if links.pending.len() >= PENDING_MIN.max(links.sorted.len() / 2) {
                        links.merge(nodes);
                    }
                    run.clear();
                    let _ = give_back.send(run);
                }
                links
            });
        match spawned {
            Ok(thread) => {
                self.worker = Some(LinkWorker {
                    runs,
                    spent: std::sync::Mutex::new(spent),
                    thread,
                })
            }
            // No thread to be had: sort here, as without one.
            Err(e) => tracing::debug!(error = %e, "identity: links sorted on the graph's thread"),
        }
    }

    /// Ends the background thread, if one runs, and takes its links back
    /// (its pending run ahead of this one's). A panic on that thread is
    /// passed on to this one.
    fn take_back(&mut self) {
        let Some(w) = self.worker.take() else { return };
        drop(w.runs);
        let mut links = match w.thread.join() {
            Ok(links) => links,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        if links.pending.is_empty() {
            links.pending = std::mem::take(&mut self.pending);
        } else {
            links.pending.append(&mut self.pending);
        }
        *self = links;
    }

    /// Sorts the pending occurrences, adds up repeats and merges them in
    /// (taking the background thread's links back first, if one runs).
    fn merge(&mut self, nodes: usize) {
        self.take_back();
        if self.pending.is_empty() {
            return;
        }
        self.node_bits = (usize::BITS - nodes.leading_zeros()).max(1);
        let mut pending = std::mem::take(&mut self.pending);
        if !pending.is_sorted_by_key(|e| e.0) {
            radix_sort(&mut pending, self.node_bits);
        }
        let mut w = 0;
        for r in 0..pending.len() {
            if w > 0 && pending[w - 1].0 == pending[r].0 {
                pending[w - 1].1 = pending[w - 1].1.saturating_add(pending[r].1);
            } else {
                pending[w] = pending[r];
                w += 1;
            }
        }
        pending.truncate(w);
        merge_sorted(&mut self.sorted, &pending);
        pending.clear();
        self.pending = pending;
    }
}

/// Sorts `v` by edge key: least significant digit first, 11 bits a pass,
/// over the key's `2 * node_bits` significant bits (the ends are below
/// `1 << node_bits`).
fn radix_sort(v: &mut Vec<(u64, u32)>, node_bits: u32) {
    const DIGIT: u32 = 11;
    const MASK: u64 = (1 << DIGIT) - 1;
    let dense = |key: u64| ((key >> 32) << node_bits) | (key & 0xffff_ffff);
    let mut scratch = vec![(0u64, 0u32); v.len()];
    let mut shift = 0;
    while shift < 2 * node_bits {
        let mut start = vec![0usize; 1 << DIGIT];
        for e in v.iter() {
            start[((dense(e.0) >> shift) & MASK) as usize] += 1;
        }
        let mut sum = 0;
        for c in start.iter_mut() {
            (*c, sum) = (sum, sum + *c);
        }
        for &e in v.iter() {
            let d = ((dense(e.0) >> shift) & MASK) as usize;
            scratch[start[d]] = e;
            start[d] += 1;
        }
        std::mem::swap(v, &mut scratch);
        shift += DIGIT;
    }
}

/// Merges `new` (sorted, distinct keys) into `sorted` in place, from the back:
/// a key in both gets the sum of their counts.
fn merge_sorted(sorted: &mut Vec<(u64, u32)>, new: &[(u64, u32)]) {
    let (mut i, mut fresh) = (0, 0);
    for e in new {
        while i < sorted.len() && sorted[i].0 < e.0 {
            i += 1;
        }
        if i == sorted.len() || sorted[i].0 != e.0 {
            fresh += 1;
        }
    }
    let old = sorted.len();
    sorted.resize(old + fresh, (0, 0));
    let (mut i, mut j, mut k) = (old, new.len(), old + fresh);
    while j > 0 {
        k -= 1;
        if i > 0 && sorted[i - 1].0 > new[j - 1].0 {
            sorted[k] = sorted[i - 1];
            i -= 1;
        } else if i > 0 && sorted[i - 1].0 == new[j - 1].0 {
            sorted[k] = (new[j - 1].0, sorted[i - 1].1.saturating_add(new[j - 1].1));
            i -= 1;
            j -= 1;
        } else {
            sorted[k] = new[j - 1];
            j -= 1;
        }
    }
}

/// The identity graph.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    kinds: Vec<String>,
    kind_of: Vec<u16>,
    arena: String,
    ends: Vec<usize>,
    hashes: Vec<u64>,
    /// [`key128`] of every node: what the index compares, and what values are
    /// looked up by across runs.
    keys: Vec<u128>,
    /// First and last event time (µs) per node, side by side: an event
    /// updates both.
    seen: Vec<(i64, i64)>,
    /// Node by [`key128`]: the key is kept in the slot, so a probe reads no
    /// per-node array.
    index: KeyMap<u32>,
    kind_index: HashMap<String, u16>,
    links: Links,
    /// Occurrences of blocklisted values skipped.
    pub blocked: u64,
    /// Events read.
    pub events: u64,
    /// When set, every node on an added event is recorded in `touched`.
    pub track: bool,
    /// Nodes on events added while `track` was set (with repeats).
    pub touched: Vec<u32>,
    /// A batch's nodes, kept between batches.
    scratch: Vec<u32>,
}

/// Content hash of `(kind, value)`; the deterministic order key of a node.
pub(crate) fn key_hash(kind: &str, value: &str) -> u64 {
    with_key(kind, value, xxh3_64)
}

/// A [`key128`] value as two words: a `u128` aligns a map entry to 16 bytes
/// and pads a `(u128, u32)` to 32; this key keeps it at 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key([u64; 2]);

impl From<u128> for Key {
    fn from(k: u128) -> Self {
        Key([k as u64, (k >> 64) as u64])
    }
}

/// A map keyed by [`key128`] values (or other uniform 128-bit hashes), which
/// are not hashed again: open addressing with linear probing over one flat
/// array of 24-byte `(key, value)` slots, at most 70 % full. The key's
/// low word picks the slot, so a lookup is one cache miss and a few
/// compares in the same line; a loop of lookups keeps several misses in
/// flight (a `hashbrown` map of the same entries, with its control bytes and
/// SIMD group probe, took twice as long for 28 M random lookups in 3.2 M keys
/// on the bench machine).
#[derive(Debug, Clone)]
pub(crate) struct KeyMap<V> {
    /// `EMPTY` keys mark free slots; the length is a power of two.
    slots: Vec<(Key, V)>,
    len: usize,
    /// The value of the key that equals `EMPTY`, which cannot sit in a slot.
    empty_key: Option<V>,
}

const EMPTY: Key = Key([0, 0]);

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            slots: Vec::new(),
            len: 0,
            empty_key: None,
        }
    }
}

impl<V: Copy + Default> KeyMap<V> {
    /// The slot holding `k`, or the free slot where it would go. The key's
    /// low word scaled to the table's length picks the first slot (any
    /// length works, so the table is sized to its keys, not to a power of
    /// two); the table is never full, so the probe ends.
    fn slot(&self, k: Key) -> usize {
        let n = self.slots.len();
        let mut i = ((u128::from(k.0[0]) * n as u128) >> 64) as usize;
        loop {
            let at = self.slots[i].0;
            if at == k || at == EMPTY {
                return i;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    pub fn get(&self, k: u128) -> Option<&V> {
        let k = Key::from(k);
        if k == EMPTY {
            return self.empty_key.as_ref();
        }
        if self.slots.is_empty() {
            return None;
        }
        let (at, v) = &self.slots[self.slot(k)];
        (*at == k).then_some(v)
    }

    pub fn insert(&mut self, k: u128, v: V) -> Option<V> {
        let k = Key::from(k);
        if k == EMPTY {
            return self.empty_key.replace(v);
        }
        self.reserve(1);
        let i = self.slot(k);
        let slot = &mut self.slots[i];
        if slot.0 == k {
            return Some(std::mem::replace(&mut slot.1, v));
        }
        *slot = (k, v);
        self.len += 1;
        None
    }

    /// Room for `n` more keys without growing: at most 70 % of the slots
    /// are used; growth doubles.
    pub fn reserve(&mut self, n: usize) {
        let want = self.len + n;
        if want * 10 <= self.slots.len() * 7 {
            return;
        }
        let cap = (want * 10 / 7 + 1).max(self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![(EMPTY, V::default()); cap]);
        for (k, v) in old {
            if k != EMPTY {
                let i = self.slot(k);
                self.slots[i] = (k, v);
            }
        }
    }
}

impl KeyMap<u32> {
    /// The map `keys[i] → i`, with room for `spare` more keys; see
    /// [`KeyMap::of_entries`].
    fn of_keys(keys: &[u128], spare: usize) -> std::result::Result<Self, usize> {
        Self::of_entries(keys, spare, |i| Some(i as u32))
    }
}

impl<V: Copy + Default> KeyMap<V> {
    /// The map `keys[i] → value(i)` over the `i` whose value is `Some`, with
    /// room for `spare` more keys. The keys go in in the order of their first
    /// slots (a radix sort of the slot numbers), so the inserts walk the
    /// table once from start to end instead of probing it at random. Err:
    /// the index of the first key that repeats an earlier one.
    pub(crate) fn of_entries(
        keys: &[u128],
        spare: usize,
        mut value: impl FnMut(usize) -> Option<V>,
    ) -> std::result::Result<Self, usize> {
        let cap = ((keys.len() + spare) * 10 / 7 + 1).max(16);
        let mut map = KeyMap {
            slots: vec![(EMPTY, V::default()); cap],
            len: 0,
            empty_key: None,
        };
        // (first slot, index), sorted by first slot: least significant
        // digit first, 11 bits a pass, over the bits a slot number needs.
        let mut order: Vec<u64> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let home = ((u128::from(k as u64) * cap as u128) >> 64) as u64;
                (home << 32) | i as u64
            })
            .collect();
        const DIGIT: u32 = 11;
        let bits = usize::BITS - cap.leading_zeros();
        let mut scratch = vec![0u64; order.len()];
        let mut shift = 32;
        while shift < 32 + bits {
            let mut start = vec![0usize; 1 << DIGIT];
            for &e in &order {
                start[((e >> shift) & ((1 << DIGIT) - 1)) as usize] += 1;
            }
            let mut sum = 0;
            for c in start.iter_mut() {
                (*c, sum) = (sum, sum + *c);
            }
            for &e in &order {
                let d = ((e >> shift) & ((1 << DIGIT) - 1)) as usize;
                scratch[start[d]] = e;
                start[d] += 1;
            }
            std::mem::swap(&mut order, &mut scratch);
            shift += DIGIT;
        }
        drop(scratch);
        for e in order {
            let i = (e & 0xffff_ffff) as usize;
            let Some(v) = value(i) else { continue };
            let k = Key::from(keys[i]);
            if k == EMPTY {
                if map.empty_key.replace(v).is_some() {
                    return Err(i);
                }
                continue;
            }
            let at = map.slot(k);
            if map.slots[at].0 == k {
                return Err(i);
            }
            map.slots[at] = (k, v);
            map.len += 1;
        }
        Ok(map)
    }
}

/// The 128-bit content hash of `(kind, value)`: the key values are looked up
/// by across runs (collisions are not a practical concern at this width).
pub(crate) fn key128(kind: &str, value: &str) -> u128 {
    with_key(kind, value, xxhash_rust::xxh3::xxh3_128)
}

/// Calls `f` on the bytes `kind 0x1f value`; most keys fit on the stack, so
/// hashing an identifier allocates nothing.
fn with_key<T>(kind: &str, value: &str, f: impl FnOnce(&[u8]) -> T) -> T {
    let n = kind.len() + value.len() + 1;
    let mut stack = [0u8; 128];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if n <= stack.len() {
        &mut stack[..n]
    } else {
        heap.resize(n, 0);
        &mut heap
    };
    buf[..kind.len()].copy_from_slice(kind.as_bytes());
    buf[kind.len()] = 0x1f;
    buf[kind.len() + 1..].copy_from_slice(value.as_bytes());
    f(buf)
}

pub(crate) fn edge_key(a: u32, b: u32) -> u64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    (u64::from(lo) << 32) | u64::from(hi)
}

/// The two ends of an edge key.
pub(crate) fn edge_ends(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// A string column that may be `Utf8`, `Utf8View` (the Delta provider's
/// choice) or a dictionary of `Utf8` (low-cardinality columns as
/// `store::datafiles` reads them).
pub(crate) enum Strings<'a> {
    Utf8(&'a StringArray),
    View(&'a StringViewArray),
    Dict(&'a Int32Array, &'a StringArray),
}

impl<'a> Strings<'a> {
    pub(crate) fn of(array: &'a dyn Array, what: &str) -> Result<Self> {
        match array.data_type() {
            DataType::Utf8 => Ok(Strings::Utf8(array.as_string::<i32>())),
            DataType::Utf8View => Ok(Strings::View(array.as_string_view())),
            DataType::Dictionary(k, v)
                if k.as_ref() == &DataType::Int32 && v.as_ref() == &DataType::Utf8 =>
            {
                let d = array.as_dictionary::<Int32Type>();
                Ok(Strings::Dict(d.keys(), d.values().as_string::<i32>()))
            }
            other => Err(Error::Internal(format!(
                "identity: `{what}` is {other}, expected a string"
            ))),
        }
    }

    /// The value at `i` ("" for a null).
    pub(crate) fn value(&self, i: usize) -> &'a str {
        self.get(i).unwrap_or_default()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Utf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            Strings::View(a) => (!a.is_null(i)).then(|| a.value(i)),
            Strings::Dict(keys, values) => {
                if keys.is_null(i) {
                    return None;
                }
                let k = keys.value(i) as usize;
                (!values.is_null(k)).then(|| values.value(k))
            }
        }
    }
}

impl Graph {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.kind_of.len()
    }

    /// The kind index of node `n` (an index into the graph's kinds, in order of first sight).
    pub fn kind_index(&self, n: u32) -> u16 {
        self.kind_of[n as usize]
    }

    /// The kind of node `n`.
    pub fn kind(&self, n: u32) -> &str {
        &self.kinds[self.kind_of[n as usize] as usize]
    }

    /// The normalised value of node `n`.
    pub fn value(&self, n: u32) -> &str {
        let n = n as usize;
        let start = if n == 0 { 0 } else { self.ends[n - 1] };
        &self.arena[start..self.ends[n]]
    }

    /// The content hash of node `n`.
    pub fn key_hash(&self, n: u32) -> u64 {
        self.hashes[n as usize]
    }

    /// The first time (µs) node `n` was seen on an event.
    pub fn first_seen(&self, n: u32) -> i64 {
        self.seen[n as usize].0
    }

    /// The last time (µs) node `n` was seen on an event.
    pub fn last_seen(&self, n: u32) -> i64 {
        self.seen[n as usize].1
    }

    /// The [`key128`] of node `n`.
    pub fn key(&self, n: u32) -> u128 {
        self.keys[n as usize]
    }

    /// The node of `(kind, value)`, if seen.
    pub fn find(&self, kind: &str, value: &str) -> Option<u32> {
        self.node_of(key128(kind, value))
    }

    /// The node whose [`key128`] is `key`, if seen.
    fn node_of(&self, key: u128) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The node of `(kind, value)`, created if new.
    ///
    /// Nodes are found by their 128-bit content key alone, as values are
    /// across runs: a probe touches the index and one key, never the strings.
    #[cfg(test)]
    pub fn intern(&mut self, kind: &str, value: &str) -> u32 {
        let key = key128(kind, value);
        match self.node_of(key) {
            Some(n) => n,
            None => self.new_node(kind, value, key, key_hash(kind, value)),
        }
    }

    /// Appends a node whose keys are computed: `key` = [`key128`] and `hash`
    /// = [`key_hash`] of `(kind, value)`.
    fn new_node(&mut self, kind: &str, value: &str, key: u128, hash: u64) -> u32 {
        let n = self.append(kind, value, (key, hash), (i64::MAX, i64::MIN));
        self.index.insert(key, n);
        n
    }

    /// Appends a node without indexing it.
    fn append(
        &mut self,
        kind: &str,
        value: &str,
        (key, hash): (u128, u64),
        seen: (i64, i64),
    ) -> u32 {
        let k = match self.kind_index.get(kind) {
            Some(&k) => k,
            None => {
                let k = self.kinds.len() as u16;
                self.kinds.push(kind.to_string());
                self.kind_index.insert(kind.to_string(), k);
                k
            }
        };
        let n = self.kind_of.len() as u32;
        self.kind_of.push(k);
        self.arena.push_str(value);
        self.ends.push(self.arena.len());
        self.hashes.push(hash);
        self.keys.push(key);
        self.seen.push(seen);
        n
    }

    /// Adds a node with its first and last seen times and its keys already
    /// computed (`key` = [`key128`], `hash` = [`key_hash`] of `(kind, value)`),
    /// as a snapshot or another graph holds them, so nothing is hashed.
    pub fn push_keyed(
        &mut self,
        kind: &str,
        value: &str,
        (key, hash): (u128, u64),
        first_seen: i64,
        last_seen: i64,
    ) -> u32 {
        let n = match self.node_of(key) {
            Some(n) => n,
            None => self.new_node(kind, value, key, hash),
        };
        let seen = &mut self.seen[n as usize];
        *seen = (seen.0.min(first_seen), seen.1.max(last_seen));
        n
    }

    /// Appends a node as a snapshot holds it: keys computed, not seen
    /// before. The node is not indexed: [`Graph::index_all`] must run before
    /// the graph is used.
    pub fn push_unindexed(
        &mut self,
        kind: &str,
        value: &str,
        keys: (u128, u64),
        first_seen: i64,
        last_seen: i64,
    ) {
        self.append(kind, value, keys, (first_seen, last_seen));
    }

    /// Indexes every node in one pass (see `KeyMap::of_keys`), with room for
    /// `spare` more. Err: `(node, earlier node)` with the same key.
    pub fn index_all(&mut self, spare: usize) -> std::result::Result<(), (u32, u32)> {
        match KeyMap::of_keys(&self.keys, spare) {
            Ok(index) => {
                self.index = index;
                Ok(())
            }
            Err(n) => {
                let earlier = self.keys[..n]
                    .iter()
                    .position(|&k| k == self.keys[n])
                    .unwrap_or(n);
                Err((n as u32, earlier as u32))
            }
        }
    }

    /// Room for `nodes` more nodes holding `bytes` more value bytes.
    pub fn reserve(&mut self, nodes: usize, bytes: usize) {
        self.kind_of.reserve(nodes);
        self.arena.reserve(bytes);
        self.ends.reserve(nodes);
        self.hashes.reserve(nodes);
        self.keys.reserve(nodes);
        self.seen.reserve(nodes);
        self.index.reserve(nodes);
    }

    /// Adds links given in key order without duplicates (as a snapshot holds
    /// them) in one step; links in any other order are added one by one.
    pub fn add_sorted_links(&mut self, links: Vec<(u64, u32)>) {
        // Links sorted in the background are this thread's again first.
        self.links.take_back();
        let n = self.kind_of.len();
        let strictly_sorted = links.windows(2).all(|w| w[0].0 < w[1].0);
        if strictly_sorted && self.links.sorted.is_empty() && self.links.pending.is_empty() {
            self.links.sorted = links;
            self.links.node_bits = (usize::BITS - n.leading_zeros()).max(1);
        } else {
            for (key, events) in links {
                self.links.push(key, events, n);
            }
        }
    }

    /// Adds `events` to the link between `a` and `b`.
    pub fn add_link(&mut self, a: u32, b: u32, events: u32) {
        self.links.push(edge_key(a, b), events, self.kind_of.len());
    }

    /// Sorts links on a thread of their own until the next [`Graph::seal`]:
    /// for a graph about to take many events.
    pub fn link_in_background(&mut self) {
        self.links.in_background();
    }

    /// Merges the links added since the last call; [`Graph::links`] needs it.
    pub fn seal(&mut self) {
        self.links.merge(self.kind_of.len());
    }

    /// Every link as `(edge key, events)`, by key ([`edge_ends`] gives the
    /// ends, lower first).
    ///
    /// # Panics
    /// If links were added since [`Graph::seal`]: a reader must never see part
    /// of the graph.
    pub fn links(&self) -> &[(u64, u32)] {
        assert!(
            self.links.pending.is_empty() && self.links.worker.is_none(),
            "identity graph read before it was sealed"
        );
        &self.links.sorted
    }

    /// The graph induced by `nodes` (sorted, distinct): node `i` of the result is
    /// `nodes[i]`, links kept when both ends are in.
    pub fn subgraph(&self, nodes: &[u32]) -> Graph {
        let mut sub = Graph::default();
        let mut index: HashMap<u32, u32> = HashMap::with_capacity(nodes.len());
        for &n in nodes {
            let i = sub.push_keyed(
                self.kind(n),
                self.value(n),
                (self.key(n), self.key_hash(n)),
                self.first_seen(n),
                self.last_seen(n),
            );
            index.insert(n, i);
        }
        for &(key, events) in self.links() {
            let (a, b) = edge_ends(key);
            if let (Some(&x), Some(&y)) = (index.get(&a), index.get(&b)) {
                sub.add_link(x, y, events);
            }
        }
        sub.seal();
        sub
    }

    /// Records one event carrying `nodes` (deduplicated here) at `time` (µs).
    #[cfg(test)]
    pub fn add_event(&mut self, nodes: &mut Vec<u32>, time: i64) {
        for &n in nodes.iter() {
            let seen = &mut self.seen[n as usize];
            *seen = (seen.0.min(time), seen.1.max(time));
        }
        self.link_event(nodes);
    }

    /// Records one event carrying `nodes` (deduplicated here) whose seen
    /// times are updated: counts it and links its nodes.
    fn link_event(&mut self, nodes: &mut Vec<u32>) {
        self.events += 1;
        nodes.sort_unstable();
        nodes.dedup();
        if self.track {
            self.touched.extend_from_slice(nodes);
        }
        let n = self.kind_of.len();
        if nodes.len() <= CLIQUE_MAX {
            for (i, &a) in nodes.iter().enumerate() {
                for &b in &nodes[i + 1..] {
                    self.links.push(edge_key(a, b), 1, n);
                }
            }
        } else {
            // A star from the node with the smallest content hash: deterministic.
            let hub = nodes
                .iter()
                .copied()
                .min_by_key(|&n| self.hashes[n as usize])
                .unwrap_or(nodes[0]);
            for &b in nodes.iter().filter(|&&b| b != hub) {
                self.links.push(edge_key(hub, b), 1, n);
            }
        }
    }

    /// Adds every event of a batch [`prepare`]d for it, in row order.
    ///
    /// Three passes over the batch's kept identifiers, each a loop of
    /// independent random reads that the processor overlaps: their nodes
    /// (one probe of the index each; new values appended), their first and
    /// last seen times, then the links of each event.
    pub fn add_prepared(&mut self, p: &Prepared) -> Result<()> {
        let cols = IdColumns::of(&p.batch)?;
        self.blocked += p.blocked;
        let mut nodes = std::mem::take(&mut self.scratch);
        nodes.clear();
        nodes.reserve(p.keys.len());
        for (i, &key) in p.keys.iter().enumerate() {
            let n = match self.node_of(key) {
                Some(n) => n,
                None => {
                    let entry = p.entries[i] as usize;
                    let (kind, value) = (cols.kinds.value(entry), cols.values.value(entry));
                    self.new_node(kind, value, key, key_hash(kind, value))
                }
            };
            nodes.push(n);
        }
        let mut start = 0;
        for (row, &end) in p.row_ends.iter().enumerate() {
            let time = cols.times.value(row);
            for &n in &nodes[start..end as usize] {
                let seen = &mut self.seen[n as usize];
                *seen = (seen.0.min(time), seen.1.max(time));
            }
            start = end as usize;
        }
        let mut event = Vec::with_capacity(8);
        let mut start = 0;
        for &end in &p.row_ends {
            let end = end as usize;
            if end > start {
                event.clear();
                event.extend_from_slice(&nodes[start..end]);
                self.link_event(&mut event);
            }
            start = end;
        }
        self.scratch = nodes;
        Ok(())
    }
}

/// The columns of an event batch OneID reads.
struct IdColumns<'a> {
    times: &'a arrow::array::TimestampMicrosecondArray,
    ids: &'a GenericListArray<i32>,
    kinds: Strings<'a>,
    values: Strings<'a>,
}

impl<'a> IdColumns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self> {
        let times = batch
            .column_by_name("event_time")
            .ok_or_else(|| Error::Internal("identity: no `event_time` column".into()))?;
        let times = times
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal("identity: `event_time` is not µs".into()))?;
        let ids = batch
            .column_by_name("identifiers")
            .ok_or_else(|| Error::Internal("identity: no `identifiers` column".into()))?;
        let ids: &GenericListArray<i32> = ids
            .as_list_opt()
            .ok_or_else(|| Error::Internal("identity: `identifiers` is not a list".into()))?;
        let entries: &StructArray = ids.values().as_struct();
        Ok(IdColumns {
            times,
            ids,
            kinds: Strings::of(entries.column(0).as_ref(), "identifiers.kind")?,
            values: Strings::of(entries.column(1).as_ref(), "identifiers.value")?,
        })
    }
}

/// An event batch with the work that needs no graph done: the rules'
/// blocklists applied and every kept identifier's [`key128`] computed. Made
/// by [`prepare`] on the threads that read the batches, so the one thread
/// that builds the graph only probes its index and appends links.
#[derive(Debug)]
pub(crate) struct Prepared {
    batch: RecordBatch,
    /// Per row, the end of its kept identifiers in `keys` and `entries`.
    row_ends: Vec<u32>,
    /// The [`key128`] of each kept identifier, rows in order.
    keys: Vec<u128>,
    /// Where each kept identifier sits in the `identifiers` list's values.
    entries: Vec<u32>,
    /// Identifiers the rules block.
    blocked: u64,
}

/// Prepares `batch` (columns `event_time` and `identifiers`) for
/// [`Graph::add_prepared`]: a null `(kind, value)` or a value the rules
/// block is left out; so is a null list.
pub(crate) fn prepare(batch: RecordBatch, rules: &CompiledRules) -> Result<Prepared> {
    let cols = IdColumns::of(&batch)?;
    let offsets = cols.ids.value_offsets();
    let total = (offsets[offsets.len() - 1] - offsets[0]) as usize;
    let mut row_ends = Vec::with_capacity(batch.num_rows());
    let mut keys = Vec::with_capacity(total);
    let mut entries = Vec::with_capacity(total);
    let mut blocked = 0u64;
    // A batch holds a handful of distinct kinds: each one's rule is looked
    // up once (per dictionary entry when the kinds are a dictionary), not
    // per identifier.
    let mut by_code: Vec<Option<&super::rules::CompiledKind>> = Vec::new();
    if let Strings::Dict(_, dict) = &cols.kinds {
        by_code = (0..dict.len())
            .map(|k| (!dict.is_null(k)).then(|| rules.kind(dict.value(k))))
            .collect();
    }
    let mut by_name: Vec<(&str, &super::rules::CompiledKind)> = Vec::new();
    for row in 0..batch.num_rows() {
        if !cols.ids.is_null(row) {
            for j in offsets[row] as usize..offsets[row + 1] as usize {
                let (Some(kind), Some(value)) = (cols.kinds.get(j), cols.values.get(j)) else {
                    continue;
                };
                let rule = match &cols.kinds {
                    Strings::Dict(codes, _) => by_code[codes.value(j) as usize],
                    _ => None,
                };
                let rule = match rule {
                    Some(rule) => rule,
                    None => match by_name.iter().find(|(k, _)| *k == kind) {
                        Some(&(_, rule)) => rule,
                        None => {
                            let rule = rules.kind(kind);
                            by_name.push((kind, rule));
                            rule
                        }
                    },
                };
                if rule.blocked(value) {
                    blocked += 1;
                    continue;
                }
                keys.push(key128(kind, value));
                entries.push(j as u32);
            }
        }
        row_ends.push(keys.len() as u32);
    }
    Ok(Prepared {
        batch,
        row_ends,
        keys,
        entries,
        blocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_maps_compare_whole_keys_in_24_byte_entries() {
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 24);
        let mut m = KeyMap::default();
        let (a, b) = (
            key128("phone", "+8613800138000"),
            key128("email", "a@example.com"),
        );
        let same_low = a ^ (1u128 << 100);
        assert_eq!(m.insert(a, 1u32), None);
        assert_eq!(m.insert(b, 2), None);
        assert_eq!(m.insert(a, 3), Some(1));
        assert_eq!(
            (m.get(a), m.get(b), m.get(same_low)),
            (Some(&3), Some(&2), None)
        );
        assert!(m.get(b).is_some() && m.get(same_low).is_none());
    }

    proptest::proptest! {
        /// The map agrees with a `HashMap` model through growth, including
        /// keys sharing a low word (one probe run) and the all-zero key.
        #[test]
        fn key_map_equals_a_model(
            ops in proptest::collection::vec((0u64..40, 0u64..3, proptest::prelude::any::<u32>()), 0..400),
        ) {
            let mut m = KeyMap::default();
            let mut model = std::collections::HashMap::new();
            let key = |lo: u64, hi: u64| (u128::from(hi) << 64) | u128::from(lo);
            for &(lo, hi, v) in &ops {
                let k = key(lo, hi);
                proptest::prop_assert_eq!(m.insert(k, v), model.insert(k, v));
            }
            for lo in 0..41 {
                for hi in 0..4 {
                    let k = key(lo, hi);
                    proptest::prop_assert_eq!(m.get(k), model.get(&k));
                }
            }
            proptest::prop_assert_eq!(m.len == 0 && m.empty_key.is_none(), model.is_empty());
        }
    }

    proptest::proptest! {
        /// A map built in one pass from a node's keys holds each key's index,
        /// names a key that repeats an earlier one, and takes further inserts like any other.
        #[test]
        fn key_map_of_keys_equals_inserts(
            keys in proptest::collection::vec((0u64..60, 0u64..3), 0..300),
            spread in proptest::prelude::any::<bool>(),
            spare in 0usize..40,
            more in proptest::collection::vec((0u64..80, 0u64..3), 0..100),
        ) {
            // Low words spread over the table, or all on its first slots.
            let key = |lo: u64, hi: u64| {
                let lo = if spread { lo.wrapping_mul(0x9E37_79B9_7F4A_7C15) } else { lo };
                (u128::from(hi) << 64) | u128::from(lo)
            };
            let keys: Vec<u128> = keys.iter().map(|&(lo, hi)| key(lo, hi)).collect();
            let repeat = (0..keys.len()).find(|&i| keys[..i].contains(&keys[i]));
            match (KeyMap::of_keys(&keys, spare), repeat) {
                (Err(i), Some(_)) => proptest::prop_assert!(keys[..i].contains(&keys[i])),
                (Ok(mut m), None) => {
                    let mut model: std::collections::HashMap<u128, u32> =
                        keys.iter().enumerate().map(|(i, &k)| (k, i as u32)).collect();
                    for (i, &k) in keys.iter().enumerate() {
                        proptest::prop_assert_eq!(m.get(k), Some(&(i as u32)));
                    }
                    for (j, &(lo, hi)) in more.iter().enumerate() {
                        let k = key(lo, hi);
                        proptest::prop_assert_eq!(m.insert(k, 1000 + j as u32), model.insert(k, 1000 + j as u32));
                    }
                    for lo in 0..81 {
                        for hi in 0..4 {
                            let k = key(lo, hi);
                            proptest::prop_assert_eq!(m.get(k), model.get(&k));
                        }
                    }
                }
                (got, want) => proptest::prop_assert!(false, "of_keys {:?}, first repeat {:?}", got.err(), want),
            }
        }
    }
    proptest::proptest! {
        /// Links added in any order, merged at any points, sorted on a
        /// thread of their own from any point, equal a sorted map of summed
        /// counts.
        #[test]
        fn links_equal_a_sorted_map(
            adds in proptest::collection::vec((0u32..3000, 0u32..3000, 1u32..4, 0u8..8), 0..600),
        ) {
            let mut links = Links::default();
            let mut model = std::collections::BTreeMap::new();
            for &(a, b, events, then) in &adds {
                links.push(edge_key(a, b), events, 3000);
                *model.entry(edge_key(a, b)).or_insert(0u32) += events;
                match then {
                    0 => links.merge(3000),
                    1 => links.in_background(),
                    _ => {}
                }
            }
            links.merge(3000);
            proptest::prop_assert!(links.pending.is_empty());
            let want: Vec<(u64, u32)> = model.into_iter().collect();
            proptest::prop_assert_eq!(links.sorted, want);
        }
    }

    #[test]
    fn interning_and_edges() {
        let mut g = Graph::default();
        let a = g.intern("phone", "+8613800138000");
        let b = g.intern("email", "a@b.cn");
        assert_eq!(g.intern("phone", "+8613800138000"), a);
        assert_eq!(g.find("email", "a@b.cn"), Some(b));
        assert_eq!(g.find("email", "x@b.cn"), None);
        assert_eq!((g.kind(b), g.value(b)), ("email", "a@b.cn"));
        g.add_event(&mut vec![b, a, a], 10);
        g.add_event(&mut vec![a, b], 5);
        g.seal();
        assert_eq!(g.links(), [(edge_key(a, b), 2)]);
        assert_eq!((g.first_seen(a), g.last_seen(a)), (5, 10));
        assert_eq!(edge_ends(edge_key(b, a)), (a, b));
    }

    /// An event's time and identifiers (`None`: a null list), each a
    /// `(kind, value)` that may be null.
    type Row<'a> = (i64, Option<&'a [(Option<&'a str>, Option<&'a str>)]>);

    /// An `event_time, identifiers` batch, the identifiers' kinds plain or
    /// as a dictionary (as the data files are read).
    fn id_batch(rows: &[Row], dict: bool) -> RecordBatch {
        use arrow::array::{
            ArrayBuilder, ListBuilder, StringBuilder, StringDictionaryBuilder, StructBuilder,
            TimestampMicrosecondArray,
        };
        use arrow::datatypes::{Field, Schema};
        let kind_type = if dict {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        } else {
            DataType::Utf8
        };
        let fields = vec![
            Field::new("kind", kind_type, true),
            Field::new("value", DataType::Utf8, true),
        ];
        let kinds: Box<dyn ArrayBuilder> = if dict {
            Box::new(StringDictionaryBuilder::<Int32Type>::new())
        } else {
            Box::new(StringBuilder::new())
        };
        let mut list = ListBuilder::new(StructBuilder::new(
            fields,
            vec![kinds, Box::new(StringBuilder::new())],
        ));
        for (_, ids) in rows {
            let Some(ids) = ids else {
                list.append(false);
                continue;
            };
            for &(k, v) in *ids {
                let entry = list.values();
                if dict {
                    entry
                        .field_builder::<StringDictionaryBuilder<Int32Type>>(0)
                        .unwrap()
                        .append_option(k);
                } else {
                    entry
                        .field_builder::<StringBuilder>(0)
                        .unwrap()
                        .append_option(k);
                }
                entry
                    .field_builder::<StringBuilder>(1)
                    .unwrap()
                    .append_option(v);
                entry.append(true);
            }
            list.append(true);
        }
        let times = TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let ids = list.finish();
        let schema = Schema::new(vec![
            Field::new("event_time", times.data_type().clone(), false),
            Field::new("identifiers", ids.data_type().clone(), true),
        ]);
        RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![std::sync::Arc::new(times), std::sync::Arc::new(ids)],
        )
        .unwrap()
    }

    /// What the reading threads prepare and the graph thread adds equals
    /// interning and adding each event in turn: the same nodes in the same
    /// order, seen times, links, events and blocked values, with the
    /// identifiers' kinds plain or as a dictionary, the links sorted here or
    /// on a thread of their own.
    #[test]
    fn prepared_batches_equal_events_added_one_by_one() {
        let rules = crate::identity::rules::IdentityRules::from_toml(
            "[kinds.phone]\nblocklist = ['+8613800000000']\npatterns = ['^\\+861390000\\d{4}$']\n",
        )
        .unwrap()
        .compile()
        .unwrap();
        let (a, b, d) = (
            (Some("phone"), Some("+8613800138000")),
            (Some("email"), Some("b@example.com")),
            (Some("device"), Some("d1")),
        );
        let (r0, r3) = ([a, b, a], [(None, Some("x")), (Some("email"), None), d]);
        let r4 = [
            (Some("phone"), Some("+8613800000000")),
            (Some("phone"), Some("+8613900001234")),
        ];
        let r5 = [b, d, (Some("openid"), Some("wx1:o1"))];
        let r6 = [(Some("phone"), Some("+8613900001234")), a];
        let rows: Vec<Row> = vec![
            (10, Some(&r0)),
            (5, None),
            (7, Some(&[])),
            (8, Some(&r3)),
            (9, Some(&r4)),
            (3, Some(&r5)),
            (12, Some(&r6)),
        ];
        // The model: each event interned and added in turn.
        let mut want = Graph::default();
        for &(time, ids) in &rows {
            let mut nodes = Vec::new();
            for &(k, v) in ids.unwrap_or_default() {
                let (Some(k), Some(v)) = (k, v) else { continue };
                if rules.kind(k).blocked(v) {
                    want.blocked += 1;
                } else {
                    nodes.push(want.intern(k, v));
                }
            }
            if !nodes.is_empty() {
                want.add_event(&mut nodes, time);
            }
        }
        want.seal();
        for (dict, background) in [(false, false), (true, false), (true, true), (false, true)] {
            let mut g = Graph::default();
            if background {
                g.link_in_background();
            }
            // Two batches, as two files would give them.
            let (first, second) = rows.split_at(3);
            for part in [first, second] {
                g.add_prepared(&prepare(id_batch(part, dict), &rules).unwrap())
                    .unwrap();
            }
            g.seal();
            let what = format!("dict {dict}, background {background}");
            assert_eq!(g.len(), want.len(), "{what}");
            for n in 0..g.len() as u32 {
                assert_eq!(
                    (g.kind(n), g.value(n), g.key(n), g.key_hash(n)),
                    (want.kind(n), want.value(n), want.key(n), want.key_hash(n)),
                    "{what}: node {n}"
                );
                assert_eq!(
                    (g.first_seen(n), g.last_seen(n)),
                    (want.first_seen(n), want.last_seen(n)),
                    "{what}: node {n}"
                );
            }
            assert_eq!(g.links(), want.links(), "{what}");
            assert_eq!((g.events, g.blocked), (want.events, want.blocked), "{what}");
            assert_eq!((g.events, g.blocked), (4, 3), "{what}");
        }
    }

    #[test]
    fn wide_events_link_as_a_star() {
        let mut g = Graph::default();
        let mut nodes: Vec<u32> = (0..20)
            .map(|i| g.intern("device", &format!("d{i}")))
            .collect();
        g.add_event(&mut nodes, 0);
        g.seal();
        assert_eq!(g.links().len(), 19);
    }
}
