//! Dense bit sets for a top-level `AND` of whole operands (tags, enumerated
//! values, kept leaves), combined in one pass over the words.
//!
//! At ten million persons the audience questions' operands hold 2–10 % of
//! the ordinals, spread over every container: roaring keeps them as sorted
//! arrays, and an intersection merges two arrays of a few thousand values
//! per container. A dense copy of each operand (one bit per ordinal up to
//! the largest live one, kept per index version beside the kept leaves)
//! turns `a AND b AND NOT c` into `a[i] & b[i] & !c[i]` per 64-bit word: no
//! branch, no intermediate bitmap, every operand read once, and the word
//! range split over the cores for a large index. [`worth`] says when that
//! reads fewer bytes' worth of work than the roaring path.

use std::sync::Arc;

use roaring::RoaringBitmap;

/// One bit per ordinal below `64 * words.len()`.
#[derive(Debug)]
pub(crate) struct Dense {
    words: Box<[u64]>,
}

impl Dense {
    /// `b`'s members below `64 * words`, as bits.
    pub(crate) fn new(b: &RoaringBitmap, words: usize) -> Dense {
        let mut out = vec![0u64; words].into_boxed_slice();
        let end = (words as u64) * 64;
        for x in b.iter().take_while(|&x| u64::from(x) < end) {
            out[(x >> 6) as usize] |= 1 << (x & 63);
        }
        Dense { words: out }
    }

    /// Bytes in memory.
    pub(crate) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Words that cover every ordinal of `live`.
pub(crate) fn words_for(live: &RoaringBitmap) -> usize {
    live.max().map_or(0, |m| m as usize / 64 + 1)
}

/// Whether an `AND` of `operands` whole operands whose smallest positive one
/// holds `smallest` members is cheaper over `words` dense words than through
/// roaring: roaring does at least one step per member of the smallest
/// operand (about five times a word's cost when the members sit in arrays),
/// the dense pass one word per operand.
pub(crate) fn worth(smallest: u64, words: usize, operands: usize) -> bool {
    words > 0 && smallest.saturating_mul(5) >= (words * operands) as u64
}

/// Most positive operands one pass takes (the live persons included).
pub(crate) const MAX_POSITIVE: usize = 6;
/// Most negated operands one pass takes.
pub(crate) const MAX_NEGATED: usize = 3;

/// Words at which the pass is split over the cores (2^16 words: four
/// million ordinals): below, a thread costs more than it saves.
const SPLIT_WORDS: usize = 1 << 16;

/// Calls `f(i, w)` for each word `i` of `pos[0] & pos[1] & … & !neg[0] & …`
/// in `range`, with the operands' count fixed at compile time so the inner
/// loop is straight-line code.
fn fold_fixed<const P: usize, const N: usize>(
    pos: [&[u64]; P],
    neg: [&[u64]; N],
    range: std::ops::Range<usize>,
    mut f: impl FnMut(usize, u64),
) {
    let pos = pos.map(|p| &p[range.clone()]);
    let neg = neg.map(|q| &q[range.clone()]);
    for i in 0..range.len() {
        let mut w = !0u64;
        for p in &pos {
            w &= p[i];
        }
        for q in &neg {
            w &= !q[i];
        }
        f(range.start + i, w);
    }
}

/// [`fold_fixed`] for the shapes this module takes; `false` for others
/// (more operands than [`MAX_POSITIVE`] / [`MAX_NEGATED`], or none positive).
fn fold(
    pos: &[&[u64]],
    neg: &[&[u64]],
    range: std::ops::Range<usize>,
    f: impl FnMut(usize, u64),
) -> bool {
    macro_rules! shapes {
        ($(($p:literal, $n:literal)),*) => {
            match (pos.len(), neg.len()) {
                $(($p, $n) => {
                    let (Ok(p), Ok(n)) = (<[&[u64]; $p]>::try_from(pos), <[&[u64]; $n]>::try_from(neg)) else {
                        return false;
                    };
                    fold_fixed(p, n, range, f);
                    true
                })*
                _ => false,
            }
        };
    }
    shapes!(
        (1, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 0),
        (2, 1),
        (2, 2),
        (2, 3),
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
        (4, 0),
        (4, 1),
        (4, 2),
        (4, 3),
        (5, 0),
        (5, 1),
        (5, 2),
        (5, 3),
        (6, 0),
        (6, 1),
        (6, 2),
        (6, 3)
    )
}

/// Operands as their words.
type Words<'a> = Vec<&'a [u64]>;

/// The operands' words, all of one length.
fn slices<'a>(
    pos: &'a [Arc<Dense>],
    neg: &'a [Arc<Dense>],
) -> Option<(Words<'a>, Words<'a>, usize)> {
    let words = pos.first()?.words.len();
    let all = pos.iter().chain(neg);
    if all.clone().any(|d| d.words.len() != words) {
        return None;
    }
    let p = pos.iter().map(|d| &d.words[..]).collect();
    let n = neg.iter().map(|d| &d.words[..]).collect();
    Some((p, n, words))
}

/// The word ranges the pass is split into: one per core for a large index.
fn parts(words: usize) -> Vec<std::ops::Range<usize>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let k = if words >= SPLIT_WORDS {
        cores.min(8)
    } else {
        1
    };
    let step = words.div_ceil(k).max(1);
    (0..words)
        .step_by(step)
        .map(|s| s..(s + step).min(words))
        .collect()
}

/// `part` of each of the [`parts`] of `words`, in order: the first on
/// this thread, the others on threads of their own.
fn on_parts<T: Send>(
    words: usize,
    part: impl Fn(std::ops::Range<usize>) -> Option<T> + Sync,
) -> Option<Vec<T>> {
    let ranges = parts(words);
    let Some((first, rest)) = ranges.split_first() else {
        return Some(Vec::new());
    };
    std::thread::scope(|s| {
        let part = &part;
        let handles: Vec<_> = rest
            .iter()
            .map(|r| {
                let r = r.clone();
                s.spawn(move || part(r))
            })
            .collect();
        let mut out = vec![part(first.clone())?];
        for h in handles {
            out.push(h.join().ok()??);
        }
        Some(out)
    })
}

/// `|pos[0] ∩ … ∖ neg[0] ∖ …|`, or `None` when the shape is not one
/// [`fold`] takes or the operands' lengths differ.
pub(crate) fn count(pos: &[Arc<Dense>], neg: &[Arc<Dense>]) -> Option<u64> {
    let (p, n, words) = slices(pos, neg)?;
    let totals = on_parts(words, |range| {
        let mut total = 0u64;
        fold(&p, &n, range, |_, w| total += u64::from(w.count_ones())).then_some(total)
    })?;
    Some(totals.into_iter().sum())
}

/// The members of `pos[0] ∩ … ∖ neg[0] ∖ …`, or `None` as for [`count`].
pub(crate) fn members(pos: &[Arc<Dense>], neg: &[Arc<Dense>]) -> Option<RoaringBitmap> {
    let (p, n, words) = slices(pos, neg)?;
    let lists = on_parts(words, |range| {
        let mut out = Vec::new();
        fold(&p, &n, range, |i, mut w| {
            while w != 0 {
                out.push((i as u32) * 64 + w.trailing_zeros());
                w &= w - 1;
            }
        })
        .then_some(out)
    })?;
    // Ascending: the ranges are in order and each list is.
    RoaringBitmap::from_sorted_iter(lists.into_iter().flatten()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(values: &[u32], words: usize) -> Arc<Dense> {
        Arc::new(Dense::new(&values.iter().copied().collect(), words))
    }

    #[test]
    fn and_not_in_one_pass() {
        let words = 4;
        let a = dense(&[0, 1, 63, 64, 100, 200, 255], words);
        let b = dense(&[1, 63, 64, 100, 255, 256], words);
        let c = dense(&[63, 255], words);
        assert_eq!(
            count(&[a.clone(), b.clone()], std::slice::from_ref(&c)),
            Some(3)
        );
        let m =
            members(&[a.clone(), b.clone()], std::slice::from_ref(&c)).expect("a shape it takes");
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![1, 64, 100]);
        // 256 is past the words: not kept.
        assert_eq!(count(std::slice::from_ref(&b), &[]), Some(5));
        // Shapes it does not take, and operands of other lengths.
        let seven = vec![a.clone(); MAX_POSITIVE + 1];
        assert_eq!(count(&seven, &[]), None);
        assert_eq!(count(std::slice::from_ref(&a), &[dense(&[1], 2)]), None);
        assert_eq!(count(&[], &[c]), None);
    }

    #[test]
    fn split_over_cores_gives_the_same_answer() {
        let words = SPLIT_WORDS * 2 + 3;
        let top = (words * 64) as u32;
        let a: Vec<u32> = (0..top).step_by(3).collect();
        let b: Vec<u32> = (0..top).step_by(5).collect();
        let c: Vec<u32> = (0..top).step_by(7).collect();
        let want: Vec<u32> = (0..top)
            .filter(|x| x % 3 == 0 && x % 5 == 0 && x % 7 != 0)
            .collect();
        let (a, b, c) = (dense(&a, words), dense(&b, words), dense(&c, words));
        assert_eq!(
            count(&[a.clone(), b.clone()], std::slice::from_ref(&c)),
            Some(want.len() as u64)
        );
        let m = members(&[a, b], &[c]).expect("a shape it takes");
        assert_eq!(m.len(), want.len() as u64);
        assert!(m.iter().eq(want.iter().copied()));
    }

    #[test]
    fn worth_it_only_for_dense_enough_operands() {
        assert!(worth(1_000, 1_000, 3));
        assert!(!worth(100, 1_000, 3));
        assert!(!worth(1_000, 0, 1));
    }
}
