//! Reading a Delta table's data files straight from Parquet: several files
//! at a time, each on a blocking thread, with the low-cardinality string
//! columns read as Arrow dictionaries. A scan that interns such a column then
//! looks each batch's few distinct values up once instead of decoding and
//! comparing a string per row, which is most of what reading `channel`,
//! `event_type`, `category` or an identifier's `kind` costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema};
use deltalake_core::DeltaTable;
use deltalake_core::Path as StorePath;
use deltalake_core::logstore::object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::reader::ChunkReader;

use crate::{Error, Result};

/// Rows per batch read.
const BATCH_ROWS: usize = 64 * 1024;

/// Batches waiting for the consumer, per reading thread.
const QUEUED_PER_THREAD: usize = 2;

/// What to read of each file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Columns {
    /// Top-level columns, by name.
    pub names: Vec<String>,
    /// String columns read as `Dictionary(Int32, Utf8)`, by path: a top-level
    /// name, or `parent.child` for a field of a struct (inside a list too,
    /// as in `identifiers.kind`).
    pub dictionary: Vec<String>,
}

/// The data files of `table` at its loaded version.
pub(crate) fn paths(table: &DeltaTable) -> Result<Vec<StorePath>> {
    Ok(table
        .snapshot()?
        .log_data()
        .into_iter()
        .map(|f| f.object_store_path())
        .collect())
}

/// The object store paths of `add` actions' `path`s (URL-encoded, relative
/// to the table root).
pub(crate) fn paths_of_adds(paths: &[String]) -> Result<Vec<StorePath>> {
    paths
        .iter()
        .map(|p| {
            StorePath::from_url_path(p)
                .map_err(|e| Error::Internal(format!("data file `{p}`: {e}")))
        })
        .collect()
}

/// Calls `f` with every batch of the data files `paths` of `table`, reading
/// `columns` (not partition columns, which data files do not hold) on a
/// thread per core, and `map` applied to it on the thread that read it: work
/// that needs no mutable state (hashing, checks, lookups in a shared map)
/// runs on every core instead of on the consumer's. Batches arrive in no
/// fixed order; the first error, a reader's, `map`'s or `f`'s, stops the
/// reading and is returned.
pub(crate) async fn read_map<T: Send + 'static>(
    table: &DeltaTable,
    paths: Vec<StorePath>,
    columns: &Columns,
    map: impl Fn(RecordBatch) -> Result<T> + Send + Sync + 'static,
    mut f: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let map = Arc::new(map);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = cores.clamp(1, paths.len().max(1));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<T>>(threads * QUEUED_PER_THREAD);
    let next = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(paths);
    let columns = Arc::new(columns.clone());
    let store = table.object_store();
    let runtime = tokio::runtime::Handle::current();
    let mut workers = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, next, paths, columns, store, runtime, map) = (
            tx.clone(),
            next.clone(),
            paths.clone(),
            columns.clone(),
            store.clone(),
            runtime.clone(),
            map.clone(),
        );
        workers.push(tokio::task::spawn_blocking(move || {
            while let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                let fetched = runtime.block_on(async { store.get(path).await?.bytes().await });
                let sent = fetched
                    .map_err(|e| Error::Internal(format!("data file `{path}`: {e}")))
                    .and_then(|bytes| {
                        read_file(bytes, path, &columns, |batch| {
                            // The consumer is gone: it stopped on an error.
                            Ok(tx.blocking_send(Ok(map(batch)?)).is_ok())
                        })
                    });
                match sent {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    // On an error the receiver is dropped on return, so the readers stop at
    // their next batch.
    while let Some(batch) = rx.recv().await {
        f(batch?)?;
    }
    for w in workers {
        w.await
            .map_err(|e| Error::Internal(format!("data file reader: {e}")))?;
    }
    Ok(())
}

/// Sends every batch of one file to `send` until it returns `false`;
/// `Ok(false)` then.
fn read_file<T: ChunkReader + 'static>(
    bytes: T,
    path: &StorePath,
    columns: &Columns,
    mut send: impl FnMut(RecordBatch) -> Result<bool>,
) -> Result<bool> {
    let err =
        |e: parquet::errors::ParquetError| Error::Internal(format!("data file `{path}`: {e}"));
    let plain = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::new()).map_err(err)?;
    let hinted = hint(plain.schema(), &columns.dictionary);
    let metadata = if hinted == **plain.schema() {
        plain
    } else {
        let options = ArrowReaderOptions::new().with_schema(Arc::new(hinted));
        ArrowReaderMetadata::try_new(plain.metadata().clone(), options).map_err(err)?
    };
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, metadata);
    let roots: Vec<usize> = columns
        .names
        .iter()
        .map(|name| {
            builder
                .schema()
                .index_of(name)
                .map_err(|_| Error::Internal(format!("data file `{path}` has no column `{name}`")))
        })
        .collect::<Result<_>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(err)?;
    for batch in reader {
        if !send(batch?)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `schema` with the string fields at the paths `dictionary` as
/// `Dictionary(Int32, Utf8)`.
fn hint(schema: &Schema, dictionary: &[String]) -> Schema {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| hint_field(f, f.name(), dictionary))
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn hint_field(field: &FieldRef, path: &str, dictionary: &[String]) -> FieldRef {
    let data_type = match field.data_type() {
        DataType::Utf8 if dictionary.iter().any(|d| d == path) => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        }
        // A list's element has the list's path.
        DataType::List(inner) => DataType::List(hint_field(inner, path, dictionary)),
        DataType::Struct(children) => DataType::Struct(Fields::from(
            children
                .iter()
                .map(|c| hint_field(c, &format!("{path}.{}", c.name()), dictionary))
                .collect::<Vec<_>>(),
        )),
        _ => return field.clone(),
    };
    if &data_type == field.data_type() {
        return field.clone();
    }
    Arc::new(Field::clone(field).with_data_type(data_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_reach_top_level_and_list_of_struct_fields_only() {
        let ident = Field::new(
            "element",
            DataType::Struct(Fields::from(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, false),
            ])),
            false,
        );
        let schema = Schema::new(vec![
            Field::new("channel", DataType::Utf8, false),
            Field::new("event_id", DataType::Utf8, false),
            Field::new("identifiers", DataType::List(Arc::new(ident)), false),
        ]);
        let hinted = hint(
            &schema,
            &["channel".to_string(), "identifiers.kind".to_string()],
        );
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(hinted.field(0).data_type(), &dict);
        assert_eq!(hinted.field(1).data_type(), &DataType::Utf8);
        let DataType::List(element) = hinted.field(2).data_type() else {
            panic!("{hinted:?}");
        };
        let DataType::Struct(children) = element.data_type() else {
            panic!("{element:?}");
        };
        assert_eq!(children[0].data_type(), &dict);
        assert_eq!(children[1].data_type(), &DataType::Utf8);
        assert!(!children[0].is_nullable());
        // Nothing to hint: the same schema.
        assert_eq!(hint(&schema, &[]), schema);
    }

    /// A file written with plain strings reads back with the hinted columns
    /// as dictionaries, nested ones too, and the same values.
    #[test]
    fn a_file_reads_back_with_dictionaries_where_hinted() {
        use arrow::array::{Array, AsArray, ListBuilder, StringBuilder, StructBuilder};
        use arrow::datatypes::Int32Type;

        let kind_fields = Fields::from(vec![
            Field::new("kind", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]);
        let mut channels = StringBuilder::new();
        let mut ids = ListBuilder::new(StructBuilder::from_fields(kind_fields.clone(), 4));
        for i in 0..1000 {
            channels.append_value(["app", "pos", "web"][i % 3]);
            let s = ids.values();
            for (kind, value) in [("phone", format!("+86{i}")), ("email", format!("u{i}@x"))] {
                s.field_builder::<StringBuilder>(0)
                    .unwrap()
                    .append_value(kind);
                s.field_builder::<StringBuilder>(1)
                    .unwrap()
                    .append_value(value);
                s.append(true);
            }
            ids.append(true);
        }
        let ids = ids.finish();
        let ids_field = Field::new("identifiers", ids.data_type().clone(), false);
        let schema = Arc::new(Schema::new(vec![
            Field::new("channel", DataType::Utf8, false),
            ids_field,
            Field::new("other", DataType::Utf8, false),
        ]));
        let other = arrow::array::StringArray::from_iter_values((0..1000).map(|i| format!("o{i}")));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(channels.finish()), Arc::new(ids), Arc::new(other)],
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file.try_clone().unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let columns = Columns {
            names: vec!["channel".into(), "identifiers".into()],
            dictionary: vec!["channel".into(), "identifiers.kind".into()],
        };
        let mut got = Vec::new();
        let path = StorePath::from("f.parquet");
        let done = read_file(file, &path, &columns, |b| {
            got.push(b);
            Ok(true)
        })
        .unwrap();
        assert!(done);
        let read = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
        assert_eq!(read.num_columns(), 2);
        let channel = read.column(0).as_dictionary::<Int32Type>();
        let channel_values = channel.values().as_string::<i32>();
        assert_eq!(
            channel_values.value(channel.keys().value(4) as usize),
            "pos"
        );
        let list = read.column(1).as_list::<i32>();
        let element = list.values().as_struct();
        let kinds = element.column(0).as_dictionary::<Int32Type>();
        let kind_values = kinds.values().as_string::<i32>();
        assert_eq!(kinds.len(), 2000);
        assert_eq!(kind_values.value(kinds.keys().value(3) as usize), "email");
        assert_eq!(element.column(1).as_string::<i32>().value(3), "u1@x");
    }
}
