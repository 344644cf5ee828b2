//! What an incremental run starts from: the identity graph of every event up
//! to a Delta version of `events` (a snapshot in Arrow IPC files), and the
//! events committed after it (read from the Delta log's `add` actions).
//!
//! Snapshot layout, written per run into `identity_graph-<run>/` and made
//! current by the state file (older ones are removed after):
//! - `nodes.arrow`: `kind, value, first_seen, last_seen` in node order;
//! - `links.arrow`: `a, b, events` (node indexes, `a < b`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringBuilder, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use deltalake_core::DeltaTable;
use deltalake_core::Path as StorePath;
use deltalake_core::kernel::Action;
use deltalake_core::logstore::object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::graph::{Graph, edge_ends};
use super::rules::CompiledRules;
use crate::{Error, Result};

const CHUNK: usize = 1 << 20;

fn nodes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("first_seen", DataType::Int64, false),
        Field::new("last_seen", DataType::Int64, false),
    ]))
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

/// Writes `g` as the snapshot of run `run` (fsynced).
pub(crate) fn write(ws_dir: &Path, run: u64, g: &Graph) -> Result<()> {
    let dir = dir_of(ws_dir, run);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let n = g.len();
    let nodes = (0..n).step_by(CHUNK).map(|start| {
        let end = (start + CHUNK).min(n);
        let mut kind = StringBuilder::new();
        let mut value = StringBuilder::new();
        for i in start..end {
            kind.append_value(g.kind(i as u32));
            value.append_value(g.value(i as u32));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(kind.finish()),
            Arc::new(value.finish()),
            Arc::new(Int64Array::from_iter_values(
                (start..end).map(|n| g.first_seen(n as u32)),
            )),
            Arc::new(Int64Array::from_iter_values(
                (start..end).map(|n| g.last_seen(n as u32)),
            )),
        ];
        Ok(RecordBatch::try_new(nodes_schema(), cols)?)
    });
    write_file(&dir.join("nodes.arrow"), nodes_schema(), nodes)?;
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
    write_file(&dir.join("links.arrow"), links_schema(), batches)?;
    Ok(())
}

fn reader(path: &Path) -> Result<FileReader<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(FileReader::try_new(std::io::BufReader::new(file), None)?)
}

/// Reads the snapshot of run `run`, if it is there.
pub(crate) fn read(ws_dir: &Path, run: u64) -> Result<Option<Graph>> {
    let dir = dir_of(ws_dir, run);
    if !dir.join("links.arrow").is_file() {
        return Ok(None);
    }
    let mut g = Graph::default();
    for batch in reader(&dir.join("nodes.arrow"))? {
        let batch = batch?;
        let kinds = batch.column(0).as_string::<i32>();
        let values = batch.column(1).as_string::<i32>();
        let first = batch.column(2).as_primitive::<Int64Type>();
        let last = batch.column(3).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            g.push_node(
                kinds.value(i),
                values.value(i),
                first.value(i),
                last.value(i),
            );
        }
    }
    let n = g.len() as u32;
    for batch in reader(&dir.join("links.arrow"))? {
        let batch = batch?;
        let a = batch.column(0).as_primitive::<UInt32Type>();
        let b = batch.column(1).as_primitive::<UInt32Type>();
        let ev = batch.column(2).as_primitive::<UInt32Type>();
        for i in 0..batch.num_rows() {
            if a.value(i) >= n || b.value(i) >= n {
                return Err(Error::Internal(format!(
                    "identity snapshot `{}`: link to node {} of {n}",
                    dir.display(),
                    a.value(i).max(b.value(i))
                )));
            }
            g.add_link(a.value(i), b.value(i), ev.value(i));
        }
    }
    g.seal();
    Ok(Some(g))
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

/// Adds the events of the data files `paths` of `table` to `g`.
pub(crate) async fn read_files(
    table: &DeltaTable,
    paths: &[String],
    g: &mut Graph,
    rules: &CompiledRules,
) -> Result<()> {
    read_file_batches(table, paths, &["event_time", "identifiers"], |batch| {
        g.add_batch(&batch, rules)
    })
    .await
}

/// Calls `f` with every batch of the data files `paths` of `table`, reading
/// only `columns` (not the partition column, which data files do not hold).
pub(crate) async fn read_file_batches(
    table: &DeltaTable,
    paths: &[String],
    columns: &[&str],
    mut f: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let store = table.object_store();
    for path in paths {
        let location = StorePath::from_url_path(path)
            .map_err(|e| Error::Internal(format!("events file `{path}`: {e}")))?;
        let bytes = store
            .get(&location)
            .await
            .map_err(|e| Error::Internal(format!("events file `{path}`: {e}")))?
            .bytes()
            .await
            .map_err(|e| Error::Internal(format!("events file `{path}`: {e}")))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| Error::Internal(format!("events file `{path}`: {e}")))?;
        let roots: Vec<usize> = columns
            .iter()
            .map(|name| {
                builder.schema().index_of(name).map_err(|_| {
                    Error::Internal(format!("events file `{path}` has no column `{name}`"))
                })
            })
            .collect::<Result<_>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| Error::Internal(format!("events file `{path}`: {e}")))?;
        for batch in reader {
            f(batch?)?;
        }
    }
    Ok(())
}

/// A column read back as a sanity check in tests.
#[cfg(test)]
pub(crate) fn node_count(ws_dir: &Path, run: u64) -> usize {
    reader(&dir_of(ws_dir, run).join("nodes.arrow"))
        .map(|r| r.flatten().map(|b| b.num_rows()).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_round_trips_through_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Graph::default();
        let a = g.intern("phone", "+8613800138000");
        let b = g.intern("email", "a@b.cn");
        let c = g.intern("openid", "wx1:o1");
        g.add_event(&mut vec![a, b], 10);
        g.add_event(&mut vec![a, b, c], 20);
        g.seal();
        write(dir.path(), 3, &g).unwrap();
        assert_eq!(node_count(dir.path(), 3), 3);
        let back = read(dir.path(), 3).unwrap().unwrap();
        assert_eq!(back.len(), 3);
        for n in 0..3 {
            assert_eq!((back.kind(n), back.value(n)), (g.kind(n), g.value(n)));
            assert_eq!(back.first_seen(n), g.first_seen(n));
            assert_eq!(back.last_seen(n), g.last_seen(n));
        }
        assert_eq!(back.links(), g.links());
        assert!(read(dir.path(), 4).unwrap().is_none());
        write(dir.path(), 4, &g).unwrap();
        prune(dir.path(), 4).unwrap();
        assert!(read(dir.path(), 3).unwrap().is_none());
        assert!(read(dir.path(), 4).unwrap().is_some());
    }
}
