//! Persons as connected components of the identity graph, under the rules.
//!
//! 1. Edges are applied strongest first: an edge's strength is the lower
//!    priority of its two kinds; within a strength, by the content hashes of
//!    its ends. The order never depends on the order events arrived in.
//! 2. Before the edges of strength `p`, the super-node guard looks at every
//!    value of priority `p`: the number of distinct persons among its
//!    neighbours of priority `p` or more (persons as formed by the stronger
//!    edges so far). More than the kind's K, and the value is quarantined: none
//!    of its edges is used, and it belongs to no person.
//! 3. A union that would give the person more values of a capped class (kind,
//!    or kind and app id for openids) than the cap is refused and recorded.
//! 4. Values of kinds that may not merge are attached afterwards to the person
//!    they co-occur with on most events (ties: smallest content hash).
//!
//! Union-find with path halving and union by rank; each node's parent, rank
//! and counts per capped class live in one record.

use hashbrown::HashMap;

use super::graph::{Graph, edge_ends};
use super::rules::{CompiledKind, CompiledRules, cap_class};
use crate::prefetch::prefetch;

/// A value the super-node guard took out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quarantine {
    pub node: u32,
    /// Distinct persons its links would have joined.
    pub persons: u32,
    /// The K it exceeded.
    pub limit: u32,
}

/// A union the caps refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub a: u32,
    pub b: u32,
    /// The capped class (`phone`, `openid:wx1`) that would have overflowed.
    pub class: String,
    /// How many values of that class the merged person would have held.
    pub would_hold: u32,
    pub cap: u32,
}

/// The outcome: a person index per node.
#[derive(Debug, Clone)]
pub(crate) struct Components {
    /// `person[n]`: dense person index of node `n`, or [`NONE`] when quarantined.
    pub person: Vec<u32>,
    pub persons: u32,
    pub quarantined: Vec<Quarantine>,
    pub refused: Vec<Refusal>,
}

/// No person.
pub(crate) const NONE: u32 = u32::MAX;

pub(crate) struct UnionFind {
    parent: Vec<u32>,
    rank: Vec<u8>,
}

impl UnionFind {
    pub(crate) fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            rank: vec![0; n],
        }
    }

    pub(crate) fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Links roots `a` and `b`; returns the new root.
    pub(crate) fn link(&mut self, a: u32, b: u32) -> u32 {
        let (ra, rb) = (self.rank[a as usize], self.rank[b as usize]);
        if ra < rb {
            self.parent[a as usize] = b;
            b
        } else {
            self.parent[b as usize] = a;
            if ra == rb {
                self.rank[a as usize] += 1;
            }
            a
        }
    }
}

/// One bit per node.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn get(&self, i: u32) -> bool {
        self.0[i as usize / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u32) {
        self.0[i as usize / 64] |= 1 << (i % 64);
    }
}

/// The rules of one kind, or of one app's openids: what the passes read of a
/// node, looked up through a 2-byte slot per node.
#[derive(Debug, Clone, Copy)]
struct Slot {
    priority: u8,
    merge: bool,
    /// The super-node guard's K.
    guard: u32,
    /// Capped class index, or `u16::MAX`.
    class: u16,
}

/// Per-node facts from the rules.
struct NodeRules {
    slot: Vec<u16>,
    slots: Vec<Slot>,
    class_names: Vec<String>,
    caps: Vec<u32>,
}

impl NodeRules {
    fn of(&self, node: u32) -> Slot {
        self.slots[self.slot[node as usize] as usize]
    }

    /// A new slot, with a new capped class when the rule caps `class`.
    fn push(&mut self, rule: &CompiledKind, class: String) -> u16 {
        let class = match rule.cap {
            Some(cap) if rule.merge => {
                self.class_names.push(class);
                self.caps.push(cap);
                (self.caps.len() - 1) as u16
            }
            _ => u16::MAX,
        };
        self.slots.push(Slot {
            priority: rule.priority,
            merge: rule.merge,
            guard: rule.guard,
            class,
        });
        (self.slots.len() - 1) as u16
    }
}

/// A kind whose values are capped per app id (openids): its slot depends on the value.
const PER_APP: u16 = u16::MAX;

fn node_rules(g: &Graph, rules: &CompiledRules) -> NodeRules {
    let n = g.len();
    let mut out = NodeRules {
        slot: Vec::with_capacity(n),
        slots: Vec::new(),
        class_names: Vec::new(),
        caps: Vec::new(),
    };
    // Rules and cap classes are looked up once per kind (and per app for
    // openids), never per node: this runs over millions of nodes.
    let mut by_kind: Vec<Option<u16>> = Vec::new();
    let mut by_app: HashMap<(u16, &str), u16> = HashMap::new();
    for node in 0..n as u32 {
        let k = g.kind_index(node);
        if by_kind.len() <= k as usize {
            by_kind.resize(k as usize + 1, None);
        }
        let slot = match by_kind[k as usize] {
            Some(s) if s != PER_APP => s,
            known => {
                let kind = g.kind(node);
                let rule = rules.kind(kind);
                let per_app = known == Some(PER_APP)
                    || (kind == "openid" && rule.merge && rule.cap.is_some());
                if per_app {
                    by_kind[k as usize] = Some(PER_APP);
                    let (kind, app) = cap_class(kind, g.value(node));
                    match by_app.get(&(k, app)) {
                        Some(&s) => s,
                        None => {
                            let s = out.push(rule, format!("{kind}:{app}"));
                            by_app.insert((k, app), s);
                            s
                        }
                    }
                } else {
                    let s = out.push(rule, kind.to_string());
                    by_kind[k as usize] = Some(s);
                    s
                }
            }
        };
        out.slot.push(slot);
    }
    out
}

/// Union-find over nodes whose roots carry their person's rank and count of
/// values per capped class. Path halving, union by rank.
///
/// One word per node and nothing else node-sized: the finds are bound by
/// cache misses on random nodes, and every node-sized array is memory the
/// job must fault in before it can use it. A word is a parent node id, or
/// for a root [`ROOT`] with either the root's row in `rows` or, while it
/// holds only itself, its capped class (a payload from [`SINGLE`] on: rank
/// 0, one value of that class), so that a lone root's class is read from
/// the word the find already loaded. While a strength's first pass runs, a
/// root it touched holds [`ROOT`] | [`MARK`] | its position in
/// [`LevelRoots`]; once the persons are numbered, a person's root holds
/// [`ROOT`] | [`MARK`] | its person index.
struct CappedUnionFind {
    parent: Vec<u32>,
    /// Rows of `1 + ncls` counters: the rank, then the count per capped
    /// class. Counts fit 16 bits: a union is refused before any count passes
    /// its cap, and caps are at most `MAX_CAP`.
    rows: Vec<u16>,
    ncls: usize,
}

/// A root's word.
const ROOT: u32 = 1 << 31;
/// A root's payload is a position or person index, not a row.
const MARK: u32 = 1 << 30;
const PAYLOAD: u32 = MARK - 1;
/// Payloads from here on are lone roots: `SINGLE + class` (`u16::MAX`: no
/// capped class). Rows stay below it (there are fewer rows than nodes).
const SINGLE: u32 = PAYLOAD - (1 << 16);
/// Nodes the encoding can hold (node ids must not reach [`ROOT`], positions
/// and person indexes must fit [`PAYLOAD`], rows must stay below [`SINGLE`]).
pub(crate) const MAX_NODES: usize = SINGLE as usize;

/// What a plain root's word says of its person.
#[derive(Clone, Copy)]
enum Held {
    /// Only the root itself, of this capped class (or `u16::MAX`).
    Alone(u16),
    Row(u32),
}

impl Held {
    fn of(word: u32) -> Held {
        debug_assert!(word & ROOT != 0 && word & MARK == 0, "not a plain root");
        match word & PAYLOAD {
            p if p >= SINGLE => Held::Alone((p - SINGLE) as u16),
            row => Held::Row(row),
        }
    }
}

impl CappedUnionFind {
    /// One lone root per node; room for `rows` rows (reserved, so the rows
    /// are never copied as they grow; pages are touched only when used).
    fn new(nr: &NodeRules, rows: usize) -> Self {
        CappedUnionFind {
            parent: nr
                .slot
                .iter()
                .map(|&s| ROOT | (SINGLE + u32::from(nr.slots[usize::from(s)].class)))
                .collect(),
            rows: Vec::with_capacity(rows * (1 + nr.caps.len())),
            ncls: nr.caps.len(),
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        loop {
            let p = self.parent[x as usize];
            if p & ROOT != 0 {
                return x;
            }
            let grand = self.parent[p as usize];
            if grand & ROOT != 0 {
                return p;
            }
            self.parent[x as usize] = grand;
            x = grand;
        }
    }

    fn row(&self, row: u32) -> &[u16] {
        &self.rows[row as usize * (1 + self.ncls)..][..1 + self.ncls]
    }

    /// The rank of a person whose root has word `word`.
    fn rank(&self, word: u32) -> u16 {
        match Held::of(word) {
            Held::Alone(_) => 0,
            Held::Row(row) => self.row(row)[0],
        }
    }

    /// Adds the counts of a person whose root has word `word` into `out`
    /// (`ncls` long).
    fn add_counts(&self, word: u32, out: &mut [u32]) {
        match Held::of(word) {
            Held::Alone(class) => {
                if let Some(o) = out.get_mut(usize::from(class)) {
                    *o += 1;
                }
            }
            Held::Row(row) => {
                for (o, &v) in out.iter_mut().zip(&self.row(row)[1..]) {
                    *o += u32::from(v);
                }
            }
        }
    }

    /// Makes `r` a root with rank `rank` and counts `counts` (each within
    /// `MAX_CAP`); `word` is its word as a plain root (its row is reused).
    fn set_row(&mut self, r: u32, word: u32, rank: u16, counts: &[u32]) {
        let stride = 1 + self.ncls;
        let row = match Held::of(word) {
            Held::Row(row) => row,
            Held::Alone(_) => {
                let row = (self.rows.len() / stride) as u32;
                self.rows.resize(self.rows.len() + stride, 0);
                row
            }
        };
        self.parent[r as usize] = ROOT | row;
        let dst = &mut self.rows[row as usize * stride..][..stride];
        dst[0] = rank;
        for (d, &c) in dst[1..].iter_mut().zip(counts) {
            *d = c as u16;
        }
    }

    /// Joins the persons of `a` and `b` unless that gives one more values of
    /// a capped class than its cap: then the refusal. `held` is scratch.
    fn union_capped(
        &mut self,
        a: u32,
        b: u32,
        nr: &NodeRules,
        held: &mut Vec<u32>,
    ) -> Option<Refusal> {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return None;
        }
        let (wa, wb) = (self.parent[ra as usize], self.parent[rb as usize]);
        held.clear();
        held.resize(self.ncls, 0);
        self.add_counts(wa, held);
        self.add_counts(wb, held);
        if let Some(c) = (0..self.ncls).find(|&c| held[c] > nr.caps[c]) {
            return Some(Refusal {
                a,
                b,
                class: nr.class_names[c].clone(),
                would_hold: held[c],
                cap: nr.caps[c],
            });
        }
        self.link((ra, wa), (rb, wb), held);
        None
    }

    /// Links roots `a` and `b`, each with its word (their counts summed in
    /// `counts`); returns the new root.
    fn link(&mut self, (a, wa): (u32, u32), (b, wb): (u32, u32), counts: &[u32]) -> u32 {
        let (ra, rb) = (self.rank(wa), self.rank(wb));
        let (root, word, child, rank) = match ra.cmp(&rb) {
            std::cmp::Ordering::Less => (b, wb, a, rb),
            std::cmp::Ordering::Greater => (a, wa, b, ra),
            std::cmp::Ordering::Equal => (a, wa, b, ra + 1),
        };
        self.parent[child as usize] = root;
        self.set_row(root, word, rank, counts);
        root
    }

    /// The person index of root `r`, numbering it `next` if it has none yet.
    fn person(&mut self, r: u32, next: &mut u32) -> u32 {
        let word = &mut self.parent[r as usize];
        if *word & MARK == 0 {
            *word = ROOT | MARK | *next;
            *next += 1;
        }
        *word & PAYLOAD
    }
}

/// The main union-find's roots one strength's edges touch, by position (the
/// order of first touch), and which of them the strength's edges would join
/// if no cap refused a union. A touched root's word in the main union-find
/// holds its position while the first pass runs; `saved` keeps the word it
/// had.
#[derive(Default)]
struct LevelRoots {
    roots: Vec<u32>,
    saved: Vec<u32>,
    /// Parent by position; path halving.
    parent: Vec<u32>,
    /// After [`LevelRoots::groups`]: each position's group (the position of
    /// its first-touched root), the positions ordered by group, and where
    /// each group's run starts in that order.
    group: Vec<u32>,
    order: Vec<u32>,
    start: Vec<u32>,
}

impl LevelRoots {
    /// Position of main root `r`, added if new.
    fn touch(&mut self, uf: &mut CappedUnionFind, r: u32) -> u32 {
        let word = uf.parent[r as usize];
        if word & MARK != 0 {
            return word & PAYLOAD;
        }
        let p = self.roots.len() as u32;
        uf.parent[r as usize] = ROOT | MARK | p;
        self.roots.push(r);
        self.saved.push(word);
        self.parent.push(p);
        p
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        // By position: the later-touched joins the earlier, so trees stay
        // shallow enough with path halving and no rank array, and a group's
        // representative is its first position.
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi as usize] = lo;
        }
    }

    /// Sorts the positions by group (a counting sort: groups are
    /// positions). The touched roots keep their marks: each group's pass
    /// gives its roots their new or saved words.
    fn groups(&mut self) {
        let t = self.roots.len();
        self.group.clear();
        for p in 0..t as u32 {
            let gp = self.find(p);
            self.group.push(gp);
        }
        self.start.clear();
        self.start.resize(t + 1, 0);
        for &gp in &self.group {
            self.start[gp as usize + 1] += 1;
        }
        for i in 0..t {
            self.start[i + 1] += self.start[i];
        }
        self.order.clear();
        self.order.resize(t, 0);
        // The fill cursor of each group is its start, borrowed and put back.
        for (p, &gp) in self.group.iter().enumerate() {
            let at = &mut self.start[gp as usize];
            self.order[*at as usize] = p as u32;
            *at += 1;
        }
        for i in (0..t).rev() {
            self.start[i + 1] = self.start[i];
        }
        self.start[0] = 0;
    }

    /// The positions of group `gp` (its representative first).
    fn members(&self, gp: u32) -> &[u32] {
        &self.order[self.start[gp as usize] as usize..self.start[gp as usize + 1] as usize]
    }

    fn clear(&mut self) {
        self.roots.clear();
        self.saved.clear();
        self.parent.clear();
    }
}

/// How far ahead the passes over a strength's edges and groups ask for the
/// union-find words they will read (random reads in arrays of tens of MB):
/// the first pass's and second pass's time fell by about a fifth each
/// (`resolve --full` of 3.2 M values, runs alternating with and without).
const AHEAD: usize = 16;

/// Computes the persons of `g` under `rules`.
///
/// Applying a strength's edges one by one in the deterministic order is only
/// needed where a cap may refuse a union. So each strength goes in two
/// passes: first its edges join the current persons without caps (in
/// [`LevelRoots`]); every joined group whose class counts stay within the
/// caps is then linked in any order — no union in it could have been
/// refused, as every union in between holds a part of the group's values —
/// and only the edges of groups over a cap are sorted and applied one by one
/// with the caps checked. The outcome is that of the sequential order, which
/// the tests check against a plain implementation of it.
///
/// Memory is part of the cost: every node-sized array is faulted in page by
/// page on first touch, which on some machines costs more than the unions.
/// So the node-sized arrays are the rules' slot per node, one union-find
/// word per node, a degree per node that later holds the attach choices, a
/// quarantine bit and the output.
pub(crate) fn components(g: &Graph, rules: &CompiledRules) -> Components {
    let n = g.len();
    // The caller refuses larger graphs (`Workspace::resolve`).
    assert!(
        n <= MAX_NODES,
        "identity graph of {n} nodes: at most {MAX_NODES}"
    );
    let started = std::time::Instant::now();
    let faults_at_start = minor_faults();
    let nr = node_rules(g, rules);
    let ncls = nr.caps.len();
    let t_rules = started.elapsed();

    // Mergeable edges bucketed by strength (strongest first), in two passes
    // over the edge map: count, then place. Attach edges kept aside.
    let mut count = [0usize; 257];
    let mut degree = vec![0u32; n];
    let mut attaching = 0usize;
    for &(key, _) in g.links() {
        let (a, b) = edge_ends(key);
        let (sa, sb) = (nr.of(a), nr.of(b));
        match (sa.merge, sb.merge) {
            (true, true) => {
                count[usize::from(u8::MAX - sa.priority.min(sb.priority)) + 1] += 1;
                degree[a as usize] += 1;
                degree[b as usize] += 1;
            }
            (false, false) => {}
            _ => attaching += 1,
        }
    }
    for i in 0..256 {
        count[i + 1] += count[i];
    }
    let level_start = count;
    let mut fill = count;
    let mut edges = vec![(0u32, 0u32); level_start[256]];
    let mut attach: Vec<(u32, u32, u32)> = Vec::with_capacity(attaching);
    for &(key, events) in g.links() {
        let (a, b) = edge_ends(key);
        let (sa, sb) = (nr.of(a), nr.of(b));
        match (sa.merge, sb.merge) {
            (true, true) => {
                let level = usize::from(u8::MAX - sa.priority.min(sb.priority));
                edges[fill[level]] = (a, b);
                fill[level] += 1;
            }
            (false, true) => attach.push((a, b, events)),
            (true, false) => attach.push((b, a, events)),
            (false, false) => {}
        }
    }
    let t_edges = started.elapsed();

    // The values the guard must look at, strongest first: only a value with
    // more links than its K can join more than K persons, so the others
    // (nearly all) never enter the order. `degree` becomes each one's
    // position among them, for their neighbour lists.
    let mut guarded: Vec<(u8, u64, u32)> = (0..n as u32)
        .filter(|&v| {
            let s = nr.of(v);
            s.merge && degree[v as usize] > s.guard
        })
        .map(|v| (u8::MAX - nr.of(v).priority, g.key_hash(v), v))
        .collect();
    guarded.sort_unstable();
    let mut at = degree;
    at.fill(NONE);
    // Which nodes are guarded, as bits that stay in cache while every edge
    // is checked (the positions in `at` are read for the few that are).
    let mut is_guarded = Bits::new(n);
    for (i, &(_, _, v)) in guarded.iter().enumerate() {
        at[v as usize] = i as u32;
        is_guarded.set(v);
    }
    let mut near: Vec<(u32, u32)> = Vec::new();
    for &(a, b) in &edges {
        if is_guarded.get(a) {
            near.push((at[a as usize], b));
        }
        if is_guarded.get(b) {
            near.push((at[b as usize], a));
        }
    }
    drop(is_guarded);
    near.sort_unstable();
    let mut near_start = vec![0usize; guarded.len() + 1];
    for &(i, _) in &near {
        near_start[i as usize + 1] += 1;
    }
    for i in 0..guarded.len() {
        near_start[i + 1] += near_start[i];
    }
    let t_guard_lists = started.elapsed();

    // A capacity hint, not a bound: a row is made when a lone value first
    // joins another (a mergeable link each), and most persons hold two or
    // more values.
    let mut uf = CappedUnionFind::new(&nr, (n / 2).min(level_start[256]));
    // A bitset: an eighth of a `Vec<bool>`, so it stays in cache while edges
    // are checked against it.
    let mut quarantined_flag = Bits::new(n);
    let mut quarantined = Vec::new();
    let mut refused = Vec::new();
    let mut next_guarded = 0usize;
    let mut roots: Vec<u32> = Vec::new();
    let mut level_roots = LevelRoots::default();
    let largest_level = (0..256)
        .map(|l| level_start[l + 1] - level_start[l])
        .max()
        .unwrap_or(0);
    let mut joined: Vec<(u32, u32)> = Vec::with_capacity(largest_level);
    let mut counts: Vec<u32> = vec![0; ncls];
    let mut over: Vec<bool> = Vec::new();
    let mut held: Vec<u32> = Vec::new();
    let mut ordered: Vec<(u64, u64, u32, u32)> = Vec::new();
    let mut sequential = 0usize;
    // Time in each step, summed over the strengths (for the debug log).
    let mut steps = [std::time::Duration::ZERO; 4];
    let mut step = |i: usize, since: &mut std::time::Instant| {
        let now = std::time::Instant::now();
        steps[i] += now - *since;
        *since = now;
    };
    for level in 0..256 {
        let level_edges = &edges[level_start[level]..level_start[level + 1]];
        if level_edges.is_empty() {
            continue;
        }
        let mut since = std::time::Instant::now();
        let strength = u8::MAX - level as u8;
        // Guard every value of this priority (and stronger ones not yet looked at).
        while next_guarded < guarded.len() && u8::MAX - guarded[next_guarded].0 >= strength {
            let v = guarded[next_guarded].2;
            let s = nr.of(v);
            roots.clear();
            for &(_, w) in &near[near_start[next_guarded]..near_start[next_guarded + 1]] {
                if nr.of(w).priority >= s.priority && !quarantined_flag.get(w) {
                    roots.push(uf.find(w));
                }
            }
            next_guarded += 1;
            roots.sort_unstable();
            roots.dedup();
            if roots.len() as u32 > s.guard {
                quarantined_flag.set(v);
                quarantined.push(Quarantine {
                    node: v,
                    persons: roots.len() as u32,
                    limit: s.guard,
                });
            }
        }

        step(0, &mut since);
        // Pass 1: the groups this strength's edges would join, uncapped.
        joined.clear();
        for (i, &(a, b)) in level_edges.iter().enumerate() {
            if let Some(&(na, nb)) = level_edges.get(i + AHEAD) {
                prefetch(&uf.parent, na as usize);
                prefetch(&uf.parent, nb as usize);
            }
            if quarantined_flag.get(a) || quarantined_flag.get(b) {
                continue;
            }
            let (ra, rb) = (uf.find(a), uf.find(b));
            if ra == rb {
                continue;
            }
            let pa = level_roots.touch(&mut uf, ra);
            let pb = level_roots.touch(&mut uf, rb);
            level_roots.union(pa, pb);
            joined.push((pa, i as u32));
        }
        level_roots.groups();
        step(1, &mut since);
        // Pass 2: per group, its counts per capped class and its height,
        // from the roots' saved words. A group within the caps becomes one
        // person at once, its roots under the first one touched; the others
        // get their words back, and their edges are kept for the ordered
        // pass.
        let touched = level_roots.roots.len();
        over.clear();
        over.resize(touched, false);
        for gp in 0..touched as u32 {
            let members = level_roots.members(gp);
            if members.is_empty() {
                continue;
            }
            counts.fill(0);
            let mut height = 0u16;
            let first = level_roots.start[gp as usize] as usize;
            for (k, &p) in (first..).zip(members) {
                // The saved word and root of the member AHEAD on (each at a
                // random position), and the union-find word of the member
                // AHEAD / 2 on, whose root was asked for that many members ago.
                let (order, roots) = (&level_roots.order, &level_roots.roots);
                if let Some(&q) = order.get(k + AHEAD) {
                    prefetch(&level_roots.saved, q as usize);
                    prefetch(roots, q as usize);
                }
                if let Some(&q) = order.get(k + AHEAD / 2) {
                    prefetch(&uf.parent, roots[q as usize] as usize);
                }
                let word = level_roots.saved[p as usize];
                uf.add_counts(word, &mut counts);
                height = height.max(uf.rank(word) + u16::from(p != gp));
            }
            if (0..ncls).any(|c| counts[c] > nr.caps[c]) {
                over[gp as usize] = true;
                for &p in members {
                    uf.parent[level_roots.roots[p as usize] as usize] =
                        level_roots.saved[p as usize];
                }
                continue;
            }
            let rep = level_roots.roots[gp as usize];
            for &p in &members[1..] {
                uf.parent[level_roots.roots[p as usize] as usize] = rep;
            }
            uf.set_row(rep, level_roots.saved[gp as usize], height, &counts);
        }
        step(2, &mut since);
        ordered.clear();
        if over.contains(&true) {
            for &(p, i) in &joined {
                if over[level_roots.group[p as usize] as usize] {
                    let (a, b) = level_edges[i as usize];
                    let (ha, hb) = (g.key_hash(a), g.key_hash(b));
                    let (lo, hi) = if ha <= hb { (ha, hb) } else { (hb, ha) };
                    ordered.push((lo, hi, a, b));
                }
            }
        }
        level_roots.clear();
        // Pass 3: edges of groups over a cap, one by one in content order.
        ordered.sort_unstable();
        sequential += ordered.len();
        for &(_, _, a, b) in &ordered {
            if let Some(r) = uf.union_capped(a, b, &nr, &mut held) {
                refused.push(r);
            }
        }
        step(3, &mut since);
    }
    drop(level_roots);
    drop(edges);
    // Values only in weaker edges than any applied: still guard-free (they link nothing).
    let t_unions = started.elapsed();
    let faults_at_unions = minor_faults();

    // Attach non-merging values to the person they co-occur with most
    // (ties: the smallest content hash): the best attach edge per value,
    // then its root. `at` is done with: it holds the choices.
    let mut attached_to = at;
    attached_to.fill(NONE);
    for (i, &(v, w, events)) in attach.iter().enumerate() {
        if quarantined_flag.get(w) {
            continue;
        }
        let best = &mut attached_to[v as usize];
        let better = *best == NONE || {
            let (_, bw, be) = attach[*best as usize];
            (events, u64::MAX - g.key_hash(w)) > (be, u64::MAX - g.key_hash(bw))
        };
        if better {
            *best = i as u32;
        }
    }
    for best in attached_to.iter_mut().filter(|b| **b != NONE) {
        *best = uf.find(attach[*best as usize].1);
    }
    drop(attach);

    // Dense person indexes, in node order of each person's first node,
    // kept in the roots' words.
    let mut person = vec![NONE; n];
    let mut persons = 0u32;
    for v in 0..n as u32 {
        if quarantined_flag.get(v) {
            continue;
        }
        let root = if nr.of(v).merge {
            uf.find(v)
        } else if attached_to[v as usize] != NONE {
            attached_to[v as usize]
        } else {
            v
        };
        person[v as usize] = uf.person(root, &mut persons);
    }
    quarantined.sort_by_key(|q| g.key_hash(q.node));
    let end = started.elapsed();
    tracing::debug!(
        nodes = n,
        merge_edges = level_start[256],
        sequential,
        rules_ms = t_rules.as_millis() as u64,
        edges_ms = (t_edges - t_rules).as_millis() as u64,
        guard_lists_ms = (t_guard_lists - t_edges).as_millis() as u64,
        unions_ms = (t_unions - t_guard_lists).as_millis() as u64,
        guard_ms = steps[0].as_millis() as u64,
        pass1_ms = steps[1].as_millis() as u64,
        pass2_ms = steps[2].as_millis() as u64,
        pass3_ms = steps[3].as_millis() as u64,
        persons_ms = (end - t_unions).as_millis() as u64,
        // Pages this thread faulted in (first touches of fresh memory), up
        // to the end of the unions and after them.
        faults_to_unions = faults_at_unions.saturating_sub(faults_at_start),
        faults_after_unions = minor_faults().saturating_sub(faults_at_unions),
        "components"
    );
    Components {
        person,
        persons,
        quarantined,
        refused,
    }
}

/// Minor page faults of the calling thread so far (0 where Linux's
/// `/proc/thread-self/stat` is not there, or when debug logging is off: it
/// is read for the debug log only).
fn minor_faults() -> u64 {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return 0;
    }
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name in parentheses: state, ppid,
            // pgrp, session, tty_nr, tpgid, flags, minflt.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::rules::IdentityRules;

    /// Adjacency of the graph in CSR form, over mergeable nodes only.
    struct Adjacency {
        start: Vec<usize>,
        to: Vec<u32>,
    }

    impl Adjacency {
        fn new(n: usize, edges: &[(u32, u32)]) -> Self {
            let mut start = vec![0usize; n + 1];
            for &(a, b) in edges {
                start[a as usize + 1] += 1;
                start[b as usize + 1] += 1;
            }
            for i in 0..n {
                start[i + 1] += start[i];
            }
            let mut fill = start.clone();
            let mut to = vec![0u32; start[n]];
            for &(a, b) in edges {
                to[fill[a as usize]] = b;
                fill[a as usize] += 1;
                to[fill[b as usize]] = a;
                fill[b as usize] += 1;
            }
            Adjacency { start, to }
        }

        fn of(&self, n: u32) -> &[u32] {
            &self.to[self.start[n as usize]..self.start[n as usize + 1]]
        }
    }

    /// The sequential order itself, as the job ran it before the two passes:
    /// every mergeable edge sorted by (strength, content), the guard over full
    /// neighbour lists, each union checked against the caps.
    pub(super) fn sequential(g: &Graph, rules: &CompiledRules) -> Components {
        let n = g.len();
        let nr = node_rules(g, rules);
        // Mergeable edges in the deterministic order; attach edges kept aside.
        let mut merge_edges: Vec<(u8, u64, u64, u32, u32)> = Vec::with_capacity(g.links().len());
        let mut attach: Vec<(u32, u32, u32)> = Vec::new();
        for &(key, events) in g.links() {
            let (a, b) = edge_ends(key);
            let (fa, fb) = (nr.of(a), nr.of(b));
            match (fa.merge, fb.merge) {
                (true, true) => {
                    let strength = fa.priority.min(fb.priority);
                    let (ha, hb) = (g.key_hash(a), g.key_hash(b));
                    let (lo, hi) = if ha <= hb { (ha, hb) } else { (hb, ha) };
                    merge_edges.push((u8::MAX - strength, lo, hi, a, b));
                }
                (false, true) => attach.push((a, b, events)),
                (true, false) => attach.push((b, a, events)),
                (false, false) => {}
            }
        }
        merge_edges.sort_unstable();
        let pairs: Vec<(u32, u32)> = merge_edges.iter().map(|e| (e.3, e.4)).collect();
        let adj = Adjacency::new(n, &pairs);

        // The values the guard must look at, strongest first: only a value with
        // more links than its K can join more than K persons, so the others
        // (nearly all) never enter the order.
        let mut by_priority: Vec<(u8, u64, u32)> = (0..n as u32)
            .filter(|&v| nr.of(v).merge && adj.of(v).len() as u32 > nr.of(v).guard)
            .map(|v| {
                let f = nr.of(v);
                (u8::MAX - f.priority, g.key_hash(v), v)
            })
            .collect();
        by_priority.sort_unstable();

        let mut held = Vec::new();
        let mut uf = CappedUnionFind::new(&nr, 0);
        // A bitset: an eighth of a `Vec<bool>`, so it stays in cache while edges
        // are checked against it.
        let mut quarantined_flag = Bits::new(n);
        let mut quarantined = Vec::new();
        let mut refused = Vec::new();
        let mut next_node = 0usize;
        let mut e = 0usize;
        let mut roots: Vec<u32> = Vec::new();
        while e < merge_edges.len() {
            let strength = u8::MAX - merge_edges[e].0;
            // Guard every value of this priority (and stronger ones not yet looked at).
            while next_node < by_priority.len() && u8::MAX - by_priority[next_node].0 >= strength {
                let v = by_priority[next_node].2;
                next_node += 1;
                let limit = nr.of(v).guard;
                let p = nr.of(v).priority;
                let nbrs = adj.of(v);
                roots.clear();
                for &w in nbrs {
                    if nr.of(w).priority >= p && !quarantined_flag.get(w) {
                        roots.push(uf.find(w));
                    }
                }
                roots.sort_unstable();
                roots.dedup();
                if roots.len() as u32 > limit {
                    quarantined_flag.set(v);
                    quarantined.push(Quarantine {
                        node: v,
                        persons: roots.len() as u32,
                        limit,
                    });
                }
            }
            while e < merge_edges.len() && u8::MAX - merge_edges[e].0 == strength {
                let (_, _, _, a, b) = merge_edges[e];
                e += 1;
                if quarantined_flag.get(a) || quarantined_flag.get(b) {
                    continue;
                }
                if let Some(r) = uf.union_capped(a, b, &nr, &mut held) {
                    refused.push(r);
                }
            }
        }
        // Values only in weaker edges than any applied: still guard-free (they link nothing).

        // Attach non-merging values to the person they co-occur with most.
        let mut best: HashMap<u32, (u32, u64, u32)> = HashMap::new();
        for &(v, w, events) in &attach {
            if quarantined_flag.get(w) {
                continue;
            }
            let root = uf.find(w);
            let cand = (events, u64::MAX - g.key_hash(w), root);
            let slot = best.entry(v).or_insert(cand);
            if (cand.0, cand.1) > (slot.0, slot.1) {
                *slot = cand;
            }
        }
        let mut attached_to: Vec<u32> = vec![NONE; n];
        for (v, (_, _, root)) in best {
            attached_to[v as usize] = root;
        }

        // Dense person indexes, in node order of each person's first node.
        let mut person = vec![NONE; n];
        let mut dense: Vec<u32> = vec![NONE; n];
        let mut persons = 0u32;
        for v in 0..n as u32 {
            if quarantined_flag.get(v) {
                continue;
            }
            let root = if nr.of(v).merge {
                uf.find(v)
            } else if attached_to[v as usize] != NONE {
                attached_to[v as usize]
            } else {
                v
            };
            let slot = &mut dense[root as usize];
            if *slot == NONE {
                *slot = persons;
                persons += 1;
            }
            person[v as usize] = *slot;
        }
        quarantined.sort_by_key(|q| g.key_hash(q.node));
        Components {
            person,
            persons,
            quarantined,
            refused,
        }
    }

    fn graph(events: &[&[(&str, &str)]]) -> Graph {
        let mut g = Graph::default();
        for (t, ev) in events.iter().enumerate() {
            let mut nodes: Vec<u32> = ev.iter().map(|(k, v)| g.intern(k, v)).collect();
            g.add_event(&mut nodes, t as i64);
        }
        g.seal();
        g
    }

    fn same(g: &Graph, c: &Components, a: (&str, &str), b: (&str, &str)) -> bool {
        let pa = c.person[g.find(a.0, a.1).unwrap() as usize];
        let pb = c.person[g.find(b.0, b.1).unwrap() as usize];
        pa != NONE && pa == pb
    }

    fn run(g: &Graph, toml: &str) -> Components {
        let rules = if toml.is_empty() {
            IdentityRules::default()
        } else {
            IdentityRules::from_toml(toml).unwrap()
        };
        components(g, &rules.compile().unwrap())
    }

    #[test]
    fn co_occurring_values_are_one_person() {
        let g = graph(&[
            &[("phone", "p1"), ("email", "e1")],
            &[("email", "e1"), ("unionid", "u1")],
            &[("phone", "p2")],
        ]);
        let c = run(&g, "");
        assert_eq!(c.persons, 2);
        assert!(same(&g, &c, ("phone", "p1"), ("unionid", "u1")));
        assert!(!same(&g, &c, ("phone", "p1"), ("phone", "p2")));
    }

    #[test]
    fn caps_refuse_a_second_member_card() {
        // A recycled phone seen with two member cards.
        let g = graph(&[
            &[("phone", "p"), ("member", "m1")],
            &[("phone", "p"), ("member", "m2")],
        ]);
        let c = run(&g, "");
        assert_eq!(c.persons, 2);
        assert!(!same(&g, &c, ("member", "m1"), ("member", "m2")));
        assert_eq!(c.refused.len(), 1);
        assert_eq!(c.refused[0].class, "member");
        assert_eq!((c.refused[0].would_hold, c.refused[0].cap), (2, 1));
    }

    #[test]
    fn openid_caps_count_per_app() {
        let g = graph(&[
            &[("unionid", "u"), ("openid", "wxa:1")],
            &[("unionid", "u"), ("openid", "wxb:1")],
            &[("unionid", "u"), ("openid", "wxa:2")],
        ]);
        let c = run(&g, "");
        // One openid of app wxa joins (which one is decided by the content
        // order), the other is refused; wxb's joins too.
        let joined = [("openid", "wxa:1"), ("openid", "wxa:2")]
            .into_iter()
            .filter(|&o| same(&g, &c, ("unionid", "u"), o))
            .count();
        assert_eq!(joined, 1);
        assert!(same(&g, &c, ("unionid", "u"), ("openid", "wxb:1")));
        assert_eq!(c.refused.len(), 1);
        assert_eq!(c.refused[0].class, "openid:wxa");
    }

    #[test]
    fn a_store_phone_is_quarantined() {
        let mut events: Vec<Vec<(&str, String)>> = Vec::new();
        for i in 0..10 {
            events.push(vec![("phone", "store".into()), ("member", format!("m{i}"))]);
        }
        let mut g = Graph::default();
        for ev in &events {
            let mut nodes: Vec<u32> = ev.iter().map(|(k, v)| g.intern(k, v)).collect();
            g.add_event(&mut nodes, 0);
        }
        g.seal();
        let c = run(&g, "");
        assert_eq!(c.persons, 10);
        assert_eq!(c.quarantined.len(), 1);
        assert_eq!(c.quarantined[0].persons, 10);
        assert_eq!(c.person[g.find("phone", "store").unwrap() as usize], NONE);
    }

    #[test]
    fn a_shared_device_never_merges_two_persons() {
        let g = graph(&[
            &[("phone", "p1"), ("device", "tablet")],
            &[("phone", "p2"), ("device", "tablet")],
            &[("phone", "p1"), ("device", "own")],
        ]);
        let c = run(&g, "");
        assert!(!same(&g, &c, ("phone", "p1"), ("phone", "p2")));
        assert!(same(&g, &c, ("phone", "p1"), ("device", "own")));
        assert_eq!(c.quarantined.len(), 1);
    }

    #[test]
    fn non_merging_kinds_attach_without_linking() {
        let g = graph(&[
            &[("phone", "p1"), ("cookie", "c")],
            &[("phone", "p1"), ("cookie", "c")],
            &[("phone", "p2"), ("cookie", "c")],
        ]);
        let c = run(
            &g,
            "[kinds.phone]\npriority = 80\n[kinds.cookie]\nmerge = false\n",
        );
        assert!(!same(&g, &c, ("phone", "p1"), ("phone", "p2")));
        assert!(same(&g, &c, ("phone", "p1"), ("cookie", "c")));
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use crate::identity::rules::IdentityRules;

        const KINDS: [&str; 6] = ["member", "unionid", "phone", "openid", "email", "device"];

        /// Events as lists of (kind index, value index); small universes so values repeat.
        fn events() -> impl Strategy<Value = Vec<Vec<(usize, u8)>>> {
            prop::collection::vec(
                prop::collection::vec((0..KINDS.len(), 0u8..12), 1..4),
                1..60,
            )
        }

        fn value(kind: usize, v: u8) -> String {
            if KINDS[kind] == "openid" {
                format!("wx{}:{v}", v % 2)
            } else {
                format!("v{v}")
            }
        }

        fn build(events: &[Vec<(usize, u8)>], order: &[usize]) -> Graph {
            let mut g = Graph::default();
            for &i in order {
                let mut nodes: Vec<u32> = events[i]
                    .iter()
                    .map(|&(k, v)| g.intern(KINDS[k], &value(k, v)))
                    .collect();
                g.add_event(&mut nodes, i as i64);
            }
            g.seal();
            g
        }

        /// The partition as sorted sets of `kind:value`, quarantined values apart.
        fn partition(g: &Graph, c: &Components) -> (Vec<Vec<String>>, Vec<String>) {
            let mut persons: Vec<Vec<String>> = vec![Vec::new(); c.persons as usize];
            let mut out = Vec::new();
            for n in 0..g.len() as u32 {
                let name = format!("{}:{}", g.kind(n), g.value(n));
                match c.person[n as usize] {
                    NONE => out.push(name),
                    p => persons[p as usize].push(name),
                }
            }
            for p in &mut persons {
                p.sort();
            }
            persons.sort();
            out.sort();
            (persons, out)
        }

        fn rules(guard: u32) -> CompiledRules {
            IdentityRules {
                max_persons_per_value: guard,
                ..Default::default()
            }
            .compile()
            .unwrap()
        }

        proptest! {
            #[test]
            fn order_never_changes_the_persons(events in events(), seed in any::<u64>(), guard in 1u32..4) {
                let order: Vec<usize> = (0..events.len()).collect();
                let mut shuffled = order.clone();
                // A deterministic shuffle from the seed.
                let mut x = seed | 1;
                for i in (1..shuffled.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    shuffled.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let rules = rules(guard);
                let (g1, g2) = (build(&events, &order), build(&events, &shuffled));
                let (c1, c2) = (components(&g1, &rules), components(&g2, &rules));
                prop_assert_eq!(partition(&g1, &c1), partition(&g2, &c2));
            }

            /// Two passes per strength give exactly what one union at a time
            /// in the deterministic order gives: persons, quarantines and
            /// refusals, under random priorities, caps, guards and
            /// non-merging kinds.
            #[test]
            fn two_passes_equal_the_sequential_order(
                events in events(),
                kinds in prop::collection::vec(
                    (
                        prop::sample::select(vec![10u8, 50, 80]),
                        prop::bool::weighted(0.8),
                        prop::option::of(1u32..4),
                        prop::option::of(1u32..5),
                    ),
                    KINDS.len(),
                ),
                guard in 1u32..6,
            ) {
                let order: Vec<usize> = (0..events.len()).collect();
                let g = build(&events, &order);
                let mut rules = IdentityRules {
                    max_persons_per_value: guard,
                    ..Default::default()
                };
                for (k, (priority, merge, cap, max_persons)) in KINDS.iter().zip(kinds) {
                    let rule = rules.kinds.entry(k.to_string()).or_default();
                    rule.priority = priority;
                    rule.merge = merge;
                    rule.max_per_person = cap;
                    rule.max_persons = max_persons;
                }
                let rules = rules.compile().unwrap();
                let (got, want) = (components(&g, &rules), super::super::tests::sequential(&g, &rules));
                prop_assert_eq!(got.persons, want.persons);
                prop_assert_eq!(&got.person, &want.person);
                prop_assert_eq!(&got.quarantined, &want.quarantined);
                prop_assert_eq!(&got.refused, &want.refused);
            }

            #[test]
            fn caps_hold_and_quarantined_values_join_nothing(events in events(), guard in 1u32..4) {
                let order: Vec<usize> = (0..events.len()).collect();
                let g = build(&events, &order);
                let rules = rules(guard);
                let c = components(&g, &rules);
                // Caps: per person, per class.
                let mut held: HashMap<(u32, String), u32> = HashMap::new();
                for n in 0..g.len() as u32 {
                    let p = c.person[n as usize];
                    if p == NONE { continue; }
                    let (k, app) = cap_class(g.kind(n), g.value(n));
                    let class = format!("{k}:{app}");
                    let count = held.entry((p, class)).or_insert(0);
                    *count += 1;
                    if let Some(cap) = rules.kind(g.kind(n)).cap {
                        prop_assert!(*count <= cap);
                    }
                }
                // Every person is connected by edges inside it that touch no
                // quarantined value: a quarantined value joined nothing.
                let mut uf = UnionFind::new(g.len());
                for &(key, _) in g.links() {
                    let (a, b) = edge_ends(key);
                    let (pa, pb) = (c.person[a as usize], c.person[b as usize]);
                    if pa != NONE && pa == pb {
                        let (ra, rb) = (uf.find(a), uf.find(b));
                        if ra != rb { uf.link(ra, rb); }
                    }
                }
                let mut root_of: HashMap<u32, u32> = HashMap::new();
                for n in 0..g.len() as u32 {
                    let p = c.person[n as usize];
                    if p == NONE { continue; }
                    let r = uf.find(n);
                    prop_assert_eq!(*root_of.entry(p).or_insert(r), r, "person {} is not connected without quarantined values", p);
                }
                for q in &c.quarantined {
                    prop_assert_eq!(c.person[q.node as usize], NONE);
                    prop_assert!(q.persons > q.limit);
                }
            }
        }
    }
}
