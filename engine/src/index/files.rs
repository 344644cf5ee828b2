//! Versioned index files: `<root>/<name>/v<version>.<ext>`, one file per
//! version of one index (a tag's bitmap, a trait's bit-sliced index).
//!
//! A version is written to a temporary file, fsynced, renamed into place and
//! the directory fsynced, so a reader sees a whole version or none. A bitmap
//! file (`.roaring`) is nothing but the portable roaring format: CRoaring,
//! pyroaring (`BitMap.deserialize(open(f, "rb").read())`), Java and Go open it
//! as is. A bit-sliced index (`.bsi`) is the `QBSI` format of [`Bsi`].

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

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

    /// Writes version `version` of bitmap `name`.
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

    /// Writes version `version` of bit-sliced index `name`.
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
