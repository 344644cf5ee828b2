//! Stable person ids across runs.
//!
//! Each component of this run inherits from the previous run's persons whose
//! values it holds: a previous person's *heir* is the component holding most
//! of its values (ties: the component with the older oldest member). A
//! component that is heir to several previous persons keeps the oldest one
//! (lowest ordinal) and retires the others with a redirect (a merge); a
//! previous person whose values now sit in several components lives on in its
//! heir, the larger part, and the other parts become new persons (a split).
//! New persons get the next ordinals in the order of their oldest member
//! (first seen, then content hash), so the same events give the same ids.
//! Ordinals are never reused.

use hashbrown::{HashMap, HashSet};
use xxhash_rust::xxh3::xxh3_64;

use super::components::{Components, NONE};
use super::graph::Graph;

/// A person known before this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrevPerson {
    pub person_id: String,
    pub ordinal: u32,
    pub created_at: i64,
    /// Set when retired: the survivor it was merged into (empty when it vanished).
    pub merged_into: Option<String>,
}

/// What the previous run left: persons and which person each value belonged to.
#[derive(Debug, Default, Clone)]
pub(crate) struct Previous {
    pub persons: Vec<PrevPerson>,
    /// Per node of this run's graph: the index into `persons` of the person
    /// that held the value, or `NONE` (a new value). An array, where a map
    /// keyed by value cost 3.2 M random inserts and as many probes.
    pub owner: Vec<u32>,
}

impl Previous {
    fn next_ordinal(&self) -> u32 {
        self.persons
            .iter()
            .map(|p| p.ordinal + 1)
            .max()
            .unwrap_or(0)
    }
}

/// One person of this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    pub person_id: String,
    pub ordinal: u32,
    pub created_at: i64,
}

/// A change in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// `merge` or `split`.
    pub kind: &'static str,
    /// For a merge: the survivor first, then the retired. For a split: the
    /// person split, then the new persons.
    pub person_ids: Vec<String>,
    /// Values that evidence the change (JSON).
    pub evidence: String,
}

/// The assignment of one run.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    /// Indexed like the run's components.
    pub persons: Vec<Person>,
    /// Previous persons this run retires (index into `Previous::persons`)
    /// with the survivor they were merged into (empty when they vanished).
    pub retired: Vec<(u32, String)>,
    pub changes: Vec<Change>,
    pub new_persons: u64,
    pub merges: u64,
    pub splits: u64,
    /// Previous live persons that kept their id and ordinal with the same values or more.
    pub kept: u64,
}

impl Assignment {
    /// Every previous person retired after this run, in the order of
    /// `prev.persons`: those retired before and those this run retires.
    pub fn all_retired(&self, prev: &Previous) -> Vec<PrevPerson> {
        let mut now = self.retired.iter().peekable();
        let mut out = Vec::new();
        for (q, p) in prev.persons.iter().enumerate() {
            match now.next_if(|(r, _)| *r as usize == q) {
                Some((_, into)) => out.push(PrevPerson {
                    merged_into: Some(into.clone()),
                    ..p.clone()
                }),
                None if p.merged_into.is_some() => out.push(p.clone()),
                None => {}
            }
        }
        out
    }
}

/// A person id for a new person (shown as 16 hex digits): a hash of its
/// oldest value's content hash and its ordinal, salted until no previous
/// person holds it.
fn make_id(seed: u64, ordinal: u32, taken: &HashSet<u64>) -> u64 {
    let mut salt = 0u64;
    loop {
        let mut buf = [0u8; 20];
        buf[..8].copy_from_slice(&seed.to_le_bytes());
        buf[8..12].copy_from_slice(&ordinal.to_le_bytes());
        buf[12..].copy_from_slice(&salt.to_le_bytes());
        let id = xxh3_64(&buf);
        if !taken.contains(&id) {
            return id;
        }
        salt += 1;
    }
}

fn evidence(g: &Graph, nodes: &[u32]) -> String {
    let ids: Vec<String> = nodes
        .iter()
        .take(5)
        .map(|&n| format!("{}:{}", g.kind(n), g.value(n)))
        .collect();
    serde_json::json!({ "identifiers": ids }).to_string()
}

/// Assigns ids to the components of `g`, given what the previous run left.
/// `owner`: per node of `g`, its previous person (index into `prev.persons`)
/// or `NONE`. `scope`: per previous person, whether `g` covers it (all of
/// them when `None`); only those can be merged, split or retired.
pub(crate) fn assign(
    g: &Graph,
    c: &Components,
    prev: &Previous,
    owner: &[u32],
    now: i64,
    scope: Option<&[bool]>,
) -> Assignment {
    debug_assert_eq!(owner.len(), g.len());
    let np = c.persons as usize;
    // Oldest member of each component: (first_seen, content hash).
    let mut oldest = vec![(i64::MAX, u64::MAX); np];
    // Overlap with previous persons: one `(component, previous person)`
    // pair per value a previous person held, sorted and counted below (a
    // sort of packed pairs, where a map would take a random probe per value).
    let mut pairs: Vec<u64> = Vec::with_capacity(if prev.persons.is_empty() { 0 } else { g.len() });
    let mut size = vec![0u32; np];
    for n in 0..g.len() as u32 {
        let p = c.person[n as usize];
        if p == NONE {
            continue;
        }
        let key = (g.first_seen(n), g.key_hash(n));
        let slot = &mut oldest[p as usize];
        if key < *slot {
            *slot = key;
        }
        size[p as usize] += 1;
        let q = owner[n as usize];
        if q != NONE {
            pairs.push(u64::from(p) << 32 | u64::from(q));
        }
    }
    // Heir of every previous person and how many components it reached, in
    // arrays over the previous persons (a map entry per person cost more than
    // the rest of the pass).
    let nq = prev.persons.len();
    let mut heir: Vec<(u32, u32)> = vec![(NONE, 0); nq];
    let mut reached = vec![0u32; nq];
    pairs.sort_unstable();
    let entries: Vec<(u32, u32, u32)> = pairs
        .chunk_by(|a, b| a == b)
        .map(|run| ((run[0] >> 32) as u32, run[0] as u32, run.len() as u32))
        .collect();
    drop(pairs);
    for &(p, q, count) in &entries {
        reached[q as usize] += 1;
        let (best, best_count) = heir[q as usize];
        let better = best == NONE
            || count > best_count
            || (count == best_count && oldest[p as usize] < oldest[best as usize]);
        if better {
            heir[q as usize] = (p, count);
        }
    }
    // The previous persons each component is heir to, oldest (lowest ordinal) first.
    let mut claims: Vec<(u32, u32, u32)> = heir
        .iter()
        .enumerate()
        .filter(|(_, h)| h.0 != NONE)
        .map(|(q, &(p, _))| (p, prev.persons[q].ordinal, q as u32))
        .collect();
    claims.sort_unstable();
    let mut retired = Vec::new();
    let mut taken: HashSet<u64> = prev
        .persons
        .iter()
        .filter_map(|p| u64::from_str_radix(&p.person_id, 16).ok())
        .collect();
    let mut persons: Vec<Option<Person>> = vec![None; np];
    let mut changes = Vec::new();
    // Merges, by component: their evidence is filled in below.
    let mut merged: HashMap<u32, usize> = HashMap::new();
    let (mut merges, mut kept) = (0u64, 0u64);
    for cl in claims.chunk_by(|a, b| a.0 == b.0) {
        let (p, _, first) = cl[0];
        let survivor = &prev.persons[first as usize];
        persons[p as usize] = Some(Person {
            person_id: survivor.person_id.clone(),
            ordinal: survivor.ordinal,
            created_at: survivor.created_at,
        });
        if reached[first as usize] == 1 {
            kept += 1;
        }
        if cl.len() > 1 {
            let mut ids = vec![survivor.person_id.clone()];
            for &(_, _, q) in &cl[1..] {
                retired.push((q, survivor.person_id.clone()));
                ids.push(prev.persons[q as usize].person_id.clone());
                merges += 1;
            }
            merged.insert(p, changes.len());
            changes.push(Change {
                kind: "merge",
                person_ids: ids,
                evidence: String::new(),
            });
        }
    }
    // A merge's evidence: the first values (in node order) new to the survivor.
    if !merged.is_empty() {
        let mut fresh: HashMap<u32, Vec<u32>> = HashMap::new();
        for n in 0..g.len() as u32 {
            let p = c.person[n as usize];
            if merged.contains_key(&p) && owner[n as usize] == NONE {
                let f = fresh.entry(p).or_default();
                if f.len() < 5 {
                    f.push(n);
                }
            }
        }
        for (p, i) in &merged {
            changes[*i].evidence = evidence(g, fresh.get(p).map_or(&[], Vec::as_slice));
        }
    }
    // New persons, oldest member first.
    let mut new: Vec<u32> = (0..np as u32)
        .filter(|&p| persons[p as usize].is_none())
        .collect();
    new.sort_unstable_by_key(|&p| oldest[p as usize]);
    for (ordinal, &p) in (prev.next_ordinal()..).zip(&new) {
        let id = make_id(oldest[p as usize].1, ordinal, &taken);
        taken.insert(id);
        persons[p as usize] = Some(Person {
            person_id: format!("{id:016x}"),
            ordinal,
            created_at: now,
        });
    }
    let persons: Vec<Person> = persons.into_iter().flatten().collect();
    // Splits: a previous person whose values went to more than one component.
    let mut splits = 0u64;
    let mut parts: Vec<(u32, u32)> = entries
        .iter()
        .filter(|&&(_, q, _)| reached[q as usize] > 1)
        .map(|&(p, q, _)| (q, p))
        .collect();
    parts.sort_unstable();
    for run in parts.chunk_by(|a, b| a.0 == b.0) {
        let q = run[0].0 as usize;
        let heir_p = heir[q].0;
        let mut ids = vec![prev.persons[q].person_id.clone()];
        for &(_, p) in run.iter().filter(|&&(_, p)| p != heir_p) {
            ids.push(persons[p as usize].person_id.clone());
        }
        splits += 1;
        changes.push(Change {
            kind: "split",
            person_ids: ids,
            evidence: serde_json::json!({ "kept_by": persons[heir_p as usize].person_id, "parts": run.len() }).to_string(),
        });
    }
    // Live persons no value of which is in any component now: retired, no redirect.
    // (A merged person is some component's heir, so it reached one.)
    for (q, person) in prev.persons.iter().enumerate() {
        if scope.is_some_and(|s| !s[q]) {
            continue;
        }
        if person.merged_into.is_none() && reached[q] == 0 {
            retired.push((q as u32, String::new()));
        }
    }
    retired.sort_unstable();
    Assignment {
        persons,
        retired,
        changes,
        new_persons: new.len() as u64,
        merges,
        splits,
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::components::components;
    use crate::identity::rules::IdentityRules;

    fn graph(events: &[&[(&str, &str)]]) -> Graph {
        let mut g = Graph::default();
        for (t, ev) in events.iter().enumerate() {
            let mut nodes: Vec<u32> = ev.iter().map(|(k, v)| g.intern(k, v)).collect();
            g.add_event(&mut nodes, t as i64);
        }
        g.seal();
        g
    }

    fn run(g: &Graph, prev: &Previous) -> (Components, Assignment) {
        let c = components(g, &IdentityRules::default().compile().unwrap());
        // No previous run: no value has an owner.
        let none = vec![NONE; g.len()];
        let owner = if prev.persons.is_empty() {
            &none
        } else {
            &prev.owner
        };
        let a = assign(g, &c, prev, owner, 7, None);
        (c, a)
    }

    /// The previous state a run over `g` leaves, as the tables would hold
    /// it, for a next run over `next`.
    fn carry(
        before: &Previous,
        g: &Graph,
        c: &Components,
        a: &Assignment,
        next: &Graph,
    ) -> Previous {
        let mut prev = Previous {
            persons: before.persons.clone(),
            owner: vec![NONE; next.len()],
        };
        for (q, into) in &a.retired {
            prev.persons[*q as usize].merged_into = Some(into.clone());
        }
        let base = prev.persons.len() as u32;
        let mut index = HashMap::new();
        for p in &a.persons {
            match prev.persons.iter().position(|q| q.person_id == p.person_id) {
                Some(i) => {
                    index.insert(p.person_id.clone(), i as u32);
                }
                None => {
                    index.insert(p.person_id.clone(), base + index.len() as u32);
                    prev.persons.push(PrevPerson {
                        person_id: p.person_id.clone(),
                        ordinal: p.ordinal,
                        created_at: p.created_at,
                        merged_into: None,
                    });
                }
            }
        }
        for n in 0..g.len() as u32 {
            let p = c.person[n as usize];
            if p != NONE {
                let id = &a.persons[p as usize].person_id;
                let i = prev
                    .persons
                    .iter()
                    .position(|q| &q.person_id == id)
                    .unwrap();
                if let Some(m) = next.find(g.kind(n), g.value(n)) {
                    prev.owner[m as usize] = i as u32;
                }
            }
        }
        prev
    }

    fn id_of(g: &Graph, c: &Components, a: &Assignment, kind: &str, value: &str) -> (String, u32) {
        let p = &a.persons[c.person[g.find(kind, value).unwrap() as usize] as usize];
        (p.person_id.clone(), p.ordinal)
    }

    #[test]
    fn ids_survive_a_rerun_and_merges_keep_the_older() {
        let e1: &[&[(&str, &str)]] = &[&[("phone", "p1")], &[("phone", "p2")], &[("email", "e3")]];
        let g1 = graph(e1);
        let (c1, a1) = run(&g1, &Previous::default());
        assert_eq!(a1.new_persons, 3);
        let ords: Vec<u32> = a1.persons.iter().map(|p| p.ordinal).collect();
        assert_eq!(ords.iter().copied().collect::<HashSet<_>>().len(), 3);
        let p1 = id_of(&g1, &c1, &a1, "phone", "p1");
        let p2 = id_of(&g1, &c1, &a1, "phone", "p2");
        // p1 is older (first seen first), so it gets ordinal 0.
        assert_eq!(p1.1, 0);

        let mut events = e1.to_vec();
        events.push(&[("phone", "p1"), ("unionid", "u")]);
        events.push(&[("phone", "p2"), ("unionid", "u")]);
        let g2 = graph(&events);
        let prev = carry(&Previous::default(), &g1, &c1, &a1, &g2);
        let (c2, a2) = run(&g2, &prev);
        assert_eq!(a2.merges, 1);
        assert_eq!(a2.new_persons, 0);
        assert_eq!(id_of(&g2, &c2, &a2, "phone", "p2"), p1);
        let retired = a2.all_retired(&prev);
        let retired = retired.iter().find(|p| p.person_id == p2.0).unwrap();
        assert_eq!(retired.merged_into.as_deref(), Some(p1.0.as_str()));
        assert_eq!(a2.changes[0].kind, "merge");

        // A third run over the same events changes nothing.
        let prev = carry(&prev, &g2, &c2, &a2, &g2);
        let (c3, a3) = run(&g2, &prev);
        assert_eq!((a3.merges, a3.splits, a3.new_persons), (0, 0, 0));
        assert_eq!(
            id_of(&g2, &c3, &a3, "email", "e3"),
            id_of(&g2, &c2, &a2, "email", "e3")
        );
    }

    #[test]
    fn a_split_keeps_the_id_on_the_larger_part_and_never_reuses_ordinals() {
        let events: &[&[(&str, &str)]] = &[
            &[("phone", "p1"), ("email", "a")],
            &[("phone", "p1"), ("email", "b")],
            &[("email", "b"), ("cookie", "c")],
            &[("cookie", "c"), ("member", "m")],
        ];
        let g = graph(events);
        let (c, a) = run(&g, &Previous::default());
        assert_eq!(c.persons, 1);
        let before = id_of(&g, &c, &a, "phone", "p1");
        let prev = carry(&Previous::default(), &g, &c, &a, &g);
        // A rule change: cookies no longer merge.
        let rules = IdentityRules::from_toml("[kinds.cookie]\nmerge = false\n").unwrap();
        let c2 = components(&g, &rules.compile().unwrap());
        let a2 = assign(&g, &c2, &prev, &prev.owner, 9, None);
        assert_eq!(a2.splits, 1);
        assert_eq!(id_of(&g, &c2, &a2, "phone", "p1"), before);
        let (_, ord_m) = id_of(&g, &c2, &a2, "member", "m");
        assert!(ord_m > before.1);
    }

    #[test]
    fn new_ids_do_not_depend_on_event_order() {
        let events: Vec<&[(&str, &str)]> =
            vec![&[("phone", "p1")], &[("phone", "p2"), ("email", "e")]];
        let g1 = graph(&events);
        let (c1, a1) = run(&g1, &Previous::default());
        // The same events (same times) arriving in reverse order.
        let mut g2 = Graph::default();
        for (t, ev) in events.iter().enumerate().rev() {
            let mut nodes: Vec<u32> = ev.iter().map(|(k, v)| g2.intern(k, v)).collect();
            g2.add_event(&mut nodes, t as i64);
        }
        g2.seal();
        let (c2, a2) = run(&g2, &Previous::default());
        for (k, v) in [("phone", "p1"), ("phone", "p2"), ("email", "e")] {
            assert_eq!(id_of(&g1, &c1, &a1, k, v), id_of(&g2, &c2, &a2, k, v));
        }
    }
}
