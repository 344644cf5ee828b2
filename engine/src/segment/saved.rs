//! Saved segments and snapshots of a workspace: the catalog
//! (`segments/catalog.json`, written atomically) and the snapshot bitmaps
//! (`segments/snapshots/<id>.roaring`, portable roaring format). Owns names,
//! references between saved segments (`segment('name')`) and snapshot ids;
//! evaluation lives in `segment::eval`, the requests in `segment::audience`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::ast::Expr;
use super::eval::near;
use crate::{Error, Result};

/// Nesting of `segment('...')` references allowed (a cycle is refused at save).
const MAX_DEPTH: usize = 32;

/// A saved segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSegment {
    /// Its name, used as `segment('name')`.
    pub name: String,
    /// The expression, as canonical text.
    pub expression: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// When first saved, µs since the epoch.
    pub created_at: i64,
    /// When last saved, µs since the epoch.
    pub updated_at: i64,
}

/// The members of a segment at one moment, kept as a bitmap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its id, unique in the workspace (1, 2, ...).
    pub id: u64,
    /// The saved segment it is of.
    pub segment: String,
    /// The expression evaluated (the saved segment's at that time).
    pub expression: String,
    /// When taken, µs since the epoch.
    pub at: i64,
    /// "Now" of its windows, µs since the epoch.
    pub now: i64,
    /// The tag index version it was evaluated on.
    pub index_version: u64,
    /// Members.
    pub count: u64,
}

/// What `segments/catalog.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Catalog {
    #[serde(default)]
    pub segments: BTreeMap<String, SavedSegment>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    #[serde(default)]
    pub next_snapshot: u64,
}

impl Catalog {
    fn path(dir: &Path) -> PathBuf {
        dir.join("catalog.json")
    }

    pub fn read(dir: &Path) -> Result<Catalog> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Internal(format!("`{}` is not valid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        crate::index::write_file_atomic(&Self::path(dir), &json)
    }

    /// The saved segment `name`, or a not-found error listing near names.
    pub fn get(&self, name: &str) -> Result<&SavedSegment> {
        self.segments.get(name).ok_or_else(|| {
            let near = near(name, self.segments.keys().map(String::as_str));
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (did you mean {}?)", near.join(", "))
            };
            Error::invalid(
                "expression",
                format!("unknown saved segment `{name}`{hint}"),
            )
        })
    }

    /// `e` with every `segment('name')` replaced by the saved expression,
    /// recursively.
    pub fn inline(&self, e: &Expr) -> Result<Expr> {
        self.inline_at(e, 0, &mut Vec::new())
    }

    fn inline_at(&self, e: &Expr, depth: usize, path: &mut Vec<String>) -> Result<Expr> {
        Ok(match e {
            Expr::Segment { name } => {
                if path.iter().any(|p| p == name) {
                    path.push(name.clone());
                    return Err(Error::invalid(
                        "expression",
                        format!(
                            "saved segments refer to each other in a cycle: {}",
                            path.join(" → ")
                        ),
                    ));
                }
                if depth >= MAX_DEPTH {
                    return Err(Error::invalid(
                        "expression",
                        format!("saved segments nest deeper than {MAX_DEPTH}"),
                    ));
                }
                let saved = self.get(name)?;
                let inner = super::parse(&saved.expression).map_err(|err| {
                    Error::Internal(format!("saved segment `{name}` does not parse: {err}"))
                })?;
                path.push(name.clone());
                let out = self.inline_at(&inner, depth + 1, path)?;
                path.pop();
                out
            }
            Expr::And { args } => Expr::And {
                args: args
                    .iter()
                    .map(|a| self.inline_at(a, depth, path))
                    .collect::<Result<_>>()?,
            },
            Expr::Or { args } => Expr::Or {
                args: args
                    .iter()
                    .map(|a| self.inline_at(a, depth, path))
                    .collect::<Result<_>>()?,
            },
            Expr::Not { arg } => Expr::Not {
                arg: Box::new(self.inline_at(arg, depth, path)?),
            },
            other => other.clone(),
        })
    }

    /// Saved segments whose expression refers to `name`.
    pub fn users_of(&self, name: &str) -> Vec<String> {
        self.segments
            .values()
            .filter(|s| {
                super::parse(&s.expression)
                    .map(|e| refers_to(&e, name))
                    .unwrap_or(false)
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// The snapshot with `id`.
    pub fn snapshot(&self, id: u64) -> Result<&SnapshotInfo> {
        self.snapshots
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::NotFound {
                what: "snapshot",
                name: id.to_string(),
            })
    }
}

/// Whether `e` mentions `segment('name')`.
fn refers_to(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Segment { name: n } => n == name,
        Expr::And { args } | Expr::Or { args } => args.iter().any(|a| refers_to(a, name)),
        Expr::Not { arg } => refers_to(arg, name),
        _ => false,
    }
}

/// A segment name: 1 to 128 characters, no control characters, not blank.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            format!(
                "`{name}`: a segment name has 1 to 128 characters, none of them control characters"
            ),
        ));
    }
    Ok(())
}

/// The file of snapshot `id`.
pub(crate) fn snapshot_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("snapshots").join(format!("{id:010}.roaring"))
}

/// Reads snapshot `id`'s members.
pub(crate) fn read_snapshot(dir: &Path, id: u64) -> Result<RoaringBitmap> {
    let path = snapshot_path(dir, id);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    RoaringBitmap::deserialize_from(&bytes[..])
        .map_err(|e| Error::Internal(format!("snapshot `{}`: {e}", path.display())))
}

/// Writes snapshot `id`'s members.
pub(crate) fn write_snapshot(dir: &Path, id: u64, members: &RoaringBitmap) -> Result<()> {
    let mut bytes = Vec::with_capacity(members.serialized_size());
    members
        .serialize_into(&mut bytes)
        .map_err(|e| Error::Internal(format!("serialise snapshot {id}: {e}")))?;
    crate::index::write_file_atomic(&snapshot_path(dir, id), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(name: &str, expression: &str) -> SavedSegment {
        SavedSegment {
            name: name.into(),
            expression: expression.into(),
            description: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn references_inline_and_cycles_are_refused() {
        let mut c = Catalog::default();
        c.segments
            .insert("vip".into(), saved("vip", "member_level = 'vip'"));
        c.segments.insert(
            "vip_lovers".into(),
            saved("vip_lovers", "segment('vip') AND skincare_lover"),
        );
        let e = super::super::parse("segment('vip_lovers') OR NOT segment('vip')").unwrap();
        let inlined = c.inline(&e).unwrap();
        assert_eq!(
            inlined.to_string(),
            "member_level = 'vip' AND skincare_lover OR NOT member_level = 'vip'"
        );
        assert_eq!(c.users_of("vip"), vec!["vip_lovers".to_string()]);
        let err = c
            .inline(&super::super::parse("segment('vipp')").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("did you mean vip"), "{err}");
        c.segments.insert("a".into(), saved("a", "segment('b')"));
        c.segments.insert("b".into(), saved("b", "segment('a')"));
        let err = c
            .inline(&super::super::parse("segment('a')").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("a → b → a"), "{err}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("lapsed VIPs (Q4)").is_ok());
        assert!(check_name(" ").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
    }
}
