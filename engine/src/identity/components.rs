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

/// What the edge pass reads of each end, side by side: the pass goes over
/// edges in hash order, so every end is a cache miss, one instead of three.
#[derive(Debug, Clone, Copy)]
struct Facts {
    /// The content hash ([`Graph::key_hash`]).
    hash: u64,
    priority: u8,
    merge: bool,
}

/// Per-node facts from the rules.
struct NodeRules {
    facts: Vec<Facts>,
    guard: Vec<u32>,
    /// Capped class index, or `u16::MAX`.
    class: Vec<u16>,
    class_names: Vec<String>,
    caps: Vec<u32>,
}

fn node_rules(g: &Graph, rules: &CompiledRules) -> NodeRules {
    let n = g.len();
    let mut out = NodeRules {
        facts: Vec::with_capacity(n),
        guard: Vec::with_capacity(n),
        class: Vec::with_capacity(n),
        class_names: Vec::new(),
        caps: Vec::new(),
    };
    // Rules and cap classes are looked up once per kind (and per app for
    // openids), never per node: this runs over millions of nodes.
    let mut by_kind: HashMap<u16, (&CompiledKind, Option<u16>)> = HashMap::new();
    let mut by_app: HashMap<(u16, &str), u16> = HashMap::new();
    let new_class = |name: String, cap: u32, out: &mut NodeRules| {
        out.class_names.push(name);
        out.caps.push(cap);
        (out.class_names.len() - 1) as u16
    };
    for node in 0..n as u32 {
        let k = g.kind_index(node);
        let (rule, class) = match by_kind.get(&k) {
            Some(&v) => v,
            None => {
                let kind = g.kind(node);
                let rule = rules.kind(kind);
                let class = match rule.cap {
                    Some(cap) if rule.merge && kind != "openid" => {
                        Some(new_class(kind.to_string(), cap, &mut out))
                    }
                    _ => None,
                };
                by_kind.insert(k, (rule, class));
                (rule, class)
            }
        };
        out.facts.push(Facts {
            hash: g.key_hash(node),
            priority: rule.priority,
            merge: rule.merge,
        });
        out.guard.push(rule.guard);
        let class = match (class, rule.cap) {
            (Some(c), _) => c,
            (None, Some(cap)) if rule.merge => {
                // openid: one class per app id.
                let (kind, app) = cap_class(g.kind(node), g.value(node));
                match by_app.get(&(k, app)) {
                    Some(&c) => c,
                    None => {
                        let c = new_class(format!("{kind}:{app}"), cap, &mut out);
                        by_app.insert((k, app), c);
                        c
                    }
                }
            }
            _ => u16::MAX,
        };
        out.class.push(class);
    }
    out
}

/// Union-find over nodes whose roots carry their person's count of values
/// per capped class. A node's parent, rank and counts share one record, so a
/// union (bound by cache misses on random nodes) reads one line per root,
/// not one per array. Path halving, union by rank.
struct CappedUnionFind {
    /// Node `i`'s record at `i * stride`: parent (low, high 16 bits), rank,
    /// then one count per class. Counts fit 16 bits: a union is refused
    /// before any count passes its cap, and caps are at most `MAX_CAP`.
    rec: Vec<u16>,
    stride: usize,
}

/// A record's rank word, and the words before its counts.
const RANK: usize = 2;
const HEAD: usize = 3;

impl CappedUnionFind {
    fn new(nr: &NodeRules) -> Self {
        let stride = HEAD + nr.caps.len();
        let mut rec = vec![0u16; nr.class.len() * stride];
        for (i, (r, &c)) in rec.chunks_exact_mut(stride).zip(&nr.class).enumerate() {
            r[0] = i as u16;
            r[1] = (i >> 16) as u16;
            if c != u16::MAX {
                r[HEAD + c as usize] = 1;
            }
        }
        CappedUnionFind { rec, stride }
    }

    fn parent(&self, x: u32) -> u32 {
        let i = x as usize * self.stride;
        u32::from(self.rec[i]) | u32::from(self.rec[i + 1]) << 16
    }

    fn set_parent(&mut self, x: u32, p: u32) {
        let i = x as usize * self.stride;
        self.rec[i] = p as u16;
        self.rec[i + 1] = (p >> 16) as u16;
    }

    fn find(&mut self, mut x: u32) -> u32 {
        loop {
            let p = self.parent(x);
            if p == x {
                return x;
            }
            let grand = self.parent(p);
            self.set_parent(x, grand);
            x = grand;
        }
    }

    /// Root `r`'s count of values of class `c`.
    fn count(&self, r: u32, c: usize) -> u32 {
        u32::from(self.rec[r as usize * self.stride + HEAD + c])
    }

    /// Links roots `a` and `b` and adds up their counts; returns the new root.
    fn link(&mut self, a: u32, b: u32) -> u32 {
        let (ia, ib) = (a as usize * self.stride, b as usize * self.stride);
        let (ra, rb) = (self.rec[ia + RANK], self.rec[ib + RANK]);
        let (root, child) = if ra < rb { (b, a) } else { (a, b) };
        if ra == rb {
            self.rec[ia + RANK] += 1;
        }
        self.set_parent(child, root);
        let (ir, ic) = (root as usize * self.stride, child as usize * self.stride);
        for c in HEAD..self.stride {
            self.rec[ir + c] += self.rec[ic + c];
        }
        root
    }
}

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

/// Computes the persons of `g` under `rules`.
pub(crate) fn components(g: &Graph, rules: &CompiledRules) -> Components {
    let n = g.len();
    let nr = node_rules(g, rules);
    // Mergeable edges in the deterministic order; attach edges kept aside.
    let mut merge_edges: Vec<(u8, u64, u64, u32, u32)> = Vec::with_capacity(g.edges.len());
    let mut attach: Vec<(u32, u32, u32)> = Vec::new();
    for (&key, stat) in &g.edges {
        let (a, b) = edge_ends(key);
        let (fa, fb) = (nr.facts[a as usize], nr.facts[b as usize]);
        match (fa.merge, fb.merge) {
            (true, true) => {
                let strength = fa.priority.min(fb.priority);
                let (ha, hb) = (fa.hash, fb.hash);
                let (lo, hi) = if ha <= hb { (ha, hb) } else { (hb, ha) };
                merge_edges.push((u8::MAX - strength, lo, hi, a, b));
            }
            (false, true) => attach.push((a, b, stat.events)),
            (true, false) => attach.push((b, a, stat.events)),
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
        .filter(|&v| nr.facts[v as usize].merge && adj.of(v).len() as u32 > nr.guard[v as usize])
        .map(|v| {
            let f = nr.facts[v as usize];
            (u8::MAX - f.priority, f.hash, v)
        })
        .collect();
    by_priority.sort_unstable();

    let mut uf = CappedUnionFind::new(&nr);
    let ncls = nr.caps.len();
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
            let limit = nr.guard[v as usize];
            let p = nr.facts[v as usize].priority;
            let nbrs = adj.of(v);
            roots.clear();
            for &w in nbrs {
                if nr.facts[w as usize].priority >= p && !quarantined_flag.get(w) {
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
            let (ra, rb) = (uf.find(a), uf.find(b));
            if ra == rb {
                continue;
            }
            let held = |c: usize| uf.count(ra, c) + uf.count(rb, c);
            if let Some(c) = (0..ncls).find(|&c| held(c) > nr.caps[c]) {
                refused.push(Refusal {
                    a,
                    b,
                    class: nr.class_names[c].clone(),
                    would_hold: held(c),
                    cap: nr.caps[c],
                });
                continue;
            }
            uf.link(ra, rb);
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
        let root = if nr.facts[v as usize].merge {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::rules::IdentityRules;

    fn graph(events: &[&[(&str, &str)]]) -> Graph {
        let mut g = Graph::default();
        for (t, ev) in events.iter().enumerate() {
            let mut nodes: Vec<u32> = ev.iter().map(|(k, v)| g.intern(k, v)).collect();
            g.add_event(&mut nodes, t as i64);
        }
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
                for &key in g.edges.keys() {
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
