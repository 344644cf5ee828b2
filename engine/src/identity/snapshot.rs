//! What an incremental run starts from: the identity graph of every event up
//! to a Delta version of `events` (a snapshot in Arrow IPC files), and the
//! events committed after it (read from the Delta log's `add` actions).
//!
//! Snapshot layout, written per run into `identity_graph-<run>/` and made
//! current by the state file (older ones are removed after):
//! - `keys-<first>-<end>.arrow`: `kind, value, key_lo, key_hi, hash` of nodes
//!   `first..end` in node order: the keys are [`key128`](super::graph::key128)
//!   and [`key_hash`](super::graph::key_hash), so a load hashes nothing.
//!   Nodes never change or move once added, so an incremental run hard-links
//!   the last snapshot's segments and writes only its new nodes as one more
//!   segment (all of them again once there are [`MAX_SEGMENTS`]);
//! - `seen.arrow`: `first_seen, last_seen, ordinal` per node: the times
//!   change with every run, and `ordinal` is the person the run gave the node
//!   (null for none), so the next incremental run need not read the
//!   `identifiers` table back;
//! - `links.arrow`: `a, b, events` (node indexes, `a < b`), in key order.
//!
//! Snapshots from before keep every node column in one `nodes.arrow`; one is
//! read by hashing the values again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Int64Array, PrimitiveArray, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type, UInt64Type,
};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use deltalake_core::DeltaTable;
use deltalake_core::Path as StorePath;
use deltalake_core::kernel::Action;

use crate::store::datafiles;

use super::components::NONE;
use super::graph::{Graph, edge_ends, edge_key, key_hash, key128};
use super::rules::CompiledRules;
use crate::{Error, Result};

const CHUNK: usize = 1 << 20;

/// Key segments a snapshot may carry over before they are written as one.
const MAX_SEGMENTS: usize = 8;

fn keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("key_lo", DataType::UInt64, false),
        Field::new("key_hi", DataType::UInt64, false),
        Field::new("hash", DataType::UInt64, false),
    ]))
}

fn seen_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("first_seen", DataType::Int64, false),
        Field::new("last_seen", DataType::Int64, false),
        Field::new("ordinal", DataType::UInt32, true),
    ]))
}

/// The key segments of the snapshot in `dir`: `(first, end, path)`, in node
/// order. Err when they do not cover `0..` without gaps.
fn segments(dir: &Path) -> Result<Vec<(usize, usize, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = e.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(range) = name
            .strip_prefix("keys-")
            .and_then(|r| r.strip_suffix(".arrow"))
        else {
            continue;
        };
        let bounds = range
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
        let Some((first, end)) = bounds.filter(|(a, b)| a < b) else {
            return Err(damaged(dir, &format!("`{name}` is not a node range")));
        };
        out.push((first, end, path));
    }
    out.sort();
    let mut next = 0;
    for (first, end, _) in &out {
        if *first != next {
            return Err(damaged(
                dir,
                &format!("no key segment starts at node {next}"),
            ));
        }
        next = *end;
    }
    Ok(out)
}

/// A snapshot read back.
pub(crate) struct Snapshot {
    pub graph: Graph,
    /// Per node, the ordinal of the person that run gave it ([`NONE`] for
    /// none); `None` for a snapshot from before ordinals were kept.
    pub ordinals: Option<Vec<u32>>,
}

fn links_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::UInt32, false),
        Field::new("b", DataType::UInt32, false),
        Field::new("events", DataType::UInt32, false),
    ]))
}

/// The snapshot directory of run `run`.
pub(crate) fn dir_of(ws_dir: &Path, run: u64) -> PathBuf {
    ws_dir.join(format!("identity_graph-{run}"))
}

fn write_file(
    path: &Path,
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = FileWriter::try_new(std::io::BufWriter::new(file), &schema)?;
    for b in batches {
        w.write(&b?)?;
    }
    w.finish()?;
    let file = w
        .into_inner()?
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes `g` as the snapshot of run `run` (fsynced), with `ordinals[n]` the
/// ordinal of node `n`'s person ([`NONE`] for none). `base`: the run whose
/// snapshot `g` extends and its node count (an incremental run), whose key
/// segments are carried over by hard link.
#[cfg(test)]
pub(crate) fn write(
    ws_dir: &Path,
    run: u64,
    g: &Graph,
    ordinals: &[u32],
    base: Option<(u64, usize)>,
) -> Result<()> {
    write_graph(ws_dir, run, g, base)?;
    write_seen(ws_dir, run, g, ordinals)
}

/// The part of [`write`] that needs no persons: the keys and the links,
/// written while the run works out its persons. The snapshot is whole once
/// [`write_seen`] has run after it.
pub(crate) fn write_graph(
    ws_dir: &Path,
    run: u64,
    g: &Graph,
    base: Option<(u64, usize)>,
) -> Result<()> {
    let dir = dir_of(ws_dir, run);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let n = g.len();
    // Keys: the base's segments linked, then the nodes after them.
    let mut from = 0;
    if let Some((base_run, base_len)) = base
        && let Ok(old) = segments(&dir_of(ws_dir, base_run))
        && old.last().map(|s| s.1) == Some(base_len)
        && base_len <= n
        && old.len() < MAX_SEGMENTS
    {
        let linked = old.iter().try_for_each(|(_, _, path)| {
            let to = dir.join(path.file_name().unwrap_or_default());
            std::fs::hard_link(path, &to)
        });
        match linked {
            Ok(()) => from = base_len,
            Err(e) => {
                tracing::debug!(error = %e, "identity snapshot: key segments not linked, written again");
                for e in std::fs::read_dir(&dir)
                    .map_err(|e| Error::io(&dir, e))?
                    .flatten()
                {
                    std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                }
            }
        }
    }
    if from < n {
        let keys = (from..n).step_by(CHUNK).map(|start| {
            let end = (start + CHUNK).min(n);
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| g.kind(i as u32)),
                )),
                Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| g.value(i as u32)),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    (start..end).map(|i| g.key(i as u32) as u64),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    (start..end).map(|i| (g.key(i as u32) >> 64) as u64),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    (start..end).map(|i| g.key_hash(i as u32)),
                )),
            ];
            Ok(RecordBatch::try_new(keys_schema(), cols)?)
        });
        write_file(
            &dir.join(format!("keys-{from}-{n}.arrow")),
            keys_schema(),
            keys,
        )?;
    }
    let batches = g.links().chunks(CHUNK).map(|chunk| {
        let (mut a, mut b, mut ev) = (
            Vec::with_capacity(chunk.len()),
            Vec::with_capacity(chunk.len()),
            Vec::with_capacity(chunk.len()),
        );
        for &(k, e) in chunk {
            let (x, y) = edge_ends(k);
            a.push(x);
            b.push(y);
            ev.push(e);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(a)),
            Arc::new(UInt32Array::from(b)),
            Arc::new(UInt32Array::from(ev)),
        ];
        Ok(RecordBatch::try_new(links_schema(), cols)?)
    });
    write_file(&dir.join("links.arrow"), links_schema(), batches)
}

/// The rest of [`write`]: each node's first and last seen times and its
/// person's ordinal, into the directory [`write_graph`] made.
pub(crate) fn write_seen(ws_dir: &Path, run: u64, g: &Graph, ordinals: &[u32]) -> Result<()> {
    if ordinals.len() != g.len() {
        return Err(Error::Internal(format!(
            "identity snapshot: {} ordinals for {} nodes",
            ordinals.len(),
            g.len()
        )));
    }
    let dir = dir_of(ws_dir, run);
    let n = g.len();
    let seen = (0..n).step_by(CHUNK).map(|start| {
        let end = (start + CHUNK).min(n);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                (start..end).map(|i| g.first_seen(i as u32)),
            )),
            Arc::new(Int64Array::from_iter_values(
                (start..end).map(|i| g.last_seen(i as u32)),
            )),
            Arc::new(UInt32Array::from_iter(
                ordinals[start..end]
                    .iter()
                    .map(|&o| (o != NONE).then_some(o)),
            )),
        ];
        Ok(RecordBatch::try_new(seen_schema(), cols)?)
    });
    write_file(&dir.join("seen.arrow"), seen_schema(), seen)
}

fn reader(path: &Path) -> Result<FileReader<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(FileReader::try_new(std::io::BufReader::new(file), None)?)
}

/// A file of a snapshot, only the columns `names` of `schema` decoded.
fn projected(
    path: &Path,
    schema: &Schema,
    names: &[&str],
) -> Result<FileReader<std::io::BufReader<std::fs::File>>> {
    let columns = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(FileReader::try_new(
        std::io::BufReader::new(file),
        Some(columns),
    )?)
}

/// Who held each value after a run: per node of its snapshot, the key and
/// the person's ordinal.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    /// [`key128`] of each node.
    pub keys: Vec<u128>,
    /// The ordinal of each node's person ([`Owners::NO_PERSON`]: none).
    pub ordinals: Vec<u32>,
}

impl Owners {
    /// A node no person holds.
    pub const NO_PERSON: u32 = NONE;
}

/// The owners of run `run`'s values, from its snapshot's keys and ordinals
/// (the values, times and links are not decoded): what the tag refresh
/// attributes events with, instead of reading and hashing the `identifiers`
/// table. None for a missing or old-format snapshot.
pub(crate) fn read_owners(ws_dir: &Path, run: u64) -> Result<Option<Owners>> {
    let dir = dir_of(ws_dir, run);
    if !dir.join("seen.arrow").is_file() || dir.join("nodes.arrow").is_file() {
        return Ok(None);
    }
    let mut o = Owners::default();
    for batch in projected(&dir.join("seen.arrow"), &seen_schema(), &["ordinal"])? {
        let batch = batch?;
        let ordinal = numbers::<UInt32Type>(&batch, "ordinal", &dir)?;
        o.ordinals.extend(ordinal.iter().map(|o| o.unwrap_or(NONE)));
    }
    let rows = o.ordinals.len();
    let segments = segments(&dir)?;
    if segments.last().map_or(0, |s| s.1) != rows {
        return Err(damaged(
            &dir,
            &format!(
                "key segments end at node {}, `seen.arrow` has {rows}",
                segments.last().map_or(0, |s| s.1)
            ),
        ));
    }
    o.keys.reserve(rows);
    for (from, end, path) in segments {
        for batch in projected(&path, &keys_schema(), &["key_lo", "key_hi"])? {
            let batch = batch?;
            let lo = numbers::<UInt64Type>(&batch, "key_lo", &dir)?;
            let hi = numbers::<UInt64Type>(&batch, "key_hi", &dir)?;
            if o.keys.len() + batch.num_rows() > end {
                return Err(damaged(
                    &dir,
                    &format!("segment {from}-{end} holds more nodes"),
                ));
            }
            for i in 0..batch.num_rows() {
                o.keys
                    .push(u128::from(lo.value(i)) | (u128::from(hi.value(i)) << 64));
            }
        }
        if o.keys.len() != end {
            return Err(damaged(
                &dir,
                &format!("segment {from}-{end} ends at node {}", o.keys.len()),
            ));
        }
    }
    Ok(Some(o))
}

/// Reads the snapshot of run `run`, if it is there.
pub(crate) fn read(ws_dir: &Path, run: u64) -> Result<Option<Snapshot>> {
    let dir = dir_of(ws_dir, run);
    // A snapshot is whole once its seen times are written, after its links
    // (`nodes.arrow`, the old format, holds them itself).
    let old_format = dir.join("nodes.arrow").is_file();
    if !dir.join("links.arrow").is_file() || !(old_format || dir.join("seen.arrow").is_file()) {
        return Ok(None);
    }
    let (mut g, ordinals) = if old_format {
        read_nodes(&dir)?
    } else {
        read_segments(&dir)?
    };
    let n = g.len() as u32;
    let mut links = Vec::new();
    for batch in reader(&dir.join("links.arrow"))? {
        let batch = batch?;
        let a = numbers::<UInt32Type>(&batch, "a", &dir)?;
        let b = numbers::<UInt32Type>(&batch, "b", &dir)?;
        let ev = numbers::<UInt32Type>(&batch, "events", &dir)?;
        links.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            let (a, b) = (a.value(i), b.value(i));
            if a >= n || b >= n {
                return Err(damaged(&dir, &format!("link to node {} of {n}", a.max(b))));
            }
            links.push((edge_key(a, b), ev.value(i)));
        }
    }
    g.add_sorted_links(links);
    g.seal();
    Ok(Some(Snapshot { graph: g, ordinals }))
}

/// The nodes of a snapshot in key segments and `seen.arrow`.
fn read_segments(dir: &Path) -> Result<(Graph, Option<Vec<u32>>)> {
    let (mut first, mut last, mut ordinals) = (Vec::new(), Vec::new(), Vec::new());
    for batch in reader(&dir.join("seen.arrow"))? {
        let batch = batch?;
        first.extend_from_slice(numbers::<Int64Type>(&batch, "first_seen", dir)?.values());
        last.extend_from_slice(numbers::<Int64Type>(&batch, "last_seen", dir)?.values());
        let ordinal = numbers::<UInt32Type>(&batch, "ordinal", dir)?;
        ordinals.extend(ordinal.iter().map(|o| o.unwrap_or(NONE)));
    }
    let rows = first.len();
    let segments = segments(dir)?;
    if segments.last().map_or(0, |s| s.1) != rows {
        return Err(damaged(
            dir,
            &format!(
                "key segments end at node {}, `seen.arrow` has {rows}",
                segments.last().map_or(0, |s| s.1)
            ),
        ));
    }
    let mut g = Graph::default();
    g.reserve(rows, 0);
    for (from, end, path) in segments {
        for batch in reader(&path)? {
            let batch = batch?;
            let kinds = strings(&batch, "kind", dir)?;
            let values = strings(&batch, "value", dir)?;
            let lo = numbers::<UInt64Type>(&batch, "key_lo", dir)?;
            let hi = numbers::<UInt64Type>(&batch, "key_hi", dir)?;
            let hash = numbers::<UInt64Type>(&batch, "hash", dir)?;
            if g.len() + batch.num_rows() > end {
                return Err(damaged(
                    dir,
                    &format!("segment {from}-{end} holds more nodes"),
                ));
            }
            g.reserve(0, values.value_data().len());
            for i in 0..batch.num_rows() {
                let n = g.len();
                let key = u128::from(lo.value(i)) | (u128::from(hi.value(i)) << 64);
                g.push_unindexed(
                    kinds.value(i),
                    values.value(i),
                    (key, hash.value(i)),
                    first[n],
                    last[n],
                );
            }
        }
        if g.len() != end {
            return Err(damaged(
                dir,
                &format!("segment {from}-{end} ends at node {}", g.len()),
            ));
        }
    }
    // Room for a run's worth of new values before the index grows.
    g.index_all(rows / 8)
        .map_err(|(n, m)| damaged(dir, &format!("node {n} repeats node {m}")))?;
    Ok((g, Some(ordinals)))
}

/// The nodes of a snapshot in one `nodes.arrow`, as written before key
/// segments: the values are hashed again and the owners read from the
/// `identifiers` table (the keys and ordinals some of them hold are not
/// relied on).
fn read_nodes(dir: &Path) -> Result<(Graph, Option<Vec<u32>>)> {
    let mut g = Graph::default();
    for batch in reader(&dir.join("nodes.arrow"))? {
        let batch = batch?;
        let kinds = strings(&batch, "kind", dir)?;
        let values = strings(&batch, "value", dir)?;
        let first = numbers::<Int64Type>(&batch, "first_seen", dir)?;
        let last = numbers::<Int64Type>(&batch, "last_seen", dir)?;
        for i in 0..batch.num_rows() {
            let (kind, value) = (kinds.value(i), values.value(i));
            g.push_keyed(
                kind,
                value,
                (key128(kind, value), key_hash(kind, value)),
                first.value(i),
                last.value(i),
            );
        }
    }
    Ok((g, None))
}

/// The error for a snapshot in `dir` that does not hold what it should.
fn damaged(dir: &Path, what: &str) -> Error {
    Error::Internal(format!("identity snapshot `{}`: {what}", dir.display()))
}

/// Column `name` of `batch` (a file of the snapshot in `dir`) as strings.
fn strings<'a>(batch: &'a RecordBatch, name: &str, dir: &Path) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| damaged(dir, &format!("no string column `{name}`")))
}

/// Column `name` of `batch` (a file of the snapshot in `dir`) as numbers of type `T`.
fn numbers<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
    dir: &Path,
) -> Result<&'a PrimitiveArray<T>> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<T>())
        .ok_or_else(|| damaged(dir, &format!("no column `{name}` of type {}", T::DATA_TYPE)))
}

/// Removes snapshots other than run `keep`'s.
pub(crate) fn prune(ws_dir: &Path, keep: u64) -> Result<()> {
    let keep = dir_of(ws_dir, keep);
    let entries = std::fs::read_dir(ws_dir).map_err(|e| Error::io(ws_dir, e))?;
    for e in entries.flatten() {
        let path = e.path();
        let is_snapshot = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("identity_graph-"));
        if is_snapshot && path != keep {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The data files the commits after `from` up to `to` added (`dataChange`
/// adds only, so compaction is not read twice); `None` when a commit of that
/// range is no longer in the log.
pub(crate) async fn added_files(
    table: &DeltaTable,
    from: u64,
    to: u64,
) -> Result<Option<Vec<String>>> {
    let log = table.log_store();
    let mut files = Vec::new();
    for v in from + 1..=to {
        let Some(bytes) = log.read_commit_entry(v).await? else {
            return Ok(None);
        };
        for action in deltalake_core::logstore::get_actions(v, &bytes)? {
            if let Action::Add(add) = action
                && add.data_change
            {
                files.push(add.path);
            }
        }
    }
    Ok(Some(files))
}

/// The last version from `from` up to `to` that holds the rows of `from`:
/// the commits after `from` up to it only moved rows between files
/// (compaction: every add and remove has `dataChange` false). A scan of it
/// reads the same events as one of `from`, in fewer files.
pub(crate) async fn same_rows_until(table: &DeltaTable, from: u64, to: u64) -> Result<u64> {
    let log = table.log_store();
    for v in from + 1..=to {
        let Some(bytes) = log.read_commit_entry(v).await? else {
            return Ok(v - 1);
        };
        let changes = deltalake_core::logstore::get_actions(v, &bytes)?
            .into_iter()
            .any(|action| match action {
                Action::Add(a) => a.data_change,
                Action::Remove(r) => r.data_change,
                _ => false,
            });
        if changes {
            return Ok(v - 1);
        }
    }
    Ok(to.max(from))
}

/// Adds the events of the data files `paths` of `table` (as `add` actions
/// name them) to `g`.
pub(crate) async fn read_files(
    table: &DeltaTable,
    paths: &[String],
    g: &mut Graph,
    rules: &CompiledRules,
) -> Result<()> {
    read_paths(table, datafiles::paths_of_adds(paths)?, rules, |batch| {
        g.add_prepared(&batch)
    })
    .await
}

/// Calls `f` with every batch of the data files `paths` of `table`,
/// [`prepare`](super::graph::prepare)d for the graph under `rules`: the
/// columns OneID reads, on every core, an identifier's `kind` as a
/// dictionary.
pub(crate) async fn read_paths(
    table: &DeltaTable,
    paths: Vec<StorePath>,
    rules: &CompiledRules,
    f: impl FnMut(super::graph::Prepared) -> Result<()>,
) -> Result<()> {
    let columns = datafiles::Columns {
        names: vec!["event_time".into(), "identifiers".into()],
        dictionary: vec!["identifiers.kind".into()],
    };
    let rules = rules.clone();
    datafiles::read_map(
        table,
        paths,
        &columns,
        move |batch| super::graph::prepare(batch, &rules),
        f,
    )
    .await
}

/// The size of run `run`'s graph, from its key segments' names and file
/// sizes, without reading them: `(nodes, bytes)`, bytes an upper bound on
/// its values' bytes. None for a missing, damaged or old-format snapshot.
pub(crate) fn size_hint(ws_dir: &Path, run: u64) -> Option<(usize, usize)> {
    let segments = segments(&dir_of(ws_dir, run)).ok()?;
    let nodes = segments.last()?.1;
    let bytes = segments
        .iter()
        .filter_map(|(_, _, path)| std::fs::metadata(path).ok())
        .map(|m| m.len() as usize)
        .sum();
    Some((nodes, bytes))
}

/// A column read back as a sanity check in tests.
#[cfg(test)]
pub(crate) fn node_count(ws_dir: &Path, run: u64) -> usize {
    reader(&dir_of(ws_dir, run).join("seen.arrow"))
        .map(|r| r.flatten().map(|b| b.num_rows()).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        let mut g = Graph::default();
        let a = g.intern("phone", "+8613800138000");
        let b = g.intern("email", "a@b.cn");
        let c = g.intern("openid", "wx1:o1");
        g.add_event(&mut vec![a, b], 10);
        g.add_event(&mut vec![a, b, c], 20);
        g.seal();
        g
    }

    fn same_graph(back: &Graph, g: &Graph) {
        assert_eq!(back.len(), g.len());
        for n in 0..g.len() as u32 {
            assert_eq!((back.kind(n), back.value(n)), (g.kind(n), g.value(n)));
            assert_eq!((back.key(n), back.key_hash(n)), (g.key(n), g.key_hash(n)));
            assert_eq!(back.first_seen(n), g.first_seen(n));
            assert_eq!(back.last_seen(n), g.last_seen(n));
            assert_eq!(back.find(g.kind(n), g.value(n)), Some(n));
        }
        assert_eq!(back.links(), g.links());
    }

    #[test]
    fn a_graph_round_trips_through_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let g = graph();
        let ordinals = [7, NONE, 7];
        write(dir.path(), 3, &g, &ordinals, None).unwrap();
        assert_eq!(node_count(dir.path(), 3), 3);
        let (nodes, bytes) = size_hint(dir.path(), 3).unwrap();
        assert_eq!(nodes, 3);
        let values: usize = (0..3).map(|n| g.value(n).len()).sum();
        assert!(
            bytes >= values,
            "{bytes} bytes hinted for {values} bytes of values"
        );
        assert_eq!(size_hint(dir.path(), 4), None);
        let back = read(dir.path(), 3).unwrap().unwrap();
        same_graph(&back.graph, &g);
        assert_eq!(back.ordinals.as_deref(), Some(&ordinals[..]));
        assert!(read(dir.path(), 4).unwrap().is_none());
        assert!(write(dir.path(), 4, &g, &[1], None).is_err());
        write(dir.path(), 4, &g, &ordinals, None).unwrap();
        prune(dir.path(), 4).unwrap();
        assert!(read(dir.path(), 3).unwrap().is_none());
        assert!(read(dir.path(), 4).unwrap().is_some());
    }

    fn segment_names(ws_dir: &Path, run: u64) -> Vec<String> {
        segments(&dir_of(ws_dir, run))
            .unwrap()
            .iter()
            .map(|(_, _, p)| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    }

    /// An incremental run links the last snapshot's key segments and writes
    /// only its new nodes; after `MAX_SEGMENTS` the keys go in one segment.
    #[test]
    fn an_extended_graph_writes_only_its_new_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = graph();
        write(dir.path(), 1, &g, &[0, 0, 0], None).unwrap();
        for run in 2..=(MAX_SEGMENTS as u64 + 1) {
            let snap = read(dir.path(), run - 1).unwrap().unwrap();
            same_graph(&snap.graph, &g);
            let (mut back, base) = (snap.graph, g.len());
            for h in [&mut g, &mut back] {
                let a = h.intern("phone", "+8613800138000");
                let b = h.intern("device", &format!("d{run}"));
                h.add_event(&mut vec![a, b], 100 + run as i64);
                h.seal();
            }
            same_graph(&back, &g);
            let ordinals = vec![0; back.len()];
            write(dir.path(), run, &back, &ordinals, Some((run - 1, base))).unwrap();
            let names = segment_names(dir.path(), run);
            if run as usize <= MAX_SEGMENTS {
                assert_eq!(names.len(), run as usize, "{names:?}");
                assert_eq!(
                    names.last().unwrap(),
                    &format!("keys-{base}-{}.arrow", back.len())
                );
            } else {
                assert_eq!(names, [format!("keys-0-{}.arrow", back.len())]);
            }
            let back = read(dir.path(), run).unwrap().unwrap();
            same_graph(&back.graph, &g);
            assert_eq!(back.ordinals, Some(ordinals));
            prune(dir.path(), run).unwrap();
        }
    }

    /// A snapshot from before the keys and ordinals were kept is read by
    /// hashing its values, and says it has no ordinals.
    #[test]
    fn a_snapshot_without_keys_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let g = graph();
        write(dir.path(), 1, &g, &[NONE; 3], None).unwrap();
        let snap = dir_of(dir.path(), 1);
        for (_, _, path) in segments(&snap).unwrap() {
            std::fs::remove_file(path).unwrap();
        }
        std::fs::remove_file(snap.join("seen.arrow")).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("kind", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("first_seen", DataType::Int64, false),
            Field::new("last_seen", DataType::Int64, false),
        ]));
        let nodes = 0..g.len() as u32;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                nodes.clone().map(|n| g.kind(n)),
            )),
            Arc::new(StringArray::from_iter_values(
                nodes.clone().map(|n| g.value(n)),
            )),
            Arc::new(Int64Array::from_iter_values(
                nodes.clone().map(|n| g.first_seen(n)),
            )),
            Arc::new(Int64Array::from_iter_values(nodes.map(|n| g.last_seen(n)))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        write_file(
            &snap.join("nodes.arrow"),
            schema,
            std::iter::once(Ok(batch)),
        )
        .unwrap();
        let back = read(dir.path(), 1).unwrap().unwrap();
        same_graph(&back.graph, &g);
        assert!(back.ordinals.is_none());
    }

    /// A snapshot missing a key segment is an error that says where.
    #[test]
    fn a_missing_key_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = graph();
        write(dir.path(), 1, &g, &[NONE; 3], None).unwrap();
        let a = g.intern("device", "d9");
        g.add_event(&mut vec![a], 50);
        g.seal();
        write(dir.path(), 2, &g, &[NONE; 4], Some((1, 3))).unwrap();
        std::fs::remove_file(dir_of(dir.path(), 2).join("keys-0-3.arrow")).unwrap();
        let err = read(dir.path(), 2).err().unwrap().to_string();
        assert!(err.contains("no key segment starts at node 0"), "{err}");
    }

    /// A damaged snapshot is an error naming the column, not a panic.
    #[test]
    fn a_damaged_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let g = graph();
        write(dir.path(), 1, &g, &[NONE; 3], None).unwrap();
        let path = dir_of(dir.path(), 1).join("links.arrow");
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["x"])) as ArrayRef],
        )
        .unwrap();
        write_file(&path, schema, std::iter::once(Ok(batch))).unwrap();
        let err = read(dir.path(), 1).err().unwrap().to_string();
        assert!(err.contains("`a`"), "{err}");
    }
}
