//! Bit-sliced index (O'Neil & Quass, "Improved Query Performance with
//! Variant Indexes", 1997): one numeric value per person ordinal, kept as one
//! bitmap per bit of `value - base` plus an existence bitmap. `=`, `<`, `>=`,
//! ranges and sums are a handful of bitmap operations per bit, never a scan.
//!
//! File format (little-endian), version 1:
//!
//! ```text
//! b"QBSI"  u32 version  i64 base  u32 n (bit slices)
//! n + 1 × { u64 length, portable roaring bitmap }   existence, then bit 0 .. bit n-1
//! u32 crc32 of every byte before it
//! ```

use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};

use roaring::RoaringBitmap;

use super::Ordinal;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"QBSI";
const VERSION: u32 = 1;
/// A corrupt length field must not make a reader allocate gigabytes.
const MAX_BITMAP_BYTES: u64 = 1 << 34;

/// A comparison of each person's value with a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compare {
    /// `value = c`
    Eq,
    /// `value != c` (persons with a value only)
    Ne,
    /// `value < c`
    Lt,
    /// `value <= c`
    Le,
    /// `value > c`
    Gt,
    /// `value >= c`
    Ge,
}

/// A bit-sliced index of `i64` values over person ordinals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bsi {
    base: i64,
    exists: RoaringBitmap,
    /// `slices[i]`: ordinals whose `value - base` has bit `i` set.
    slices: Vec<RoaringBitmap>,
}

impl Bsi {
    /// Builds the index; when an ordinal appears twice, its last value counts.
    pub fn from_values(values: impl IntoIterator<Item = (Ordinal, i64)>) -> Self {
        let mut values: Vec<(Ordinal, i64)> = values.into_iter().collect();
        // stable: the last of equal ordinals ends last, and wins below
        values.sort_by_key(|(o, _)| *o);
        values.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1;
                true
            } else {
                false
            }
        });
        Self::from_sorted_values(&values)
    }

    /// Builds the index from values sorted by ordinal, each ordinal once.
    pub fn from_sorted_values(values: &[(Ordinal, i64)]) -> Self {
        let Some(base) = values.iter().map(|(_, v)| *v).min() else {
            return Bsi::default();
        };
        let max = values
            .iter()
            .map(|(_, v)| offset(*v, base))
            .max()
            .unwrap_or(0);
        let bits = (u64::BITS - max.leading_zeros()) as usize;
        Self::dense_slices(values, base, bits)
            .unwrap_or_else(|| Self::appended_slices(values, base, bits))
    }

    /// [`Bsi::from_sorted_values`] by appending each bit to its slice.
    fn appended_slices(values: &[(Ordinal, i64)], base: i64, bits: usize) -> Bsi {
        let mut slices = vec![RoaringBitmap::new(); bits];
        for (o, v) in values {
            let mut x = offset(*v, base);
            while x != 0 {
                let bit = x.trailing_zeros() as usize;
                if slices[bit].try_push(o.0).is_err() {
                    slices[bit].insert(o.0);
                }
                x &= x - 1;
            }
        }
        let exists = RoaringBitmap::from_sorted_iter(values.iter().map(|(o, _)| o.0))
            .unwrap_or_else(|_| values.iter().map(|(o, _)| o.0).collect());
        Bsi {
            base,
            exists,
            slices,
        }
    }

    /// [`Bsi::from_sorted_values`] when the ordinals are dense (at least one
    /// in 16 of their range, as a trait over every person is): the bits go
    /// into one plain bitset per slice, each turned into roaring containers
    /// at once, instead of one append per bit. `None` when sparse.
    fn dense_slices(values: &[(Ordinal, i64)], base: i64, bits: usize) -> Option<Bsi> {
        // min and max, not first and last: no index can go out of range
        // even if a caller broke the sorted contract
        let first = values.iter().map(|v| v.0.0).min()?;
        let last = values.iter().map(|v| v.0.0).max()?;
        // Container-aligned, so no bitset needs shifting.
        let lo = first & !0xFFFF;
        let span = (last - lo) as usize + 1;
        if span > values.len().saturating_mul(16) {
            return None;
        }
        let bytes = span.div_ceil(8);
        let mut exists = vec![0u8; bytes];
        let mut slices = vec![vec![0u8; bytes]; bits];
        for (o, v) in values {
            let i = (o.0 - lo) as usize;
            let (byte, mask) = (i >> 3, 1u8 << (i & 7));
            exists[byte] |= mask;
            let mut x = offset(*v, base);
            while x != 0 {
                slices[x.trailing_zeros() as usize][byte] |= mask;
                x &= x - 1;
            }
        }
        Some(Bsi {
            base,
            exists: RoaringBitmap::from_lsb0_bytes(lo, &exists),
            slices: slices
                .iter()
                .map(|b| RoaringBitmap::from_lsb0_bytes(lo, b))
                .collect(),
        })
    }

    /// The per-person sum of two indexes, a person missing from one counting
    /// as 0 there (how per-day behaviour counts add up over a window). A
    /// ripple-carry adder over the bit slices: a few bitmap operations per
    /// bit, no per-person work. `None` when a value is negative or a sum
    /// exceeds `i64::MAX` (counts are neither).
    pub fn add(&self, other: &Bsi) -> Option<Bsi> {
        let a = self.unsigned_slices()?;
        let b = other.unsigned_slices()?;
        let slices = add_slices(&a, &b)?;
        if slices.len() >= 64 {
            return None;
        }
        Some(Bsi {
            base: 0,
            exists: &self.exists | &other.exists,
            slices,
        })
    }

    /// The index with the values of `from`'s members moved to `to(member)`
    /// and added to whatever is there: how a merge folds a retired person's
    /// counts into its survivor's. `None` when a value is negative or a sum
    /// overflows (see [`Bsi::add`]).
    pub fn moved(&self, from: &RoaringBitmap, to: impl Fn(u32) -> u32) -> Option<Bsi> {
        let hit = &self.exists & from;
        if hit.is_empty() {
            return Some(self.clone());
        }
        let mut moved: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
        for o in &hit {
            let v = self.get(Ordinal(o))?;
            let slot = moved.entry(to(o)).or_default();
            *slot = slot.checked_add(v)?;
        }
        let rest = Bsi {
            base: self.base,
            exists: &self.exists - &hit,
            slices: self.slices.iter().map(|s| s - &hit).collect(),
        };
        let moved: Vec<(Ordinal, i64)> = moved.into_iter().map(|(o, v)| (Ordinal(o), v)).collect();
        rest.add(&Bsi::from_sorted_values(&moved))
    }

    /// The smallest and largest value among the persons of `within` that
    /// have one: one pass over the bit slices from the top, keeping the
    /// persons whose bit is clear (for the minimum) or set (for the maximum)
    /// when any are left.
    pub fn min_max(&self, within: &RoaringBitmap) -> Option<(i64, i64)> {
        let set = &self.exists & within;
        if set.is_empty() {
            return None;
        }
        let (mut lo_set, mut hi_set) = (set.clone(), set);
        let (mut lo, mut hi) = (0u64, 0u64);
        for (bit, slice) in self.slices.iter().enumerate().rev() {
            let clear = &lo_set - slice;
            if clear.is_empty() {
                lo |= 1 << bit;
            } else {
                lo_set = clear;
            }
            let set_bit = &hi_set & slice;
            if !set_bit.is_empty() {
                hi |= 1 << bit;
                hi_set = set_bit;
            }
        }
        Some((
            self.base.wrapping_add(lo as i64),
            self.base.wrapping_add(hi as i64),
        ))
    }

    /// The index of the persons in `within` only.
    pub fn restricted(&self, within: &RoaringBitmap) -> Bsi {
        Bsi {
            base: self.base,
            exists: &self.exists & within,
            slices: self.slices.iter().map(|s| s & within).collect(),
        }
    }

    /// Every `(ordinal, value)`, ascending by ordinal.
    pub fn values(&self) -> Vec<(Ordinal, i64)> {
        let mut out: Vec<(Ordinal, u64)> = self.exists.iter().map(|o| (Ordinal(o), 0)).collect();
        for (bit, slice) in self.slices.iter().enumerate() {
            // both ascend: one merge walk per slice (a bit of a person
            // without a value, in a damaged file, is ignored)
            let mut i = 0;
            for o in slice {
                while i < out.len() && out[i].0.0 < o {
                    i += 1;
                }
                match out.get_mut(i) {
                    Some(slot) if slot.0.0 == o => slot.1 |= 1 << bit,
                    Some(_) => {}
                    None => break,
                }
            }
        }
        out.into_iter()
            .map(|(o, x)| (o, self.base.wrapping_add(x as i64)))
            .collect()
    }

    /// The slices of `value` itself (base folded in); `None` if a value is negative.
    fn unsigned_slices(&self) -> Option<Vec<RoaringBitmap>> {
        if self.base < 0 && !self.exists.is_empty() {
            return None;
        }
        let c = self.base.max(0) as u64;
        if c == 0 {
            return Some(self.slices.clone());
        }
        // + base on every member: add the constant whose set bits are `exists`
        let constant: Vec<RoaringBitmap> = (0..(u64::BITS - c.leading_zeros()))
            .map(|bit| {
                if (c >> bit) & 1 == 1 {
                    self.exists.clone()
                } else {
                    RoaringBitmap::new()
                }
            })
            .collect();
        add_slices(&self.slices, &constant)
    }

    /// Persons with a value.
    pub fn exists(&self) -> &RoaringBitmap {
        &self.exists
    }

    /// Number of persons with a value.
    pub fn len(&self) -> u64 {
        self.exists.len()
    }

    /// Whether no person has a value.
    pub fn is_empty(&self) -> bool {
        self.exists.is_empty()
    }

    /// The value of one person, if it has one.
    pub fn get(&self, o: Ordinal) -> Option<i64> {
        if !self.exists.contains(o.0) {
            return None;
        }
        let x = self
            .slices
            .iter()
            .enumerate()
            .filter(|(_, s)| s.contains(o.0))
            .fold(0u64, |acc, (bit, _)| acc | (1 << bit));
        Some(self.base.wrapping_add(x as i64))
    }

    /// Persons of `within` whose value compares to `c` as `op` says: the
    /// bit-slice walk starts from `within`'s members with a value, so a small
    /// `within` makes every step small.
    pub fn compare_in(&self, op: Compare, c: i64, within: &RoaringBitmap) -> RoaringBitmap {
        self.compare_from(&self.exists & within, op, c)
    }

    /// Persons whose value compares to `c` as `op` says.
    pub fn compare(&self, op: Compare, c: i64) -> RoaringBitmap {
        self.compare_from(self.exists.clone(), op, c)
    }

    /// The persons of `start` (members with a value) whose value compares
    /// to `c` as `op` says.
    fn compare_from(&self, start: RoaringBitmap, op: Compare, c: i64) -> RoaringBitmap {
        let (lt, eq, gt) = self.split_from(start, c, op);
        match op {
            Compare::Eq => eq,
            Compare::Ne => lt | gt,
            Compare::Lt => lt,
            Compare::Le => lt | eq,
            Compare::Gt => gt,
            Compare::Ge => gt | eq,
        }
    }

    /// Persons whose value lies in `range`.
    pub fn range(&self, range: impl RangeBounds<i64>) -> RoaringBitmap {
        let low = match range.start_bound() {
            Bound::Included(v) => self.compare(Compare::Ge, *v),
            Bound::Excluded(v) => self.compare(Compare::Gt, *v),
            Bound::Unbounded => self.exists.clone(),
        };
        match range.end_bound() {
            Bound::Included(v) => low & self.compare(Compare::Le, *v),
            Bound::Excluded(v) => low & self.compare(Compare::Lt, *v),
            Bound::Unbounded => low,
        }
    }

    /// The sum of the values of the persons in `within` (those with a value).
    pub fn sum(&self, within: &RoaringBitmap) -> i128 {
        let n = self.exists.intersection_len(within) as i128;
        let bits: i128 = self
            .slices
            .iter()
            .enumerate()
            .map(|(bit, s)| (s.intersection_len(within) as i128) << bit)
            .sum();
        bits + n * self.base as i128
    }

    /// `(value < c, value = c, value > c)` among the persons of `start`
    /// (members with a value), by one walk down the bit slices, as far as
    /// `op` needs them: the `<` and `>` parts are only gathered when `op`
    /// uses them, and the walk may stop early with the persons `op` keeps
    /// already placed in a part it uses (so only `op`'s union is exact).
    fn split_from(
        &self,
        start: RoaringBitmap,
        c: i64,
        op: Compare,
    ) -> (RoaringBitmap, RoaringBitmap, RoaringBitmap) {
        let empty = RoaringBitmap::new;
        if c < self.base {
            return (empty(), empty(), start);
        }
        let c = offset(c, self.base);
        if self.slices.len() < 64 && c >> self.slices.len() != 0 {
            return (start, empty(), empty());
        }
        let want_lt = matches!(op, Compare::Lt | Compare::Le | Compare::Ne);
        let want_gt = matches!(op, Compare::Gt | Compare::Ge | Compare::Ne);
        let (mut lt, mut eq, mut gt) = (empty(), start, empty());
        for (bit, slice) in self.slices.iter().enumerate().rev() {
            if eq.is_empty() {
                break;
            }
            // Once `c`'s remaining bits cannot move anyone out of the part
            // `op` keeps, the walk is done: with only zeros left, no one
            // still equal can fall below `c` (`>=` keeps them all, `<` none);
            // with only ones left, no one can rise above it (`<=` keeps them
            // all, `>` none). `eq` is then what `op` takes it as.
            let rest = c & (u64::MAX >> (63 - bit));
            let all_ones = rest == u64::MAX >> (63 - bit);
            match op {
                Compare::Ge if rest == 0 => return (lt, empty(), gt | eq),
                Compare::Lt if rest == 0 => return (lt, empty(), gt),
                Compare::Le if all_ones => return (lt | eq, empty(), gt),
                Compare::Gt if all_ones => return (lt, empty(), gt),
                _ => {}
            }
            if (c >> bit) & 1 == 1 {
                if want_lt {
                    lt |= &eq - slice;
                }
                eq &= slice;
            } else {
                if want_gt {
                    gt |= &eq & slice;
                }
                eq -= slice;
            }
        }
        (lt, eq, gt)
    }

    /// Writes the index in the format described in the module docs.
    pub fn write_to(&self, w: impl Write) -> std::io::Result<()> {
        let mut w = Crc32Writer::new(w);
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&self.base.to_le_bytes())?;
        w.write_all(&(self.slices.len() as u32).to_le_bytes())?;
        for b in std::iter::once(&self.exists).chain(&self.slices) {
            w.write_all(&(b.serialized_size() as u64).to_le_bytes())?;
            b.serialize_into(&mut w)?;
        }
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())
    }

    /// Reads an index written by [`Bsi::write_to`]; `what` names it in errors.
    pub fn read_from(r: impl Read, what: &str) -> Result<Self> {
        let corrupt = |why: String| Error::Internal(format!("bit-sliced index `{what}`: {why}"));
        let mut r = Crc32Reader::new(r);
        let io = |e: std::io::Error| corrupt(format!("truncated or unreadable ({e})"));
        let mut head = [0u8; 20];
        r.read_exact(&mut head).map_err(io)?;
        if &head[..4] != MAGIC {
            return Err(corrupt("not a QBSI file".into()));
        }
        let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if version != VERSION {
            return Err(corrupt(format!(
                "format version {version}; this build reads {VERSION}"
            )));
        }
        let mut base = [0u8; 8];
        base.copy_from_slice(&head[8..16]);
        let base = i64::from_le_bytes(base);
        let n = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
        if n > 64 {
            return Err(corrupt(format!("{n} bit slices (at most 64)")));
        }
        let mut bitmaps = Vec::with_capacity(n + 1);
        for i in 0..=n {
            let mut len = [0u8; 8];
            r.read_exact(&mut len).map_err(io)?;
            let len = u64::from_le_bytes(len);
            if len > MAX_BITMAP_BYTES {
                return Err(corrupt(format!("bitmap {i} claims {len} bytes")));
            }
            let mut bytes = vec![0u8; len as usize];
            r.read_exact(&mut bytes).map_err(io)?;
            let b = RoaringBitmap::deserialize_from(&bytes[..])
                .map_err(|e| corrupt(format!("bitmap {i}: {e}")))?;
            bitmaps.push(b);
        }
        let expected = r.crc.clone().finalize();
        let mut crc = [0u8; 4];
        r.inner.read_exact(&mut crc).map_err(io)?;
        if u32::from_le_bytes(crc) != expected {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut bitmaps = bitmaps.into_iter();
        let exists = bitmaps.next().unwrap_or_default();
        Ok(Bsi {
            base,
            exists,
            slices: bitmaps.collect(),
        })
    }
}

/// Bitwise ripple-carry addition of two unsigned bit-sliced numbers; `None`
/// on a carry out of bit 63.
fn add_slices(a: &[RoaringBitmap], b: &[RoaringBitmap]) -> Option<Vec<RoaringBitmap>> {
    let empty = RoaringBitmap::new();
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n + 1);
    let mut carry = RoaringBitmap::new();
    for i in 0..n {
        let x = a.get(i).unwrap_or(&empty);
        let y = b.get(i).unwrap_or(&empty);
        let half = x ^ y;
        out.push(&half ^ &carry);
        carry = (x & y) | (&carry & &half);
    }
    if !carry.is_empty() {
        if n >= 64 {
            return None;
        }
        out.push(carry);
    }
    while out.last().is_some_and(RoaringBitmap::is_empty) {
        out.pop();
    }
    Some(out)
}

/// `v - base` as an unsigned offset (`v >= base`).
fn offset(v: i64, base: i64) -> u64 {
    (v as i128 - base as i128) as u64
}

/// A writer that keeps the CRC-32 of what went through it.
pub(crate) struct Crc32Writer<W> {
    pub(crate) inner: W,
    pub(crate) crc: crc32fast::Hasher,
}

impl<W: Write> Crc32Writer<W> {
    pub(crate) fn new(inner: W) -> Self {
        Crc32Writer {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Crc32Reader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Crc32Reader<R> {
    fn new(inner: R) -> Self {
        Crc32Reader {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<R: Read> Read for Crc32Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(values: &[(u32, i64)], keep: impl Fn(i64) -> bool) -> RoaringBitmap {
        let mut last = std::collections::BTreeMap::new();
        for (o, v) in values {
            last.insert(*o, *v);
        }
        last.into_iter()
            .filter(|(_, v)| keep(*v))
            .map(|(o, _)| o)
            .collect()
    }

    fn build(values: &[(u32, i64)]) -> Bsi {
        Bsi::from_values(values.iter().map(|(o, v)| (Ordinal(*o), *v)))
    }

    #[test]
    fn small_example() {
        let b = build(&[(1, 10), (2, 25), (3, 10), (7, 0), (9, -4), (2, 30)]);
        assert_eq!(b.len(), 5);
        assert_eq!(b.get(Ordinal(2)), Some(30), "the last value wins");
        assert_eq!(b.get(Ordinal(9)), Some(-4));
        assert_eq!(b.get(Ordinal(4)), None);
        let set = |v: &[u32]| v.iter().copied().collect::<RoaringBitmap>();
        assert_eq!(b.compare(Compare::Eq, 10), set(&[1, 3]));
        assert_eq!(b.compare(Compare::Ne, 10), set(&[2, 7, 9]));
        assert_eq!(b.compare(Compare::Lt, 10), set(&[7, 9]));
        assert_eq!(b.compare(Compare::Ge, 10), set(&[1, 2, 3]));
        assert_eq!(b.range(0..=10), set(&[1, 3, 7]));
        assert_eq!(b.range(..), set(&[1, 2, 3, 7, 9]));
        assert_eq!(b.compare(Compare::Gt, 1000), RoaringBitmap::new());
        assert_eq!(b.compare(Compare::Lt, -1000), RoaringBitmap::new());
        assert_eq!(b.sum(&set(&[1, 2, 9, 100])), 10 + 30 - 4);
    }

    #[test]
    fn empty_and_constant() {
        let e = build(&[]);
        assert!(e.is_empty());
        assert!(e.compare(Compare::Ge, 0).is_empty());
        let c = build(&[(5, 42), (6, 42)]);
        assert_eq!(c.compare(Compare::Eq, 42).len(), 2);
        assert_eq!(c.compare(Compare::Gt, 41).len(), 2);
        assert!(c.compare(Compare::Gt, 42).is_empty());
    }

    #[test]
    fn extremes_do_not_overflow() {
        let b = build(&[(0, i64::MIN), (1, i64::MAX), (2, 0)]);
        assert_eq!(b.get(Ordinal(0)), Some(i64::MIN));
        assert_eq!(b.get(Ordinal(1)), Some(i64::MAX));
        assert_eq!(b.compare(Compare::Gt, 0).len(), 1);
        assert_eq!(b.compare(Compare::Le, i64::MIN).len(), 1);
        assert_eq!(b.compare(Compare::Ge, i64::MIN).len(), 3);
    }

    #[test]
    fn add_refuses_negative_values_and_overflow() {
        let neg = build(&[(1, -1)]);
        assert!(neg.add(&build(&[(1, 5)])).is_none());
        let half = build(&[(1, i64::MAX / 2), (2, 0)]);
        let sum = half.add(&half).unwrap();
        assert_eq!(sum.get(Ordinal(1)), Some(i64::MAX - 1));
        assert!(sum.add(&half).is_none(), "past i64::MAX");
    }

    #[test]
    fn corrupt_files_are_errors() {
        let b = build(&[(1, 5), (70_000, 9)]);
        let mut bytes = Vec::new();
        b.write_to(&mut bytes).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        let err = Bsi::read_from(&bytes[..], "t").unwrap_err().to_string();
        assert!(err.contains("`t`"), "{err}");
        assert!(Bsi::read_from(&bytes[..10], "t").is_err());
        assert!(Bsi::read_from(&b"QBSX"[..], "t").is_err());
    }

    fn values() -> impl Strategy<Value = Vec<(u32, i64)>> {
        let value = prop_oneof![-50i64..50, 0i64..1_000_000, any::<i64>()];
        prop::collection::vec((0u32..300_000, value), 0..300)
    }

    proptest! {
        #[test]
        fn dense_and_appended_builds_are_equal(
            start in prop_oneof![Just(0u32), 60_000u32..70_000, Just(u32::MAX - 5_000)],
            vals in prop::collection::btree_map(
                0u32..5_000,
                prop_oneof![-50i64..50, 0i64..1_000_000, any::<i64>()],
                1..2_000,
            ),
        ) {
            let values: Vec<(Ordinal, i64)> =
                vals.into_iter().map(|(o, v)| (Ordinal(start + o), v)).collect();
            let base = values.iter().map(|v| v.1).min().unwrap_or(0);
            let max = values.iter().map(|v| offset(v.1, base)).max().unwrap_or(0);
            let bits = (u64::BITS - max.leading_zeros()) as usize;
            let appended = Bsi::appended_slices(&values, base, bits);
            match Bsi::dense_slices(&values, base, bits) {
                Some(dense) => prop_assert_eq!(dense, appended),
                None => prop_assert!(values.len() * 16 < 5_000 + 65_536),
            }
        }

        #[test]
        fn compare_equals_a_filter(vals in values(), c in prop_oneof![-60i64..60, any::<i64>()]) {
            let b = build(&vals);
            prop_assert_eq!(b.compare(Compare::Eq, c), naive(&vals, |v| v == c));
            prop_assert_eq!(b.compare(Compare::Ne, c), naive(&vals, |v| v != c));
            prop_assert_eq!(b.compare(Compare::Lt, c), naive(&vals, |v| v < c));
            prop_assert_eq!(b.compare(Compare::Le, c), naive(&vals, |v| v <= c));
            prop_assert_eq!(b.compare(Compare::Gt, c), naive(&vals, |v| v > c));
            prop_assert_eq!(b.compare(Compare::Ge, c), naive(&vals, |v| v >= c));
        }

        #[test]
        fn compare_within_equals_compare_then_intersect(
            vals in values(),
            c in prop_oneof![-60i64..60, any::<i64>()],
            within in prop::collection::vec(0u32..5_000, 0..300),
        ) {
            let b = build(&vals);
            let within: RoaringBitmap = within.into_iter().collect();
            for op in [Compare::Eq, Compare::Ne, Compare::Lt, Compare::Le, Compare::Gt, Compare::Ge] {
                prop_assert_eq!(b.compare_in(op, c, &within), b.compare(op, c) & &within);
            }
            prop_assert_eq!(b.restricted(&within).values(), (b.compare(Compare::Ge, i64::MIN) & &within)
                .iter().map(|o| (Ordinal(o), b.get(Ordinal(o)).unwrap())).collect::<Vec<_>>());
            let mm = b.min_max(&within);
            let in_scope: Vec<i64> = b.values().into_iter().filter(|(o, _)| within.contains(o.0)).map(|(_, v)| v).collect();
            prop_assert_eq!(mm, in_scope.iter().min().zip(in_scope.iter().max()).map(|(a, z)| (*a, *z)));
        }

        #[test]
        fn range_and_sum_equal_a_filter(vals in values(), lo in -60i64..60, width in 0i64..2_000_000) {
            let b = build(&vals);
            let hi = lo.saturating_add(width);
            let r = b.range(lo..hi);
            prop_assert_eq!(&r, &naive(&vals, |v| lo <= v && v < hi));
            let expected: i128 = r.iter().filter_map(|o| b.get(Ordinal(o))).map(i128::from).sum();
            prop_assert_eq!(b.sum(&r), expected);
        }

        #[test]
        fn add_equals_per_person_sums(
            a in prop::collection::vec((0u32..5_000, 0i64..1_000), 0..200),
            b in prop::collection::vec((0u32..5_000, prop_oneof![0i64..5, 0i64..(1 << 40)]), 0..200),
        ) {
            let (x, y) = (build(&a), build(&b));
            let sum = x.add(&y).unwrap();
            let mut expected = std::collections::BTreeMap::<u32, i64>::new();
            for bsi in [&x, &y] {
                for o in bsi.exists() {
                    *expected.entry(o).or_default() += bsi.get(Ordinal(o)).unwrap();
                }
            }
            prop_assert_eq!(sum.len(), expected.len() as u64);
            for (o, v) in &expected {
                prop_assert_eq!(sum.get(Ordinal(*o)), Some(*v));
            }
            let at_least = 3;
            prop_assert_eq!(
                sum.compare(Compare::Ge, at_least),
                expected.iter().filter(|(_, v)| **v >= at_least).map(|(o, _)| *o).collect::<RoaringBitmap>()
            );
        }

        #[test]
        fn file_round_trip(vals in values()) {
            let b = build(&vals);
            let mut bytes = Vec::new();
            b.write_to(&mut bytes).unwrap();
            prop_assert_eq!(Bsi::read_from(&bytes[..], "t").unwrap(), b);
        }
    }
}
