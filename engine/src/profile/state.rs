//! What a refresh keeps for the next one: every per-person accumulator of the
//! events read so far and the attribute history, with the Delta version of
//! `events` and the OneID run they cover. An incremental refresh starts from
//! it instead of reading every event again.
//!
//! File `index/refresh.state` (one, the latest; written atomically after the
//! index version it belongs to), little-endian:
//!
//! ```text
//! b"QRST"  u32 format (2)  u32 n  n bytes of JSON (StateMeta)
//! u64 ordinals, then a column of a value per ordinal each: first_seen i64,
//!   last_seen i64, events u32, orders u32, spend i64, last_order i64,
//!   register time i64, register channel u32
//! channel counts, then category counts: u32 d, d columns (a u32 per
//!   ordinal: id 0, 1, ...), u32 spilled (0 or 1), if 1 per ordinal the ids
//!   past the columns (u32 k, then k × (u32 id, u32 count))
//! per ordinal: attributes (u32 k, then k × (u32 key, i64 time, u32 value))
//! 5 string tables (channels, categories, attribute keys, attribute values,
//!   event types): u32 k, then k × (u32 length, UTF-8)
//! u64 history rows, each: u32 ordinal, u32 key, u32 value, i64 time, string event_id
//! u64 events read, u64 events unattributed
//! u32 CRC-32 of every byte before it
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::scan::{AttributeChange, BehaviourKey, Counts, Interner, Scan};
use crate::index::Crc32Writer;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"QRST";
const FORMAT: u32 = 2;
/// A corrupt length must not make a reader allocate without bound.
const MAX_LEN: u64 = 1 << 32;

/// What the accumulators cover.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StateMeta {
    /// The index version built from them.
    pub index_version: u64,
    /// The Delta version of `events` read up to.
    pub events_version: u64,
    /// The OneID run events were attributed by.
    pub identity_run: u64,
    /// That run's rules hash.
    pub rules_hash: String,
    /// A hash of that run's quarantined values.
    pub quarantine_hash: String,
    /// Behaviour dimensions and multi-filter keys counted.
    pub dimensions: Vec<String>,
    pub combos: Vec<BehaviourKey>,
}

/// The state file of a workspace's index directory.
pub(crate) fn path(index_dir: &Path) -> PathBuf {
    index_dir.join("refresh.state")
}

/// A fixed-width little-endian value of a column.
trait Le: Copy {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    /// From exactly `SIZE` bytes.
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut b = [0u8; std::mem::size_of::<$t>()];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
        }
    )*};
}
le!(u32, i64);

/// Writes `values` back to back, a block of them per write.
fn put_column<T: Le>(w: &mut impl Write, values: &[T]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192 * T::SIZE);
    for block in values.chunks(8192) {
        buf.clear();
        for &v in block {
            v.put(&mut buf);
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// Writes `s` (its behaviour pairs are not kept) and `meta` through a
/// temporary file and a rename, without fsync: the state is a cache whose
/// CRC catches a torn write.
pub(crate) fn write(index_dir: &Path, meta: &StateMeta, s: &Scan) -> Result<()> {
    let json = serde_json::to_vec(meta).map_err(|e| Error::Internal(e.to_string()))?;
    let file = path(index_dir);
    let tmp = file.with_extension("state.tmp");
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(index_dir)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        encode(&mut out, &json, s)?;
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, &file)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&file, e)
    })
}

fn encode(out: &mut impl Write, json: &[u8], s: &Scan) -> std::io::Result<()> {
    {
        let mut w = Crc32Writer::new(out);
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT.to_le_bytes())?;
        w.write_all(&(json.len() as u32).to_le_bytes())?;
        w.write_all(json)?;
        let n = s.events.len();
        w.write_all(&(n as u64).to_le_bytes())?;
        put_column(&mut w, &s.first_seen)?;
        put_column(&mut w, &s.last_seen)?;
        put_column(&mut w, &s.events)?;
        put_column(&mut w, &s.orders)?;
        put_column(&mut w, &s.spend)?;
        put_column(&mut w, &s.last_order)?;
        let (at, channel): (Vec<i64>, Vec<u32>) = s.registered.iter().copied().unzip();
        put_column(&mut w, &at)?;
        put_column(&mut w, &channel)?;
        for counts in [&s.channel_counts, &s.category_counts] {
            w.write_all(&(counts.columns().len() as u32).to_le_bytes())?;
            for c in counts.columns() {
                put_column(&mut w, c)?;
            }
            let spilled = counts.spilled();
            w.write_all(&u32::from(!spilled.is_empty()).to_le_bytes())?;
            for c in spilled {
                w.write_all(&(c.len() as u32).to_le_bytes())?;
                for &(id, k) in c {
                    w.write_all(&id.to_le_bytes())?;
                    w.write_all(&k.to_le_bytes())?;
                }
            }
        }
        for a in &s.attributes {
            w.write_all(&(a.len() as u32).to_le_bytes())?;
            for &(key, at, value) in a {
                w.write_all(&key.to_le_bytes())?;
                w.write_all(&at.to_le_bytes())?;
                w.write_all(&value.to_le_bytes())?;
            }
        }
        for table in [
            &s.channels,
            &s.categories,
            &s.attr_keys,
            &s.attr_values,
            &s.event_types,
        ] {
            w.write_all(&(table.names.len() as u32).to_le_bytes())?;
            for name in &table.names {
                put_str(&mut w, name)?;
            }
        }
        w.write_all(&(s.history.len() as u64).to_le_bytes())?;
        for c in &s.history {
            w.write_all(&c.ordinal.to_le_bytes())?;
            w.write_all(&c.key.to_le_bytes())?;
            w.write_all(&c.value.to_le_bytes())?;
            w.write_all(&c.at.to_le_bytes())?;
            put_str(&mut w, &c.event_id)?;
        }
        w.write_all(&s.read.to_le_bytes())?;
        w.write_all(&s.unattributed.to_le_bytes())?;
        let crc = w.crc.finalize();
        w.inner.write_all(&crc.to_le_bytes())
    }
}

/// A cursor over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt(format!("truncated at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    /// `n` values of a column written by [`put_column`].
    fn column<T: Le>(&mut self, n: usize) -> Result<Vec<T>> {
        let bytes = self.take(
            n.checked_mul(T::SIZE)
                .ok_or_else(|| corrupt(format!("a column of {n} values at byte {}", self.at)))?,
        )?;
        Ok(bytes.chunks_exact(T::SIZE).map(T::get).collect())
    }

    fn len(&mut self, of: u64) -> Result<usize> {
        if of > MAX_LEN || of as usize > self.bytes.len() {
            return Err(corrupt(format!("a length of {of} at byte {}", self.at)));
        }
        Ok(of as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()?;
        let n = self.len(u64::from(n))?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| corrupt(format!("a string that is not UTF-8 at byte {}", self.at)))
    }
}

fn corrupt(why: String) -> Error {
    Error::Internal(format!("refresh state: {why}"))
}

/// Reads the state; `Ok(None)` when there is none.
pub(crate) fn read(index_dir: &Path) -> Result<Option<(StateMeta, Scan)>> {
    let file = path(index_dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(file, e)),
    };
    if bytes.len() < 16 || &bytes[..4] != MAGIC {
        return Err(corrupt("not a QRST file".into()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap_or([0; 4])) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut r = Cursor { bytes: body, at: 4 };
    let format = r.u32()?;
    if format != FORMAT {
        return Err(corrupt(format!(
            "format {format}; this build reads {FORMAT}"
        )));
    }
    let n = r.u32()?;
    let n = r.len(u64::from(n))?;
    let meta: StateMeta =
        serde_json::from_slice(r.take(n)?).map_err(|e| corrupt(format!("meta: {e}")))?;
    let n = r.u64()?;
    let n = r.len(n)?;
    let mut s = Scan::new(n);
    s.first_seen = r.column(n)?;
    s.last_seen = r.column(n)?;
    s.events = r.column(n)?;
    s.orders = r.column(n)?;
    s.spend = r.column(n)?;
    s.last_order = r.column(n)?;
    let at: Vec<i64> = r.column(n)?;
    let channel: Vec<u32> = r.column(n)?;
    s.registered = at.into_iter().zip(channel).collect();
    for which in 0..2 {
        let d = r.u32()?;
        let d = r.len(u64::from(d))?;
        let mut columns = Vec::with_capacity(d.min(64));
        for _ in 0..d {
            columns.push(r.column(n)?);
        }
        let mut spill = Vec::new();
        if r.u32()? != 0 {
            spill.reserve(n);
            for _ in 0..n {
                let k = r.u32()?;
                let k = r.len(u64::from(k))?;
                let mut c = Vec::with_capacity(k);
                for _ in 0..k {
                    c.push((r.u32()?, r.u32()?));
                }
                spill.push(c);
            }
        }
        let counts = Counts::from_parts(n, columns, spill)
            .ok_or_else(|| corrupt("count columns of the wrong shape".into()))?;
        if which == 0 {
            s.channel_counts = counts;
        } else {
            s.category_counts = counts;
        }
    }
    for p in 0..n {
        let k = r.u32()?;
        let k = r.len(u64::from(k))?;
        let mut a = Vec::with_capacity(k);
        for _ in 0..k {
            a.push((r.u32()?, r.i64()?, r.u32()?));
        }
        s.attributes[p] = a;
    }
    let mut tables = Vec::with_capacity(5);
    for _ in 0..5 {
        let k = r.u32()?;
        let k = r.len(u64::from(k))?;
        let mut t = Interner::default();
        for _ in 0..k {
            t.intern(&r.string()?);
        }
        if t.names.len() != k {
            return Err(corrupt("a string table holds a name twice".into()));
        }
        tables.push(t);
    }
    let mut tables = tables.into_iter();
    let mut next = || tables.next().unwrap_or_default();
    s.channels = next();
    s.categories = next();
    s.attr_keys = next();
    s.attr_values = next();
    s.event_types = next();
    let h = r.u64()?;
    let h = r.len(h)?;
    s.history.reserve(h);
    for _ in 0..h {
        s.history.push(AttributeChange {
            ordinal: r.u32()?,
            key: r.u32()?,
            value: r.u32()?,
            at: r.i64()?,
            event_id: r.string()?,
        });
    }
    s.read = r.u64()?;
    s.unattributed = r.u64()?;
    if r.at != body.len() {
        return Err(corrupt(format!("{} bytes left over", body.len() - r.at)));
    }
    // Ids must name an entry of their table.
    let bad = |id: u32, t: &Interner| id != u32::MAX && id as usize >= t.names.len();
    let ids_ok = s.registered.iter().all(|r| !bad(r.1, &s.channels))
        && s.channel_counts.ids() <= s.channels.names.len()
        && s.category_counts.ids() <= s.categories.names.len()
        && s.attributes
            .iter()
            .flatten()
            .all(|a| !bad(a.0, &s.attr_keys) && !bad(a.2, &s.attr_values))
        && s.history
            .iter()
            .all(|c| !bad(c.key, &s.attr_keys) && !bad(c.value, &s.attr_values));
    if !ids_ok {
        return Err(corrupt("an id outside its string table".into()));
    }
    Ok(Some((meta, s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(c: &Counts, n: usize) -> Vec<Vec<(u32, u32)>> {
        (0..n).map(|p| c.of(p).collect()).collect()
    }

    #[test]
    fn state_round_trips_columns_and_spilled_ids() {
        let mut s = Scan::new(5);
        s.channels.intern("pos");
        s.channels.intern("app");
        for i in 0..40 {
            s.categories.intern(&format!("c{i}"));
        }
        s.channel_counts.add(1, 1, 3);
        s.channel_counts.add(4, 0, 2);
        s.category_counts.add(2, 3, 1);
        s.category_counts.add(2, 35, 4);
        s.category_counts.add(0, 39, 1);
        s.first_seen[3] = 17;
        s.last_seen[3] = 18;
        s.events[3] = 2;
        s.orders[4] = 1;
        s.spend[4] = -5;
        s.last_order[4] = 20;
        s.registered[1] = (9, 1);
        s.attr_keys.intern("member_level");
        s.attr_values.intern("gold");
        s.attributes[2] = vec![(0, 5, 0)];
        s.history.push(AttributeChange {
            ordinal: 2,
            key: 0,
            value: 0,
            at: 5,
            event_id: "e1".into(),
        });
        s.read = 10;
        s.unattributed = 1;
        let dir = tempfile::tempdir().unwrap();
        let meta = StateMeta {
            index_version: 3,
            events_version: 7,
            dimensions: vec!["category".into()],
            ..StateMeta::default()
        };
        write(dir.path(), &meta, &s).unwrap();
        let (m, r) = read(dir.path()).unwrap().unwrap();
        assert_eq!(m, meta);
        assert_eq!(counts(&r.channel_counts, 5), counts(&s.channel_counts, 5));
        assert_eq!(counts(&r.category_counts, 5)[2], vec![(3, 1), (35, 4)]);
        assert_eq!(counts(&r.category_counts, 5), counts(&s.category_counts, 5));
        assert_eq!(
            (&r.first_seen, &r.last_seen, &r.events),
            (&s.first_seen, &s.last_seen, &s.events)
        );
        assert_eq!(
            (&r.orders, &r.spend, &r.last_order, &r.registered),
            (&s.orders, &s.spend, &s.last_order, &s.registered)
        );
        assert_eq!(r.attributes, s.attributes);
        assert_eq!(r.categories.names, s.categories.names);
        assert_eq!(r.history.len(), 1);
        assert_eq!(
            (r.history[0].ordinal, r.history[0].event_id.as_str()),
            (2, "e1")
        );
        assert_eq!((r.read, r.unattributed), (10, 1));

        // A flipped bit is caught.
        let file = path(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }
}
