//! One version of every index of a workspace ([`IndexSet`]), and its files.
//!
//! A version is a set of files in an [`IndexDir`] plus a manifest,
//! `manifest/v<version>.json`, written last: a version exists once its
//! manifest does, so a crash mid-write leaves the previous version whole.
//! The manifest names each index's file and its person count (the coverage
//! `tags show` reports without loading a bitmap).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::files::{IndexKind, WriteJob, write_atomic, write_durably};
use super::{BehaviourKey, Bsi, DailyCounts, IndexDir};
use crate::{Error, Result};

/// A numeric trait's index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NumericIndex {
    /// Decimal places: the stored integers are the values × 10^scale.
    pub scale: u8,
    /// The values.
    pub bsi: Bsi,
}

/// Every index of one version, in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexSet {
    /// The version (1, 2, ...).
    pub version: u64,
    /// When it was built, µs since the epoch.
    pub built_at: i64,
    /// The day (UTC day number) the build took as "now" for windows.
    pub now_day: i32,
    /// Live persons.
    pub live: RoaringBitmap,
    /// Boolean and manual tags.
    pub tags: BTreeMap<String, RoaringBitmap>,
    /// Enumerated tags, enumerated traits and attributes: name → value → persons.
    pub enums: BTreeMap<String, BTreeMap<String, RoaringBitmap>>,
    /// Numeric traits and numeric tags.
    pub numbers: BTreeMap<String, NumericIndex>,
    /// Behaviour counts per key.
    pub behaviour: BTreeMap<BehaviourKey, DailyCounts>,
    /// Properties whose every value has behaviour counts (`category`, `channel`).
    pub dimensions: Vec<String>,
    /// Every event type the build knew (a type without a key: nobody did it).
    pub event_types: std::collections::BTreeSet<String>,
}

/// A file and how many persons it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The index name in the [`IndexDir`].
    pub file: String,
    /// Persons in it.
    pub count: u64,
}

/// The manifest of one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// The version.
    pub version: u64,
    /// See [`IndexSet::built_at`].
    pub built_at: i64,
    /// See [`IndexSet::now_day`].
    pub now_day: i32,
    /// Live persons.
    pub live: Option<Entry>,
    /// Boolean and manual tags.
    pub tags: BTreeMap<String, Entry>,
    /// name → value → file.
    pub enums: BTreeMap<String, BTreeMap<String, Entry>>,
    /// name → (scale, file).
    pub numbers: BTreeMap<String, (u8, Entry)>,
    /// Behaviour keys and their files.
    pub behaviour: Vec<(BehaviourKey, Entry)>,
    /// See [`IndexSet::dimensions`].
    pub dimensions: Vec<String>,
    /// See [`IndexSet::event_types`].
    pub event_types: std::collections::BTreeSet<String>,
    /// Whatever the builder wants kept with the version (the tag layer's report).
    #[serde(default)]
    pub extra: serde_json::Value,
}

const FORMAT: u32 = 1;

/// Queues bitmap `name` of version `v` for writing; its manifest entry.
fn bitmap_job<'a>(
    jobs: &mut Vec<(PathBuf, WriteJob<'a>)>,
    dir: &IndexDir,
    v: u64,
    name: String,
    b: &'a RoaringBitmap,
) -> Result<Entry> {
    let path = dir.path(&name, IndexKind::Bitmap, v)?;
    jobs.push((path, Box::new(move |w| b.serialize_into(w))));
    Ok(Entry {
        file: name,
        count: b.len(),
    })
}

/// `name` as a file name: itself when it is short and plain, else a hash.
fn file_safe(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        name.to_string()
    } else {
        format!("x-{:032x}", xxhash_rust::xxh3::xxh3_128(name.as_bytes()))
    }
}

impl IndexSet {
    fn manifest_path(root: &Path, version: u64) -> PathBuf {
        root.join("manifest").join(format!("v{version:010}.json"))
    }

    /// The versions whose manifest exists, ascending.
    pub fn versions(root: &Path) -> Result<Vec<u64>> {
        let dir = root.join("manifest");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                n.strip_prefix('v')?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Reads the manifest of `version`.
    pub fn manifest(root: &Path, version: u64) -> Result<Manifest> {
        let path = Self::manifest_path(root, version);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("`{}`: {e}", path.display())))?;
        if m.format != FORMAT {
            return Err(Error::Internal(format!(
                "`{}`: manifest format {}; this build reads {FORMAT}",
                path.display(),
                m.format
            )));
        }
        Ok(m)
    }

    /// Writes every index of this version under `root`, the manifest last.
    pub fn write(&self, root: &Path, extra: serde_json::Value) -> Result<Manifest> {
        let dir = IndexDir::new(root);
        let v = self.version;
        let mut jobs: Vec<(PathBuf, WriteJob<'_>)> = Vec::new();
        let mut bitmap = |name: String, b| bitmap_job(&mut jobs, &dir, v, name, b);
        let mut m = Manifest {
            format: FORMAT,
            version: v,
            built_at: self.built_at,
            now_day: self.now_day,
            live: Some(bitmap("live".into(), &self.live)?),
            dimensions: self.dimensions.clone(),
            event_types: self.event_types.clone(),
            extra,
            ..Manifest::default()
        };
        for (name, b) in &self.tags {
            m.tags
                .insert(name.clone(), bitmap(format!("tag.{}", file_safe(name)), b)?);
        }
        for (name, values) in &self.enums {
            let mut out = BTreeMap::new();
            for (value, b) in values {
                let file = format!("enum.{}.{}", file_safe(name), file_safe(value));
                out.insert(value.clone(), bitmap(file, b)?);
            }
            m.enums.insert(name.clone(), out);
        }
        for (name, n) in &self.numbers {
            let file = format!("num.{}", file_safe(name));
            let path = dir.path(&file, IndexKind::Bsi, v)?;
            jobs.push((path, Box::new(move |w| n.bsi.write_to(w))));
            let count = n.bsi.len();
            m.numbers
                .insert(name.clone(), (n.scale, Entry { file, count }));
        }
        for (i, (key, counts)) in self.behaviour.iter().enumerate() {
            let file = format!("beh.{i}");
            let path = dir.path(&file, IndexKind::Behaviour, v)?;
            jobs.push((path, Box::new(move |w| counts.write_to(w))));
            m.behaviour.push((key.clone(), Entry { file, count: 0 }));
        }
        // Every file durable before the manifest that makes them the version.
        write_durably(jobs)?;
        let bytes = serde_json::to_vec_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&Self::manifest_path(root, v), |w| w.write_all(&bytes))?;
        Ok(m)
    }

    /// Loads version `version` from `root`.
    pub fn read(root: &Path, version: u64) -> Result<IndexSet> {
        let m = Self::manifest(root, version)?;
        let dir = IndexDir::new(root);
        let v = m.version;
        let mut set = IndexSet {
            version: v,
            built_at: m.built_at,
            now_day: m.now_day,
            dimensions: m.dimensions.clone(),
            event_types: m.event_types.clone(),
            ..IndexSet::default()
        };
        if let Some(live) = &m.live {
            set.live = dir.read_bitmap(&live.file, v)?;
        }
        for (name, e) in &m.tags {
            set.tags.insert(name.clone(), dir.read_bitmap(&e.file, v)?);
        }
        for (name, values) in &m.enums {
            let mut out = BTreeMap::new();
            for (value, e) in values {
                out.insert(value.clone(), dir.read_bitmap(&e.file, v)?);
            }
            set.enums.insert(name.clone(), out);
        }
        for (name, (scale, e)) in &m.numbers {
            let bsi = dir.read_bsi(&e.file, v)?;
            set.numbers
                .insert(name.clone(), NumericIndex { scale: *scale, bsi });
        }
        for (key, e) in &m.behaviour {
            let path = dir.path(&e.file, IndexKind::Behaviour, v)?;
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let counts = DailyCounts::read_from(BufReader::new(f), &path.display().to_string())?;
            set.behaviour.insert(key.clone(), counts);
        }
        Ok(set)
    }

    /// Deletes every version but the newest `keep` (at least one is kept):
    /// their files, then their manifests. Returns the deleted versions.
    pub fn prune(root: &Path, keep: usize) -> Result<Vec<u64>> {
        let versions = Self::versions(root)?;
        let cut = versions.len().saturating_sub(keep.max(1));
        let dir = IndexDir::new(root);
        for &v in &versions[..cut] {
            let m = Self::manifest(root, v)?;
            let mut files: Vec<(String, IndexKind)> = Vec::new();
            files.extend(m.live.iter().map(|e| (e.file.clone(), IndexKind::Bitmap)));
            files.extend(m.tags.values().map(|e| (e.file.clone(), IndexKind::Bitmap)));
            for values in m.enums.values() {
                files.extend(values.values().map(|e| (e.file.clone(), IndexKind::Bitmap)));
            }
            files.extend(
                m.numbers
                    .values()
                    .map(|(_, e)| (e.file.clone(), IndexKind::Bsi)),
            );
            files.extend(
                m.behaviour
                    .iter()
                    .map(|(_, e)| (e.file.clone(), IndexKind::Behaviour)),
            );
            for (file, kind) in files {
                let path = dir.path(&file, kind, v)?;
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&path, e)),
                }
            }
            let path = Self::manifest_path(root, v);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(versions[..cut].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Ordinal;

    fn sample(version: u64) -> IndexSet {
        let mut s = IndexSet {
            version,
            built_at: 1_700_000_000_000_000,
            now_day: 20_000,
            live: (0..100).collect(),
            ..IndexSet::default()
        };
        s.tags
            .insert("skincare_lover".into(), (0..100).step_by(3).collect());
        s.tags
            .insert("Odd Name/ü".into(), [7, 9].into_iter().collect());
        s.enums.insert(
            "city".into(),
            [
                ("上海".to_string(), (0..10).collect::<RoaringBitmap>()),
                ("beijing".to_string(), (10..30).collect()),
            ]
            .into_iter()
            .collect(),
        );
        s.numbers.insert(
            "total_spend".into(),
            NumericIndex {
                scale: 2,
                bsi: Bsi::from_values((0..50).map(|o| (Ordinal(o), i64::from(o) * 1999))),
            },
        );
        s.behaviour.insert(
            BehaviourKey::new("purchase", vec![]),
            DailyCounts::from_events((0..60).map(|i| (19_990 + i % 9, Ordinal(i as u32)))).unwrap(),
        );
        s
    }

    #[test]
    fn every_index_round_trips_and_old_versions_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for v in 1..=4 {
            let m = sample(v)
                .write(dir.path(), serde_json::json!({"v": v}))
                .unwrap();
            assert_eq!(m.tags["skincare_lover"].count, 34);
            assert_eq!(m.enums["city"]["上海"].count, 10);
        }
        assert_eq!(IndexSet::read(dir.path(), 3).unwrap(), sample(3));
        assert_eq!(IndexSet::manifest(dir.path(), 2).unwrap().extra["v"], 2);
        assert_eq!(IndexSet::prune(dir.path(), 2).unwrap(), vec![1, 2]);
        assert_eq!(IndexSet::versions(dir.path()).unwrap(), vec![3, 4]);
        assert!(IndexSet::read(dir.path(), 1).is_err());
        assert_eq!(IndexSet::read(dir.path(), 4).unwrap(), sample(4));
        // nothing of version 1 or 2 is left behind
        let leftovers = walk(dir.path())
            .into_iter()
            .filter(|p| p.contains("v0000000001") || p.contains("v0000000002"))
            .count();
        assert_eq!(leftovers, 0);
    }

    fn walk(p: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
        out
    }
}
