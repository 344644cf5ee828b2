//! Tags: definitions ([`TagDefinitions`], TOML or JSON, never code), the
//! refresh that builds profiles, traits, behaviour counts and every tag's
//! bitmap as a new index version ([`Workspace::refresh_tags`]), coverage per
//! version, manual lists, and a person's tags.
//!
//! Files in a workspace directory:
//! - `tags/definitions.toml`: the definitions (written atomically);
//! - `tags/manual/<tag>.txt`: a manual tag's identifiers, `kind:value` per line;
//! - `index/`: the index versions ([`IndexSet`], manifest last).
//!
//! A refresh reads every event once and rebuilds everything, so merges move
//! a retired person's bits to its survivor by construction: events are
//! attributed through the current `identifiers` table.

mod build;
mod def;
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::RwLock;

pub(crate) use build::format_scaled;
pub use build::{RefreshReport, TagCoverage};
pub use def::{
    BehaviourConfig, Catalog, DefinitionFormat, STANDARD_EVENT_TYPES, TagDef, TagDefinitions,
    TagKind,
};

use crate::index::IndexSet;
use crate::store::Workspace;
use crate::{Error, Result, TagsConfig};

/// Per-workspace tag state: one refresh at a time, the latest index loaded.
#[derive(Debug)]
pub(crate) struct TagState {
    lock: tokio::sync::Mutex<()>,
    latest: RwLock<Option<Arc<IndexSet>>>,
    cfg: TagsConfig,
}

impl TagState {
    pub(crate) fn refresh_after_resolve(&self) -> bool {
        self.cfg.refresh_after_resolve
    }

    pub(crate) fn new(cfg: TagsConfig) -> Self {
        TagState {
            lock: tokio::sync::Mutex::new(()),
            latest: RwLock::new(None),
            cfg,
        }
    }
}

/// A tag as `tags list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TagInfo {
    /// The definition.
    pub def: TagDef,
    /// Persons in it at the latest version (all values for an enum tag).
    pub count: Option<u64>,
    /// Live persons at the latest version.
    pub persons: Option<u64>,
    /// The latest version.
    pub version: Option<u64>,
}

/// A tag's coverage at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionCoverage {
    /// The version.
    pub version: u64,
    /// When it was built, µs.
    pub built_at: i64,
    /// Live persons then.
    pub persons: u64,
    /// Persons in the tag (every value for an enum tag).
    pub count: u64,
    /// Per value, for an enum tag.
    pub values: Vec<(String, u64)>,
}

/// What a manual upload matched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadReport {
    /// Lines read.
    pub identifiers: u64,
    /// Identifiers held by a live person.
    pub matched: u64,
    /// Distinct persons they hold.
    pub persons: u64,
    /// Identifiers no person holds (or that do not normalise), counted.
    pub unknown: u64,
    /// A few of them, as given.
    pub unknown_examples: Vec<String>,
}

/// The catalog saved beside the definitions (`tags/catalog.json`).
const CATALOG_FILE: &str = "catalog.json";

impl Workspace {
    fn tags_dir(&self) -> PathBuf {
        self.dir().join("tags")
    }

    pub(crate) fn index_dir(&self) -> PathBuf {
        self.dir().join("index")
    }

    /// The workspace's tag definitions (empty until some are defined).
    pub fn tag_definitions(&self) -> Result<TagDefinitions> {
        let path = self.tags_dir().join("definitions.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => TagDefinitions::parse(&text, DefinitionFormat::Toml),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TagDefinitions::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Saves the definitions and the catalog they were checked against.
    fn save_definitions(&self, defs: &TagDefinitions, catalog: &Catalog) -> Result<()> {
        let json = serde_json::to_vec(catalog).map_err(|e| Error::Internal(e.to_string()))?;
        crate::index::write_file_atomic(&self.tags_dir().join(CATALOG_FILE), &json)?;
        let path = self.tags_dir().join("definitions.toml");
        let text = defs.to_toml()?;
        crate::index::write_file_atomic(&path, text.as_bytes())
    }

    /// The catalog the saved definitions were checked against, else (none
    /// saved, or unreadable) one read from the events. Events are only ever
    /// added, so a catalog saved at `define` is a subset of today's and the
    /// definitions it accepted still pass: a refresh reuses it instead of
    /// two scans of `events`.
    pub(crate) async fn checked_catalog(&self) -> Result<Catalog> {
        let path = self.tags_dir().join(CATALOG_FILE);
        if let Ok(bytes) = std::fs::read(&path) {
            match serde_json::from_slice(&bytes) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(ws = %self.name(), path = %path.display(), error = %e, "unreadable tag catalog; reading the events instead")
                }
            }
        }
        self.catalog().await
    }

    /// Event types and attributes the workspace's events hold.
    pub async fn catalog(&self) -> Result<Catalog> {
        let mut c = Catalog {
            event_types: STANDARD_EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
            ..Catalog::default()
        };
        for (sql, into_types) in [
            ("SELECT DISTINCT event_type FROM events", true),
            (
                "SELECT DISTINCT k FROM (SELECT unnest(map_keys(properties)) AS k FROM events WHERE event_type = 'profile_update')",
                false,
            ),
        ] {
            let mut stream = self.sql(sql).await?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| Error::Sql(e.to_string()))?;
                for v in crate::identity::tables::strings(batch.column(0))?
                    .into_iter()
                    .flatten()
                {
                    if into_types {
                        c.event_types.insert(v);
                    } else {
                        c.attributes.insert(v);
                    }
                }
            }
        }
        Ok(c)
    }

    /// Adds or replaces tags (and the behaviour dimensions, when given) after
    /// checking them against the workspace's events; nothing is saved when
    /// any tag is refused. Returns the definitions now in force.
    pub async fn define_tags(&self, new: &TagDefinitions) -> Result<TagDefinitions> {
        let _g = self.tag_state().lock.lock().await;
        let merged = self.tag_definitions()?.merged(new);
        let catalog = self.catalog().await?;
        merged.check(&catalog)?;
        self.save_definitions(&merged, &catalog)?;
        Ok(merged)
    }

    /// Deletes a tag's definition (its bitmaps stay in older versions).
    pub async fn drop_tag(&self, name: &str) -> Result<()> {
        let _g = self.tag_state().lock.lock().await;
        let mut defs = self.tag_definitions()?;
        let before = defs.tags.len();
        defs.tags.retain(|t| t.name != name);
        if defs.tags.len() == before {
            return Err(Error::NotFound {
                what: "tag",
                name: name.into(),
            });
        }
        let catalog = self.catalog().await?;
        if let Err(e) = defs.check(&catalog) {
            return Err(Error::invalid("name", format!("cannot drop `{name}`: {e}")));
        }
        self.save_definitions(&defs, &catalog)?;
        let manual = self.tags_dir().join("manual").join(format!("{name}.txt"));
        let _ = std::fs::remove_file(manual);
        Ok(())
    }

    /// Replaces the members of manual tag `name` with the persons holding
    /// `identifiers` (`kind:value`, normalised here); takes effect at the next refresh.
    pub async fn upload_manual_tag(
        &self,
        name: &str,
        identifiers: &[String],
    ) -> Result<UploadReport> {
        let _g = self.tag_state().lock.lock().await;
        let defs = self.tag_definitions()?;
        match defs.get(name) {
            Some(t) if t.kind == TagKind::Manual => {}
            Some(t) => {
                return Err(Error::invalid(
                    "name",
                    format!("tag `{name}` is a {} tag, not manual", t.kind.as_str()),
                ));
            }
            None => {
                return Err(Error::NotFound {
                    what: "tag",
                    name: name.into(),
                });
            }
        }
        let mut lines = Vec::with_capacity(identifiers.len());
        for (i, raw) in identifiers.iter().enumerate() {
            let Some((kind, value)) = raw.split_once(':') else {
                return Err(Error::BadValue {
                    row: i as u64,
                    field: "identifier".into(),
                    reason: format!("`{raw}`: expected `kind:value`"),
                });
            };
            match self.normalizer().normalize(kind, value) {
                Ok(crate::event::Normalized::Value(k, v)) => {
                    lines.push((raw, Some(format!("{k}:{v}"))))
                }
                _ => lines.push((raw, None)),
            }
        }
        let rules = self.identity_rules()?;
        let run = crate::identity::tables::read_state(self.dir())?.run;
        let persons = crate::profile::PersonMap::load(self, &rules, run).await?;
        let mut report = UploadReport {
            identifiers: lines.len() as u64,
            ..UploadReport::default()
        };
        let mut members = roaring::RoaringBitmap::new();
        let mut text = String::new();
        for (raw, norm) in &lines {
            let hit = norm.as_ref().and_then(|n| {
                let (k, v) = n.split_once(':')?;
                persons.as_ref()?.ordinal_of(k, v)
            });
            match hit {
                Some(o) => {
                    report.matched += 1;
                    members.insert(o);
                }
                None => {
                    report.unknown += 1;
                    if report.unknown_examples.len() < 10 {
                        report.unknown_examples.push((*raw).clone());
                    }
                }
            }
            if let Some(n) = norm {
                text.push_str(n);
                text.push('\n');
            }
        }
        report.persons = members.len();
        let path = self.tags_dir().join("manual").join(format!("{name}.txt"));
        crate::index::write_file_atomic(&path, text.as_bytes())?;
        Ok(report)
    }

    pub(crate) fn manual_members(&self, name: &str) -> Result<Vec<(String, String)>> {
        let path = self.tags_dir().join("manual").join(format!("{name}.txt"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The latest index version, loaded once and kept (`None` before the
    /// first refresh). Versions are only written by this process's
    /// refreshes, which replace the kept one, so once loaded no directory is
    /// read again: an audience question costs bitmap work only.
    pub fn tag_index(&self) -> Result<Option<Arc<IndexSet>>> {
        let state = self.tag_state();
        if let Some(cur) = state.latest.read().as_ref() {
            return Ok(Some(cur.clone()));
        }
        let newest = IndexSet::versions(&self.index_dir())?.last().copied();
        let Some(v) = newest else {
            return Ok(None);
        };
        let set = Arc::new(IndexSet::read(&self.index_dir(), v)?);
        *state.latest.write() = Some(set.clone());
        Ok(Some(set))
    }

    /// The definitions with their latest coverage.
    pub fn list_tags(&self) -> Result<Vec<TagInfo>> {
        let defs = self.tag_definitions()?;
        let latest = IndexSet::versions(&self.index_dir())?.last().copied();
        let manifest = latest
            .map(|v| IndexSet::manifest(&self.index_dir(), v))
            .transpose()?;
        Ok(defs
            .tags
            .into_iter()
            .map(|def| {
                let count = manifest
                    .as_ref()
                    .and_then(|m| coverage(m, &def.name).map(|c| c.0));
                TagInfo {
                    count,
                    persons: manifest
                        .as_ref()
                        .and_then(|m| m.live.as_ref().map(|e| e.count)),
                    version: manifest.as_ref().map(|m| m.version),
                    def,
                }
            })
            .collect())
    }

    /// A tag's coverage at every kept version, oldest first.
    pub fn tag_versions(&self, name: &str) -> Result<(TagDef, Vec<VersionCoverage>)> {
        let def = self
            .tag_definitions()?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "tag",
                name: name.into(),
            })?;
        let mut out = Vec::new();
        for v in IndexSet::versions(&self.index_dir())? {
            let m = IndexSet::manifest(&self.index_dir(), v)?;
            if let Some((count, values)) = coverage(&m, name) {
                out.push(VersionCoverage {
                    version: v,
                    built_at: m.built_at,
                    persons: m.live.as_ref().map_or(0, |e| e.count),
                    count,
                    values,
                });
            }
        }
        Ok((def, out))
    }

    /// The tags person `ordinal` is in at the latest version: boolean and
    /// manual tags by name, enum tags as `name = value`, numeric tags as
    /// `name = value`.
    pub fn person_tags(&self, ordinal: u32) -> Result<Vec<(String, String)>> {
        let Some(index) = self.tag_index()? else {
            return Ok(Vec::new());
        };
        let defs = self.tag_definitions()?;
        let mut out = Vec::new();
        for t in &defs.tags {
            match t.kind {
                TagKind::Boolean | TagKind::Manual => {
                    if index.tags.get(&t.name).is_some_and(|b| b.contains(ordinal)) {
                        out.push((t.name.clone(), "true".into()));
                    }
                }
                TagKind::Enum => {
                    if let Some(values) = index.enums.get(&t.name) {
                        for (v, b) in values {
                            if b.contains(ordinal) {
                                out.push((t.name.clone(), v.clone()));
                            }
                        }
                    }
                }
                TagKind::Numeric => {
                    if let Some(n) = index.numbers.get(&t.name)
                        && let Some(v) = n.bsi.get(crate::index::Ordinal(ordinal))
                    {
                        out.push((t.name.clone(), build::format_scaled(v, n.scale)));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Refreshes `ws`'s tags every `every` while it is open, when it has tag
/// definitions and persons (the `tags.refresh_interval_secs` schedule).
pub(crate) fn spawn_schedule(ws: std::sync::Weak<Workspace>, every: std::time::Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(w) = ws.upgrade() else { return };
            if w.is_closed() {
                return;
            }
            match w.tag_definitions() {
                Ok(d) if !d.tags.is_empty() => {}
                _ => continue,
            }
            if let Err(e) = w.refresh_tags(None, &|_| {}).await {
                tracing::warn!(ws = %w.name(), error = %e, "scheduled tag refresh failed");
            }
        }
    });
}

/// A person's attributes, traits and tags at the latest index version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonProfile {
    /// The index version (0: never refreshed).
    pub version: u64,
    /// Attribute → latest value.
    pub attributes: Vec<(String, String)>,
    /// Trait → value (numbers with their decimals).
    pub traits: Vec<(String, String)>,
    /// See [`Workspace::person_tags`].
    pub tags: Vec<(String, String)>,
}

impl Workspace {
    /// Person `ordinal`'s profile from the latest index version (in memory:
    /// a bit test per value, a slice walk per number).
    pub fn person_profile(&self, ordinal: u32) -> Result<PersonProfile> {
        let Some(index) = self.tag_index()? else {
            return Ok(PersonProfile::default());
        };
        let defs = self.tag_definitions()?;
        let o = crate::index::Ordinal(ordinal);
        let mut traits = Vec::new();
        for t in crate::profile::TRAITS.iter() {
            match t.kind {
                crate::profile::TraitKind::Numeric { .. } => {
                    if let Some(n) = index.numbers.get(t.name)
                        && let Some(v) = n.bsi.get(o)
                    {
                        traits.push((t.name.to_string(), build::format_scaled(v, n.scale)));
                    }
                }
                crate::profile::TraitKind::Enumerated => {
                    if let Some(v) = value_of(&index, t.name, ordinal) {
                        traits.push((t.name.to_string(), v));
                    }
                }
            }
        }
        let attributes = index
            .enums
            .keys()
            .filter(|k| crate::profile::trait_def(k).is_none())
            .filter(|k| {
                defs.get(k)
                    .is_none_or(|t| t.source.as_deref() == Some(k.as_str()))
            })
            .filter_map(|k| value_of(&index, k, ordinal).map(|v| (k.clone(), v)))
            .collect();
        Ok(PersonProfile {
            version: index.version,
            attributes,
            traits,
            tags: self.person_tags(ordinal)?,
        })
    }
}

fn value_of(index: &IndexSet, name: &str, ordinal: u32) -> Option<String> {
    index
        .enums
        .get(name)?
        .iter()
        .find(|(_, b)| b.contains(ordinal))
        .map(|(v, _)| v.clone())
}

/// `(count, per value)` of tag `name` in manifest `m`.
fn coverage(m: &crate::index::Manifest, name: &str) -> Option<(u64, Vec<(String, u64)>)> {
    if let Some(e) = m.tags.get(name) {
        return Some((e.count, Vec::new()));
    }
    if let Some(values) = m.enums.get(name) {
        let per: Vec<(String, u64)> = values.iter().map(|(v, e)| (v.clone(), e.count)).collect();
        // values of one attribute are disjoint (one latest value per person)
        return Some((per.iter().map(|x| x.1).sum(), per));
    }
    m.numbers.get(name).map(|(_, e)| (e.count, Vec::new()))
}
