//! Write-ahead log of one workspace: the only thing an ack waits for.
//!
//! Layout: `<workspace>/wal/<seq:020>.wal`, one file per segment. A segment
//! starts with the 8-byte magic `QVRWAL01`, then records:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 (IEEE) of the payload
//! ...     payload: one accepted batch as an Arrow IPC stream
//! ```
//!
//! One writer thread per workspace does group commit: it drains every append
//! queued while the previous fsync ran, writes them, fsyncs once, makes the
//! batches visible in the memtable and only then acknowledges them. Segments
//! are rotated by the flusher and deleted once a Delta commit recording their
//! sequence number (a Delta `txn` action) has landed. On open, a torn or
//! corrupt tail is detected by length and CRC, logged, and cut at the last
//! good record.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use parking_lot::RwLock;
use tokio::sync::{Notify, oneshot};

use super::memtable::MemState;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"QVRWAL01";
const HEADER: usize = 8;
/// Largest record accepted on replay (a guard against a corrupt length).
const MAX_RECORD: usize = 1 << 30;

/// Path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Segments in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// What reading a segment found.
#[derive(Debug)]
pub(crate) struct SegmentRead {
    pub records: Vec<Vec<u8>>,
    /// Where and why the segment was cut, if it was.
    pub cut: Option<(u64, String)>,
}

/// Reads every good record of a segment; with `repair`, truncates a torn or
/// corrupt tail at the last good record (and fsyncs the cut).
pub(crate) fn read_segment(path: &Path, repair: bool) -> Result<SegmentRead> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut cut = None;
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        cut = Some((0, "missing or bad segment magic".to_string()));
    } else {
        let mut pos = MAGIC.len();
        while pos < buf.len() {
            let rest = &buf[pos..];
            if rest.len() < HEADER {
                cut = Some((
                    pos as u64,
                    format!("torn record header ({} bytes)", rest.len()),
                ));
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len > MAX_RECORD || rest.len() < HEADER + len {
                cut = Some((
                    pos as u64,
                    format!(
                        "torn record: {len} bytes announced, {} present",
                        rest.len() - HEADER
                    ),
                ));
                break;
            }
            let payload = &rest[HEADER..HEADER + len];
            if crc32fast::hash(payload) != crc {
                cut = Some((pos as u64, "record checksum mismatch".to_string()));
                break;
            }
            records.push(payload.to_vec());
            pos += HEADER + len;
        }
    }
    if let Some((at, why)) = &cut {
        tracing::warn!(segment = %path.display(), offset = at, reason = %why, records = records.len(), "WAL tail is torn or corrupt; cutting it at the last good record");
        if repair {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            let keep = *at;
            f.set_len(keep).map_err(|e| Error::io(path, e))?;
            if keep == 0 {
                let mut f = f;
                f.write_all(MAGIC).map_err(|e| Error::io(path, e))?;
            }
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(SegmentRead { records, cut })
}

/// Encodes a batch as one WAL payload (an Arrow IPC stream).
pub(crate) fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2 + 1024);
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// Decodes a WAL payload.
pub(crate) fn decode(payload: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(payload, None)?;
    reader.map(|b| b.map_err(Error::from)).collect()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// An open segment being appended to.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    seq: u64,
    file: File,
    bytes: u64,
}

impl SegmentWriter {
    /// Creates segment `seq` (fsyncing the file and its directory).
    pub fn create(dir: &Path, seq: u64) -> Result<Self> {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(MAGIC)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            seq,
            file,
            bytes: MAGIC.len() as u64,
        })
    }

    fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::other("WAL record larger than 4 GiB"))?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.file.write_all(&header)?;
        self.file.write_all(payload)?;
        self.bytes += (HEADER + payload.len()) as u64;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.seq)
    }
}

/// Work for the writer thread.
pub(crate) enum WalCmd {
    /// Make `batch` durable, then visible; answer when both are done.
    Append {
        batch: RecordBatch,
        payload: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Seal the current segment, freeze the memtable rows it holds, start the
    /// next segment; answers with the sealed sequence number.
    Rotate { done: oneshot::Sender<Result<u64>> },
}

/// The writer thread's state.
pub(crate) struct WalWriter {
    pub segment: SegmentWriter,
    pub state: Arc<RwLock<MemState>>,
    pub fsync: bool,
    pub flush_rows: usize,
    pub flush_wanted: Arc<Notify>,
    pub workspace: String,
}

type Pending = Vec<(RecordBatch, oneshot::Sender<Result<()>>)>;

impl WalWriter {
    /// Runs until every sender is gone.
    pub fn run(mut self, rx: Receiver<WalCmd>) {
        let mut poisoned: Option<String> = None;
        while let Ok(first) = rx.recv() {
            let mut cmds = vec![first];
            loop {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
                if cmds.len() >= 8192 {
                    break;
                }
            }
            let mut pending: Pending = Vec::new();
            for cmd in cmds {
                match cmd {
                    WalCmd::Append {
                        batch,
                        payload,
                        done,
                    } => {
                        if let Some(why) = &poisoned {
                            let _ = done.send(Err(Error::Unavailable(why.clone())));
                            continue;
                        }
                        match self.segment.append(&payload) {
                            Ok(()) => pending.push((batch, done)),
                            Err(e) => {
                                let why = self.poison(&e);
                                let _ = done.send(Err(Error::Unavailable(why.clone())));
                                poisoned = Some(why);
                            }
                        }
                    }
                    WalCmd::Rotate { done } => {
                        self.commit(&mut pending, &mut poisoned);
                        let _ = done.send(match &poisoned {
                            Some(why) => Err(Error::Unavailable(why.clone())),
                            None => self.rotate(),
                        });
                    }
                }
            }
            self.commit(&mut pending, &mut poisoned);
        }
    }

    fn poison(&self, e: &std::io::Error) -> String {
        let why = format!(
            "write-ahead log `{}` failed ({e}); restart the server to replay it",
            self.segment.path().display()
        );
        tracing::error!(ws = %self.workspace, "{why}");
        why
    }

    fn commit(&mut self, pending: &mut Pending, poisoned: &mut Option<String>) {
        if pending.is_empty() {
            return;
        }
        let started = Instant::now();
        let synced = if self.fsync {
            self.segment.sync()
        } else {
            Ok(())
        };
        metrics::histogram!("quiver_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        match synced {
            Ok(()) => {
                let rows = {
                    let mut st = self.state.write();
                    for (b, _) in pending.iter() {
                        st.push(b.clone());
                    }
                    st.active_rows
                };
                metrics::gauge!("quiver_memtable_rows", "workspace" => self.workspace.clone())
                    .set(rows as f64);
                for (_, done) in pending.drain(..) {
                    let _ = done.send(Ok(()));
                }
                if rows >= self.flush_rows {
                    self.flush_wanted.notify_one();
                }
            }
            Err(e) => {
                let why = self.poison(&e);
                for (_, done) in pending.drain(..) {
                    let _ = done.send(Err(Error::Unavailable(why.clone())));
                }
                *poisoned = Some(why);
            }
        }
    }

    fn rotate(&mut self) -> Result<u64> {
        let sealed = self.segment.seq;
        let next = SegmentWriter::create(&self.segment.dir, sealed + 1)?;
        self.segment = next;
        self.state.write().freeze(sealed);
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_and_corrupt_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), 1).unwrap();
        for i in 0..3u8 {
            w.append(&[i; 100]).unwrap();
        }
        w.sync().unwrap();
        let path = segment_path(dir.path(), 1);
        let full = std::fs::read(&path).unwrap();
        // torn: the last record loses its final bytes
        std::fs::write(&path, &full[..full.len() - 7]).unwrap();
        let r = read_segment(&path, true).unwrap();
        assert_eq!(r.records.len(), 2);
        assert!(r.cut.is_some());
        let again = read_segment(&path, false).unwrap();
        assert_eq!(again.records.len(), 2);
        assert!(again.cut.is_none(), "the cut was persisted");
        // corrupt: flip a payload byte of the second record
        let mut bytes = std::fs::read(&path).unwrap();
        let second = MAGIC.len() + HEADER + 100 + HEADER + 5;
        bytes[second] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let r = read_segment(&path, true).unwrap();
        assert_eq!(r.records, vec![vec![0u8; 100]]);
        assert_eq!(r.cut.unwrap().1, "record checksum mismatch");
    }

    #[test]
    fn segments_are_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for s in [10, 2, 7] {
            SegmentWriter::create(dir.path(), s).unwrap();
        }
        std::fs::write(dir.path().join("junk.txt"), b"x").unwrap();
        let segs: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(segs, vec![2, 7, 10]);
    }
}
