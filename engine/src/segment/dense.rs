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
//! reads fewer bytes' worth of work than the roaring path. A count sums
//! the words' bits, a member list reads them off, and a breakdown by an
//! enumerated field counts the members' value codes as it reads them, on
//! every core, with no member list built ([`code_counts`]).

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

/// A word range of the pass.
type Range = std::ops::Range<usize>;

/// Calls `f(i, w)` for each word `i` of `pos[0] & pos[1] & … & !neg[0] & …`
/// in `range`, with the operands' count fixed at compile time so the inner
/// loop is straight-line code.
#[inline(always)]
fn fold_fixed<const P: usize, const N: usize>(
    pos: [&[u64]; P],
    neg: [&[u64]; N],
    range: Range,
    mut f: impl FnMut(usize, u64),
) {
    let len = range.len();
    let pos = pos.map(|p| &p[range.clone()][..len]);
    let neg = neg.map(|q| &q[range.clone()][..len]);
    for i in 0..len {
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
#[inline(always)]
fn fold(pos: &[&[u64]], neg: &[&[u64]], range: Range, f: impl FnMut(usize, u64)) -> bool {
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

/// The set bits of `range`'s words, counted.
#[inline(always)]
fn count_range(pos: &[&[u64]], neg: &[&[u64]], range: Range) -> Option<u64> {
    let mut total = 0u64;
    fold(pos, neg, range, |_, w| total += u64::from(w.count_ones())).then_some(total)
}

/// Words combined at a time before their bits are read off: the combining
/// loop stays free of the readers' work (a member list's writes would make
/// it reload every operand's address per word) and vectorises.
const CHUNK: usize = 512;

/// Calls `f(o)` for each set bit `o` of `range`'s words, in ascending
/// order; `false` for a shape [`fold`] does not take.
///
/// The words are combined a chunk ahead of their reading: `ahead(o)` is
/// called with the first and last set bit of each nonzero word as soon as
/// its chunk is combined, and `f` only once the next chunk is, so that what
/// `ahead` starts fetching (a member's value code, a cache miss each) has
/// arrived by the time `f` needs it.
#[inline(always)]
fn visit_range(
    pos: &[&[u64]],
    neg: &[&[u64]],
    range: Range,
    mut ahead: impl FnMut(u32),
    mut f: impl FnMut(u32),
) -> bool {
    const GROUPS: usize = CHUNK / 64;
    let mut bufs = [[0u64; CHUNK]; 2];
    // Per chunk, a mask of its nonzero words per 64 (a vector compare):
    // most are zero in a selective question, and testing them one by one
    // costs a branch each.
    let mut masks = [[0u64; GROUPS]; 2];
    let mut waiting: Option<(usize, usize)> = None;
    for (k, start) in range.clone().step_by(CHUNK).enumerate() {
        let side = k % 2;
        let chunk = start..(start + CHUNK).min(range.end);
        let words = &mut bufs[side][..chunk.len()];
        if !fold(pos, neg, chunk.clone(), |i, w| words[i - start] = w) {
            return false;
        }
        masks[side] = [0; GROUPS];
        for (mask, group) in masks[side].iter_mut().zip(words.chunks(64)) {
            let mut nonzero = 0u64;
            for (j, &w) in group.iter().enumerate() {
                nonzero |= u64::from(w != 0) << j;
            }
            *mask = nonzero;
        }
        visit_chunk(&bufs[side], &masks[side], start, &mut ahead, true);
        if let Some((earlier, s)) = waiting.replace((start, side)) {
            visit_chunk(&bufs[s], &masks[s], earlier, &mut f, false);
        }
    }
    if let Some((earlier, s)) = waiting {
        visit_chunk(&bufs[s], &masks[s], earlier, &mut f, false);
    }
    true
}

/// Calls `f` for each set bit of the nonzero words `masks` marks in a chunk
/// starting at word `start`, or (`ends`) for each such word's first and
/// last set bit only.
#[inline(always)]
fn visit_chunk(
    words: &[u64; CHUNK],
    masks: &[u64; CHUNK / 64],
    start: usize,
    f: &mut impl FnMut(u32),
    ends: bool,
) {
    for (g, (&mask, group)) in masks.iter().zip(words.chunks(64)).enumerate() {
        let mut nonzero = mask;
        while nonzero != 0 {
            let j = nonzero.trailing_zeros() as usize;
            nonzero &= nonzero - 1;
            let base = ((start + g * 64 + j) as u32) * 64;
            let mut w = group[j];
            if ends {
                f(base + w.trailing_zeros());
                f(base + 63 - w.leading_zeros());
                continue;
            }
            while w != 0 {
                f(base + w.trailing_zeros());
                w &= w - 1;
            }
        }
    }
}

/// The set bits of `range`'s words, as ordinals in ascending order.
#[inline(always)]
fn members_range(pos: &[&[u64]], neg: &[&[u64]], range: Range) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    visit_range(pos, neg, range, |_| {}, |o| out.push(o)).then_some(out)
}

/// Members per value code and their number (see [`code_counts`]).
pub(crate) type CodeCounts = (u64, Vec<u64>);

/// The set bits of `range`'s words counted per `codes[o]` (slot `values`:
/// no code), and their number.
#[inline(always)]
fn codes_range(
    pos: &[&[u64]],
    neg: &[&[u64]],
    range: Range,
    codes: &[u16],
    values: usize,
) -> Option<CodeCounts> {
    let mut counts = vec![0u64; values + 1];
    let mut members = 0u64;
    // A member's code is a cache miss (a 14 M person index's codes are
    // 28 MB): asked for a chunk before it is read.
    let fetch = |o: u32| crate::prefetch::prefetch(codes, o as usize);
    let count = |o: u32| {
        members += 1;
        let code = codes.get(o as usize).map_or(values, |&c| usize::from(c));
        counts[code.min(values)] += 1;
    };
    let visited = visit_range(pos, neg, range, fetch, count);
    visited.then_some((members, counts))
}

/// The pass compiled for AVX2, POPCNT and BMI1, which the default x86-64
/// target leaves out: four words a vector and a word's bits counted in one
/// instruction instead of a dozen (1.4× on three 1.75 MiB operands here).
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::{CodeCounts, Range};

    /// Whether this CPU has the instructions (detected once, then cached).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("bmi1")
    }

    #[target_feature(enable = "avx2,popcnt,bmi1")]
    pub(super) fn count_range(pos: &[&[u64]], neg: &[&[u64]], range: Range) -> Option<u64> {
        super::count_range(pos, neg, range)
    }

    #[target_feature(enable = "avx2,popcnt,bmi1")]
    pub(super) fn members_range(pos: &[&[u64]], neg: &[&[u64]], range: Range) -> Option<Vec<u32>> {
        super::members_range(pos, neg, range)
    }

    #[target_feature(enable = "avx2,popcnt,bmi1")]
    pub(super) fn codes_range(
        pos: &[&[u64]],
        neg: &[&[u64]],
        range: Range,
        codes: &[u16],
        values: usize,
    ) -> Option<CodeCounts> {
        super::codes_range(pos, neg, range, codes, values)
    }
}

/// Calls `wide::$f` when this CPU has its instructions, else `$f`.
macro_rules! widest {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if wide::available() {
            // SAFETY: `available` checked that this CPU has every feature
            // the `wide` functions are compiled with.
            return unsafe { wide::$f($($arg),*) };
        }
        $f($($arg),*)
    }};
}

/// [`count_range`], with the CPU's wider instructions when it has them.
#[allow(unsafe_code)]
fn count_part(pos: &[&[u64]], neg: &[&[u64]], range: Range) -> Option<u64> {
    widest!(count_range(pos, neg, range))
}

/// [`members_range`], with the CPU's wider instructions when it has them.
#[allow(unsafe_code)]
fn members_part(pos: &[&[u64]], neg: &[&[u64]], range: Range) -> Option<Vec<u32>> {
    widest!(members_range(pos, neg, range))
}

/// [`codes_range`], with the CPU's wider instructions when it has them.
#[allow(unsafe_code)]
fn codes_part(
    pos: &[&[u64]],
    neg: &[&[u64]],
    range: Range,
    codes: &[u16],
    values: usize,
) -> Option<CodeCounts> {
    widest!(codes_range(pos, neg, range, codes, values))
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
fn parts(words: usize) -> Vec<Range> {
    let k = if words >= SPLIT_WORDS {
        helpers::cores()
    } else {
        1
    };
    let step = words.div_ceil(k).max(1);
    (0..words)
        .step_by(step)
        .map(|s| s..(s + step).min(words))
        .collect()
}

/// `part` of each of the [`parts`] of the operands' words, in order: the
/// first on this thread, the others offered to the [`helpers`]; a part no
/// helper has started when this thread is done with its own is taken back
/// and done here, so a busy helper never holds a question up.
fn on_parts<T: Send + 'static>(
    pos: &[Arc<Dense>],
    neg: &[Arc<Dense>],
    part: impl Fn(&[&[u64]], &[&[u64]], Range) -> Option<T> + Clone + Send + 'static,
) -> Option<Vec<T>> {
    let (p, n, words) = slices(pos, neg)?;
    let ranges = parts(words);
    let Some((first, rest)) = ranges.split_first() else {
        return Some(Vec::new());
    };
    let offered: Vec<_> = rest
        .iter()
        .map(|r| {
            let (pos, neg, r, part) = (pos.to_vec(), neg.to_vec(), r.clone(), part.clone());
            helpers::offer(move || {
                let (p, n, _) = slices(&pos, &neg)?;
                part(&p, &n, r)
            })
        })
        .collect();
    let mut out = vec![part(&p, &n, first.clone())?];
    for (o, r) in offered.into_iter().zip(rest) {
        out.push(o.take_back().unwrap_or_else(|| part(&p, &n, r.clone()))?);
    }
    Some(out)
}

/// Threads kept for the passes' other parts: starting a thread per
/// question costs 20–40 µs at the median (over a millisecond at the tail)
/// on a 2-core VM, waking a waiting one a few.
mod helpers {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock, mpsc};

    type Job = Box<dyn FnOnce() + Send>;

    /// The cores a pass is split over (at most 8), asked once: the
    /// answer reads the cgroup's files on Linux.
    pub(super) fn cores() -> usize {
        static CORES: OnceLock<usize> = OnceLock::new();
        *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
    }

    /// The queue the helpers take jobs from; `None` when no thread could be
    /// started (every part is then done by the asking thread).
    fn queue() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
        static QUEUE: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
        QUEUE
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                let rx = Arc::new(Mutex::new(rx));
                let mut started = 0;
                for i in 1..cores() {
                    let rx = rx.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("quiver-dense-{i}"))
                        .spawn(move || {
                            loop {
                                // The lock is held only while waiting for a job.
                                let job = match rx.lock() {
                                    Ok(rx) => rx.recv(),
                                    Err(_) => return,
                                };
                                let Ok(job) = job else { return };
                                // A part that panics reports nothing (its
                                // asker sees `None` and takes the roaring path).
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                        });
                    started += usize::from(spawned.is_ok());
                }
                (started > 0).then(|| Mutex::new(tx))
            })
            .as_ref()
    }

    /// A part offered to the helpers.
    pub(super) struct Offered<T> {
        claimed: Arc<AtomicBool>,
        done: Option<mpsc::Receiver<Option<T>>>,
    }

    impl<T> Offered<T> {
        /// `None` when no helper started the part (it is withdrawn: the
        /// caller does it); otherwise the helper's answer, waited for
        /// (`Some(None)` when it failed).
        pub(super) fn take_back(self) -> Option<Option<T>> {
            if !self.claimed.swap(true, Ordering::AcqRel) {
                return None;
            }
            Some(self.done.and_then(|rx| rx.recv().ok()).flatten())
        }
    }

    /// Offers `job` to a helper.
    pub(super) fn offer<T: Send + 'static>(
        job: impl FnOnce() -> Option<T> + Send + 'static,
    ) -> Offered<T> {
        let claimed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(1);
        let flag = claimed.clone();
        let boxed: Job = Box::new(move || {
            if !flag.swap(true, Ordering::AcqRel) {
                let _ = tx.send(job());
            }
        });
        let sent = queue()
            .and_then(|q| q.lock().ok())
            .is_some_and(|q| q.send(boxed).is_ok());
        Offered {
            claimed,
            // Not sent: nobody will start it, `take_back` withdraws it.
            done: sent.then_some(rx),
        }
    }
}

/// `|pos[0] ∩ … ∖ neg[0] ∖ …|`, or `None` when the shape is not one
/// [`fold`] takes or the operands' lengths differ.
pub(crate) fn count(pos: &[Arc<Dense>], neg: &[Arc<Dense>]) -> Option<u64> {
    Some(on_parts(pos, neg, count_part)?.into_iter().sum())
}

/// The members of `pos[0] ∩ … ∖ neg[0] ∖ …` counted per value code
/// (`codes[o]`: ordinal `o`'s position among `values` values, anything
/// else none), and their number; `None` as for [`count`].
pub(crate) fn code_counts(
    pos: &[Arc<Dense>],
    neg: &[Arc<Dense>],
    codes: Arc<Vec<u16>>,
    values: usize,
) -> Option<CodeCounts> {
    let parts = on_parts(pos, neg, move |p, n, r| codes_part(p, n, r, &codes, values))?;
    let mut total = (0u64, vec![0u64; values]);
    for (members, counts) in parts {
        total.0 += members;
        for (t, c) in total.1.iter_mut().zip(counts) {
            *t += c;
        }
    }
    Some(total)
}

/// The members of `pos[0] ∩ … ∖ neg[0] ∖ …`, or `None` as for [`count`].
pub(crate) fn members(pos: &[Arc<Dense>], neg: &[Arc<Dense>]) -> Option<RoaringBitmap> {
    let lists = on_parts(pos, neg, members_part)?;
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
    fn questions_at_once_share_the_helpers() {
        let words = SPLIT_WORDS * 2 + 5;
        let top = (words * 64) as u32;
        let a = dense(&(0..top).step_by(3).collect::<Vec<_>>(), words);
        let b = dense(&(0..top).step_by(11).collect::<Vec<_>>(), words);
        let codes = Arc::new((0..top).map(|x| (x % 4) as u16).collect::<Vec<_>>());
        let (mut want, mut per_code) = (0u64, vec![0u64; 4]);
        for x in (0..top).filter(|x| x % 3 == 0 && x % 11 != 0) {
            want += 1;
            per_code[(x % 4) as usize] += 1;
        }
        per_code.truncate(3);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2 {
                        let (p, n) = (std::slice::from_ref(&a), std::slice::from_ref(&b));
                        assert_eq!(count(p, n), Some(want));
                        assert_eq!(members(p, n).map(|m| m.len()), Some(want));
                        // Code 3 is past the 3 values: counted as none.
                        let (members, counts) =
                            code_counts(p, n, codes.clone(), 3).expect("a shape it takes");
                        assert_eq!(members, want);
                        assert_eq!(counts, per_code);
                    }
                });
            }
        });
    }

    #[test]
    fn worth_it_only_for_dense_enough_operands() {
        assert!(worth(1_000, 1_000, 3));
        assert!(!worth(100, 1_000, 3));
        assert!(!worth(1_000, 0, 1));
    }
}
