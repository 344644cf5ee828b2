//! Versioned index files: `<root>/<name>/v<version>.<ext>`, one file per
//! version of one index (a tag's bitmap, a trait's bit-sliced index).
//!
//! The files of a version are written under their own names ([`write_durably`]:
//! on a few threads, every file and directory fsynced before it returns); the
//! version's manifest, written after them, is what makes them visible (see
//! [`IndexSet`](super::IndexSet)). A lone file that replaces an older one is
//! written to a temporary file, fsynced, renamed into place and the directory
//! fsynced ([`write_file_atomic`]), so a reader sees the old file or the new
//! one. A bitmap
//! file (`.roaring`) is nothing but the portable roaring format: CRoaring,
//! pyroaring (`BitMap.deserialize(open(f, "rb").read())`), Java and Go open it
//! as is. A bit-sliced index (`.bsi`) is the `QBSI` format of [`Bsi`].

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use roaring::RoaringBitmap;

use super::Bsi;
use crate::{Error, Result};

/// What a versioned file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// A roaring bitmap of ordinals, portable format.
    Bitmap,
    /// A bit-sliced index.
    Bsi,
    /// Per-day behaviour counts (`QBDC`).
    Behaviour,
}

impl IndexKind {
    fn ext(self) -> &'static str {
        match self {
            IndexKind::Bitmap => "roaring",
            IndexKind::Bsi => "bsi",
            IndexKind::Behaviour => "days",
        }
    }
}

/// The directory of a workspace's index files.
#[derive(Debug, Clone)]
pub struct IndexDir {
    root: PathBuf,
}

impl IndexDir {
    /// Index files under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        IndexDir { root: root.into() }
    }

    /// The path of one version.
    pub fn path(&self, name: &str, kind: IndexKind, version: u64) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self
            .root
            .join(name)
            .join(format!("v{version:010}.{}", kind.ext())))
    }

    /// The versions of `name` on disk, ascending.
    pub fn versions(&self, name: &str, kind: IndexKind) -> Result<Vec<u64>> {
        check_name(name)?;
        let dir = self.root.join(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let suffix = format!(".{}", kind.ext());
        let mut out: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                n.strip_prefix('v')?.strip_suffix(&suffix)?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Writes version `version` of bitmap `name`, replacing it atomically.
    pub fn write_bitmap(&self, name: &str, version: u64, b: &RoaringBitmap) -> Result<PathBuf> {
        let path = self.path(name, IndexKind::Bitmap, version)?;
        write_atomic(&path, |w| b.serialize_into(w))?;
        Ok(path)
    }

    /// Reads version `version` of bitmap `name`.
    pub fn read_bitmap(&self, name: &str, version: u64) -> Result<RoaringBitmap> {
        let path = self.path(name, IndexKind::Bitmap, version)?;
        let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
        RoaringBitmap::deserialize_from(BufReader::new(f)).map_err(|e| {
            Error::Internal(format!(
                "`{}` is not a portable roaring bitmap: {e}",
                path.display()
            ))
        })
    }

    /// Writes version `version` of bit-sliced index `name`, replacing it atomically.
    pub fn write_bsi(&self, name: &str, version: u64, b: &Bsi) -> Result<PathBuf> {
        let path = self.path(name, IndexKind::Bsi, version)?;
        write_atomic(&path, |w| b.write_to(w))?;
        Ok(path)
    }

    /// Reads version `version` of bit-sliced index `name`.
    pub fn read_bsi(&self, name: &str, version: u64) -> Result<Bsi> {
        let path = self.path(name, IndexKind::Bsi, version)?;
        let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
        Bsi::read_from(BufReader::new(f), &path.display().to_string())
    }

    /// Deletes all but the newest `keep` versions of `name`; returns the deleted ones.
    pub fn prune(&self, name: &str, kind: IndexKind, keep: usize) -> Result<Vec<u64>> {
        let versions = self.versions(name, kind)?;
        let cut = versions.len().saturating_sub(keep);
        for v in &versions[..cut] {
            let p = self.path(name, kind, *v)?;
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(versions[..cut].to_vec())
    }
}

/// Index names are file names: lower-case letters, digits, `_`, `-`, `.`
/// (not leading), at most 128 bytes.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "index name `{name}` must be lower-case letters, digits, `_`, `-` or `.` (not first), at most 128 bytes"
            ),
        ))
    }
}

/// Writes `bytes` to `path` atomically (see [`IndexDir`]): readers see the old
/// file or the new one, never a part.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Writes a file's contents.
pub(crate) type WriteJob<'a> =
    Box<dyn Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync + 'a>;

/// Threads [`write_durably`] waits on the disk with: fsyncs issued together
/// share the file system's journal commits, where one after another each
/// waits for its own (≈ 3 ms apiece on this project's VMs).
const SYNC_THREADS: usize = 8;

/// Writes every `(path, contents)` of `jobs` (directories created as needed,
/// an existing file replaced) and returns once every file and every
/// directory holding one is fsynced. The files are written and synced on a
/// few threads at once; the first error is returned, naming its path. Not
/// atomic per file: for new names whose readers find them through a file
/// written afterwards, as an index version's are found through its manifest.
pub(crate) fn write_durably(jobs: Vec<(PathBuf, WriteJob<'_>)>) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
    };
    let run = |items: &[PathBuf], each: &(dyn Fn(usize) -> Result<()> + Sync)| {
        next.store(0, Ordering::Relaxed);
        std::thread::scope(|scope| {
            for _ in 0..SYNC_THREADS.min(items.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            return;
                        }
                        if let Err(e) = each(i) {
                            fail(e);
                            return;
                        }
                    }
                });
            }
        });
    };
    let paths: Vec<PathBuf> = jobs.iter().map(|(p, _)| p.clone()).collect();
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    run(&paths, &|i| {
        let (path, job) = &jobs[i];
        (|| {
            let mut w = BufWriter::with_capacity(1 << 16, File::create(path)?);
            job(&mut w)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })()
        .map_err(|e| Error::io(path, e))
    });
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    run(&dirs, &|i| {
        let d = &dirs[i];
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(d, e))
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes `path` through a temporary file: fsync, rename, fsync the directory.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("`{}` has no directory", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Ordinal;

    #[test]
    fn versions_round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexDir::new(dir.path());
        assert!(idx.versions("vip", IndexKind::Bitmap).unwrap().is_empty());
        let b: RoaringBitmap = (0..100_000u32).step_by(3).chain([4_000_000_000]).collect();
        for v in 1..=4 {
            idx.write_bitmap("vip", v, &b).unwrap();
        }
        assert_eq!(idx.read_bitmap("vip", 3).unwrap(), b);
        assert_eq!(idx.prune("vip", IndexKind::Bitmap, 2).unwrap(), vec![1, 2]);
        assert_eq!(idx.versions("vip", IndexKind::Bitmap).unwrap(), vec![3, 4]);

        let bsi = Bsi::from_values([(Ordinal(1), 250), (Ordinal(9), -3)]);
        idx.write_bsi("total_spend", 7, &bsi).unwrap();
        assert_eq!(idx.read_bsi("total_spend", 7).unwrap(), bsi);
        assert_eq!(
            idx.versions("total_spend", IndexKind::Bsi).unwrap(),
            vec![7]
        );
        assert!(
            idx.versions("total_spend", IndexKind::Bitmap)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bitmap_files_are_plain_portable_roaring() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexDir::new(dir.path());
        let b: RoaringBitmap = [1u32, 2, 3, 70_000].into_iter().collect();
        let path = idx.write_bitmap("t", 1, &b).unwrap();
        let mut expected = Vec::new();
        b.serialize_into(&mut expected).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), expected);
    }

    #[test]
    fn durable_writes_write_every_file_and_name_the_one_that_fails() {
        let dir = tempfile::tempdir().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let jobs = |root: &Path| -> Vec<(PathBuf, WriteJob<'static>)> {
            payloads
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let path = root.join(format!("n{}", i % 7)).join(format!("v{i}.days"));
                    let p = p.clone();
                    let job: WriteJob<'static> = Box::new(move |w| w.write_all(&p));
                    (path, job)
                })
                .collect()
        };
        write_durably(jobs(dir.path())).unwrap();
        // again over the same names: replaced, not appended to
        write_durably(jobs(dir.path())).unwrap();
        for (i, p) in payloads.iter().enumerate() {
            let path = dir
                .path()
                .join(format!("n{}", i % 7))
                .join(format!("v{i}.days"));
            assert_eq!(&std::fs::read(&path).unwrap(), p, "{}", path.display());
        }
        // a directory that cannot be made: a file is in its place
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"x").unwrap();
        let mut bad = jobs(dir.path());
        bad.push((blocked.join("v1.days"), Box::new(|w| w.write_all(b"y"))));
        let e = write_durably(bad).unwrap_err().to_string();
        assert!(e.contains("blocked"), "{e}");
        // a job that fails
        let failing: Vec<(PathBuf, WriteJob<'static>)> = vec![(
            dir.path().join("n0").join("v99.days"),
            Box::new(|_| Err(std::io::Error::other("encoder gave up"))),
        )];
        let e = write_durably(failing).unwrap_err().to_string();
        assert!(
            e.contains("v99.days") && e.contains("encoder gave up"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexDir::new(dir.path());
        for bad in ["", "../x", "Vip", ".hidden", "a/b"] {
            let e = idx.write_bitmap(bad, 1, &RoaringBitmap::new()).unwrap_err();
            assert!(e.to_string().contains("index name"), "{bad}: {e}");
        }
        let p = idx.path("t", IndexKind::Bitmap, 1).unwrap();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"not roaring").unwrap();
        let e = idx.read_bitmap("t", 1).unwrap_err().to_string();
        assert!(e.contains("portable roaring"), "{e}");
    }
}
