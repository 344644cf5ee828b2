//! The files of a generator run in the output directory: event files
//! `events-NNNNN.<ext>` rotated every `rows_per_file` rows, `truth.parquet`, `tags.toml` and
//! `manifest.json`. Owns file naming, rotation and writer settings; row encoding is in
//! `encode`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::Serialize;

use crate::config::{Format, GenConfig};
use crate::encode;
use crate::error::{Error, Result};

/// Largest Parquet row group, in rows.
const MAX_ROW_GROUP: usize = 1 << 20;
const BUF_BYTES: usize = 1 << 20;

/// One unit's events, encoded for the run's format.
pub(crate) enum Payload {
    /// Parquet: a record batch.
    Batch(RecordBatch),
    /// NDJSON / CSV: the lines, and the end offset of each.
    Text { bytes: Vec<u8>, ends: Vec<usize> },
}

impl Payload {
    fn rows(&self) -> usize {
        match self {
            Payload::Batch(b) => b.num_rows(),
            Payload::Text { ends, .. } => ends.len(),
        }
    }
}

fn parquet_props(max_rows: usize, high_cardinality: &[&str]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(max_rows.clamp(1, MAX_ROW_GROUP)))
        .set_created_by(format!("quiver-data {}", env!("CARGO_PKG_VERSION")));
    for col in high_cardinality {
        // Mostly-unique columns: skip the dictionary attempt, it would fall back anyway.
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), false);
    }
    b.build()
}

fn parquet_writer(
    path: &Path,
    schema: SchemaRef,
    props: WriterProperties,
) -> Result<ArrowWriter<BufWriter<File>>> {
    let file = File::create(path).map_err(Error::io(path))?;
    ArrowWriter::try_new(
        BufWriter::with_capacity(BUF_BYTES, file),
        schema,
        Some(props),
    )
    .map_err(Error::parquet(path))
}

enum Writer {
    Parquet(Box<ArrowWriter<BufWriter<File>>>),
    Text(BufWriter<File>),
}

struct OpenFile {
    path: PathBuf,
    writer: Writer,
    rows: usize,
}

/// Writes event payloads into rotated event files.
pub(crate) struct EventSink {
    dir: PathBuf,
    format: Format,
    rows_per_file: usize,
    props: WriterProperties,
    current: Option<OpenFile>,
    files: Vec<PathBuf>,
    rows: u64,
}

impl EventSink {
    pub(crate) fn new(cfg: &GenConfig) -> Self {
        EventSink {
            dir: cfg.out.clone(),
            format: cfg.format,
            rows_per_file: cfg.rows_per_file,
            props: parquet_props(
                cfg.rows_per_file,
                &[
                    "event_id",
                    "event_time",
                    "phone",
                    "email",
                    "unionid",
                    "openid",
                    "device",
                    "member",
                    "amount",
                ],
            ),
            current: None,
            files: Vec::new(),
            rows: 0,
        }
    }

    fn open(&mut self) -> Result<OpenFile> {
        let name = format!("events-{:05}.{}", self.files.len(), self.format.extension());
        let path = self.dir.join(name);
        let writer = match self.format {
            Format::Parquet => Writer::Parquet(Box::new(parquet_writer(
                &path,
                encode::file_schema(),
                self.props.clone(),
            )?)),
            Format::Ndjson | Format::Csv => {
                let file = File::create(&path).map_err(Error::io(&path))?;
                let mut w = BufWriter::with_capacity(BUF_BYTES, file);
                if self.format == Format::Csv {
                    w.write_all(encode::csv_header().as_bytes())
                        .map_err(Error::io(&path))?;
                }
                Writer::Text(w)
            }
        };
        self.files.push(path.clone());
        Ok(OpenFile {
            path,
            writer,
            rows: 0,
        })
    }

    /// Appends one unit's events, starting new files as they fill.
    pub(crate) fn write(&mut self, payload: &Payload) -> Result<()> {
        let total = payload.rows();
        let mut done = 0;
        while done < total {
            let mut file = match self.current.take() {
                Some(f) => f,
                None => self.open()?,
            };
            let take = (self.rows_per_file - file.rows).min(total - done);
            match (&mut file.writer, payload) {
                (Writer::Parquet(w), Payload::Batch(b)) => w
                    .write(&b.slice(done, take))
                    .map_err(Error::parquet(&file.path))?,
                (Writer::Text(w), Payload::Text { bytes, ends }) => {
                    let from = if done == 0 { 0 } else { ends[done - 1] };
                    let to = ends[done + take - 1];
                    w.write_all(&bytes[from..to])
                        .map_err(Error::io(&file.path))?;
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "payload does not match format {}",
                        self.format
                    )));
                }
            }
            file.rows += take;
            done += take;
            if file.rows == self.rows_per_file {
                close(file)?;
            } else {
                self.current = Some(file);
            }
        }
        self.rows += total as u64;
        Ok(())
    }

    /// Closes the last file; returns the files written and the rows in them.
    pub(crate) fn finish(mut self) -> Result<(Vec<PathBuf>, u64)> {
        if let Some(f) = self.current.take() {
            close(f)?;
        }
        Ok((self.files, self.rows))
    }
}

fn close(file: OpenFile) -> Result<()> {
    let path = file.path;
    match file.writer {
        Writer::Parquet(w) => {
            w.close().map_err(Error::parquet(&path))?;
        }
        Writer::Text(w) => {
            w.into_inner().map_err(|e| Error::Io {
                path: path.clone(),
                source: e.into_error(),
            })?;
        }
    }
    Ok(())
}

/// Writes `truth.parquet`.
pub(crate) struct TruthSink {
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows: u64,
}

impl TruthSink {
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("truth.parquet");
        let writer = parquet_writer(
            &path,
            encode::truth_schema(),
            parquet_props(MAX_ROW_GROUP, &["value", "true_person"]),
        )?;
        Ok(TruthSink {
            path,
            writer,
            rows: 0,
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(Error::parquet(&self.path))
    }

    /// Closes the file; returns the truth rows written.
    pub(crate) fn finish(self) -> Result<u64> {
        self.writer.close().map_err(Error::parquet(&self.path))?;
        Ok(self.rows)
    }
}

/// Removes event files of an earlier run (`events-NNNNN.parquet|ndjson|csv`) from `dir`, so
/// a smaller run into the same directory leaves no stale files behind. Touches nothing else.
pub(crate) fn remove_old_event_files(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_event_file_name(name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(Error::io(path))?;
        }
    }
    Ok(())
}

fn is_event_file_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("events-") else {
        return false;
    };
    let Some((number, ext)) = rest.split_once('.') else {
        return false;
    };
    number.len() == 5
        && number.bytes().all(|b| b.is_ascii_digit())
        && matches!(ext, "parquet" | "ndjson" | "csv")
}

/// Writes `tags.toml`, the seed tags.
pub(crate) fn write_tags(dir: &Path) -> Result<()> {
    let path = dir.join("tags.toml");
    std::fs::write(&path, crate::catalog::TAGS_TOML).map_err(Error::io(path))
}

/// `manifest.json`: what was generated, and from which parameters.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    persons: u64,
    days: u32,
    seed: u64,
    end_date: String,
    format: String,
    events: u64,
    files: Vec<&'a str>,
    generator_version: &'static str,
}

/// Writes `manifest.json`; `files` are listed by file name.
pub(crate) fn write_manifest(cfg: &GenConfig, events: u64, files: &[PathBuf]) -> Result<()> {
    let manifest = Manifest {
        persons: cfg.persons,
        days: cfg.days,
        seed: cfg.seed,
        end_date: cfg.end_date.to_string(),
        format: cfg.format.to_string(),
        events,
        files: files
            .iter()
            .filter_map(|f| f.file_name().and_then(|n| n.to_str()))
            .collect(),
        generator_version: env!("CARGO_PKG_VERSION"),
    };
    let mut json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("serialising manifest: {e}")))?;
    json.push(b'\n');
    let path = cfg.out.join("manifest.json");
    std::fs::write(&path, json).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_event_files_are_old_event_files() {
        assert!(is_event_file_name("events-00000.parquet"));
        assert!(is_event_file_name("events-00012.csv"));
        assert!(!is_event_file_name("events-0001.csv"));
        assert!(!is_event_file_name("events-00001.json"));
        assert!(!is_event_file_name("my-events-00001.csv"));
        assert!(!is_event_file_name("truth.parquet"));
    }
}
