//! Tag definitions: declared in TOML or JSON, checked against what the
//! workspace's events hold before they are accepted.
//!
//! ```toml
//! [behaviour]
//! dimensions = ["category", "channel"]   # properties did(... WHERE p = v) may filter on
//!
//! [[tag]]
//! name = "skincare_lover"
//! kind = "boolean"
//! rule = "did(page_view WHERE category = 'skincare') > 3"
//!
//! [[tag]]
//! name = "member_level"
//! kind = "enum"
//! source = "member_level"                 # an attribute or enumerated trait
//! values = ["normal", "silver", "gold", "vip"]
//!
//! [[tag]]
//! name = "spend"
//! kind = "numeric"
//! source = "total_spend"                  # a numeric trait
//!
//! [[tag]]
//! name = "vip_list"
//! kind = "manual"                         # members uploaded as identifiers
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::profile::{TraitKind, trait_def};
use crate::segment::{Expr, near, parse};
use crate::{Error, Result};

/// A workspace's tag definitions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagDefinitions {
    /// Which behaviours are indexed beyond the event type.
    #[serde(default)]
    pub behaviour: BehaviourConfig,
    /// The tags, in declaration order.
    #[serde(default, rename = "tag", alias = "tags")]
    pub tags: Vec<TagDef>,
}

/// Properties whose every value gets per-day behaviour counts (default:
/// `category`; each dimension adds one key per (event type, value), so the
/// index grows with every dimension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BehaviourConfig {
    /// `did(TYPE WHERE p = v)` may filter on these (`category`, `channel`).
    pub dimensions: Vec<String>,
}

impl Default for BehaviourConfig {
    fn default() -> Self {
        BehaviourConfig {
            dimensions: vec!["category".into()],
        }
    }
}

/// One tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagDef {
    /// `[a-z_][a-z0-9_]*`, at most 64 bytes.
    pub name: String,
    /// What kind of tag.
    pub kind: TagKind,
    /// For people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Boolean tags: a segment-language predicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Enumerated tags: an attribute or enumerated trait; numeric tags: a numeric trait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Enumerated tags: the values indexed (absent: every value seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// The kinds of tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagKind {
    /// A rule over behaviour, traits and other tags.
    Boolean,
    /// One bitmap per value of an attribute or trait.
    #[serde(alias = "enumerated")]
    Enum,
    /// A numeric trait, indexed for range queries.
    Numeric,
    /// Persons uploaded as a list of identifiers.
    Manual,
}

impl TagKind {
    /// Its name in definitions.
    pub fn as_str(self) -> &'static str {
        match self {
            TagKind::Boolean => "boolean",
            TagKind::Enum => "enum",
            TagKind::Numeric => "numeric",
            TagKind::Manual => "manual",
        }
    }
}

/// The format of a definitions text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefinitionFormat {
    /// TOML (`[[tag]]` tables).
    Toml,
    /// JSON (`{"tag": [...]}`).
    Json,
}

impl TagDefinitions {
    /// Parses definitions; a syntax error or unknown key is an error naming it.
    pub fn parse(text: &str, format: DefinitionFormat) -> Result<Self> {
        match format {
            DefinitionFormat::Toml => toml::from_str(text)
                .map_err(|e| Error::invalid("definitions", format!("TOML: {e}"))),
            DefinitionFormat::Json => serde_json::from_str(text)
                .map_err(|e| Error::invalid("definitions", format!("JSON: {e}"))),
        }
    }

    /// As TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Internal(format!("tag definitions: {e}")))
    }

    /// The tag named `name`.
    pub fn get(&self, name: &str) -> Option<&TagDef> {
        self.tags.iter().find(|t| t.name == name)
    }

    /// `self` with `new`'s tags added or replacing same-named ones, and its
    /// behaviour dimensions when it declares any.
    pub fn merged(&self, new: &TagDefinitions) -> TagDefinitions {
        let mut out = self.clone();
        if new.behaviour != BehaviourConfig::default() {
            out.behaviour = new.behaviour.clone();
        }
        for t in &new.tags {
            match out.tags.iter_mut().find(|o| o.name == t.name) {
                Some(o) => *o = t.clone(),
                None => out.tags.push(t.clone()),
            }
        }
        out
    }

    /// Checks every tag against `catalog`; returns the boolean tags' parsed
    /// rules in an order where a tag comes after the tags its rule names.
    pub fn check(&self, catalog: &Catalog) -> Result<Vec<(String, Expr)>> {
        let mut seen = BTreeSet::new();
        for t in &self.tags {
            check_name(&t.name)?;
            if !seen.insert(t.name.as_str()) {
                return Err(bad(&t.name, "is defined twice".into()));
            }
            if trait_def(&t.name).is_some() && t.source.as_deref() != Some(t.name.as_str()) {
                return Err(bad(&t.name, "is the name of a computed trait".into()));
            }
        }
        for d in &self.behaviour.dimensions {
            check_name(d).map_err(|_| {
                Error::invalid(
                    "behaviour.dimensions",
                    format!("`{d}` is not a property name"),
                )
            })?;
        }
        let mut rules: BTreeMap<&str, Expr> = BTreeMap::new();
        for t in &self.tags {
            let needs = |what: &str, present: bool, wanted: bool| -> Result<()> {
                match (present, wanted) {
                    (false, true) => Err(bad(
                        &t.name,
                        format!("a {} tag needs `{what}`", t.kind.as_str()),
                    )),
                    (true, false) => Err(bad(
                        &t.name,
                        format!("a {} tag takes no `{what}`", t.kind.as_str()),
                    )),
                    _ => Ok(()),
                }
            };
            needs("rule", t.rule.is_some(), t.kind == TagKind::Boolean)?;
            needs(
                "source",
                t.source.is_some(),
                matches!(t.kind, TagKind::Enum | TagKind::Numeric),
            )?;
            if t.values.is_some() && t.kind != TagKind::Enum {
                return Err(bad(&t.name, "only an enum tag takes `values`".into()));
            }
            match t.kind {
                TagKind::Boolean => {
                    let text = t.rule.as_deref().unwrap_or_default();
                    let e = parse(text).map_err(|e| bad(&t.name, format!("rule: {e}")))?;
                    self.check_expr(&t.name, &e, catalog)?;
                    rules.insert(&t.name, e);
                }
                TagKind::Enum => {
                    let source = t.source.as_deref().unwrap_or_default();
                    let enumerated_trait =
                        trait_def(source).is_some_and(|d| d.kind == TraitKind::Enumerated);
                    if !enumerated_trait && !catalog.attributes.contains(source) {
                        return Err(bad(
                            &t.name,
                            format!(
                                "source `{source}` is neither an attribute nor an enumerated trait{}",
                                hint(source, catalog.enumerated_names())
                            ),
                        ));
                    }
                }
                TagKind::Numeric => {
                    let source = t.source.as_deref().unwrap_or_default();
                    if !trait_def(source)
                        .is_some_and(|d| matches!(d.kind, TraitKind::Numeric { .. }))
                    {
                        return Err(bad(
                            &t.name,
                            format!(
                                "source `{source}` is not a numeric trait{}",
                                hint(source, numeric_traits())
                            ),
                        ));
                    }
                }
                TagKind::Manual => {}
            }
        }
        // Order: a tag after the tags its rule names; a cycle is an error.
        let mut order: Vec<(String, Expr)> = Vec::new();
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        fn visit<'a>(
            name: &'a str,
            rules: &'a BTreeMap<&'a str, Expr>,
            state: &mut BTreeMap<&'a str, u8>,
            order: &mut Vec<(String, Expr)>,
            path: &mut Vec<&'a str>,
        ) -> Result<()> {
            let Some(e) = rules.get(name) else {
                return Ok(());
            };
            match state.get(name) {
                Some(2) => return Ok(()),
                Some(1) => {
                    path.push(name);
                    return Err(bad(
                        name,
                        format!(
                            "rules refer to each other in a cycle: {}",
                            path.join(" -> ")
                        ),
                    ));
                }
                _ => {}
            }
            state.insert(name, 1);
            path.push(name);
            let mut refs = Vec::new();
            tag_refs(e, &mut refs);
            for r in refs {
                visit(r, rules, state, order, path)?;
            }
            path.pop();
            state.insert(name, 2);
            order.push((name.to_string(), e.clone()));
            Ok(())
        }
        for t in &self.tags {
            visit(&t.name, &rules, &mut state, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    fn check_expr(&self, tag: &str, e: &Expr, catalog: &Catalog) -> Result<()> {
        let field_kind = |field: &str| -> Option<FieldKind> {
            if let Some(t) = self.get(field) {
                return match t.kind {
                    TagKind::Enum => Some(FieldKind::Enumerated),
                    TagKind::Numeric => Some(FieldKind::Numeric),
                    TagKind::Boolean | TagKind::Manual => Some(FieldKind::Boolean),
                };
            }
            match trait_def(field) {
                Some(d) if d.kind == TraitKind::Enumerated => Some(FieldKind::Enumerated),
                Some(_) => Some(FieldKind::Numeric),
                None => catalog
                    .attributes
                    .contains(field)
                    .then_some(FieldKind::Enumerated),
            }
        };
        let fields = || {
            self.tags
                .iter()
                .map(|t| t.name.clone())
                .chain(catalog.enumerated_names())
                .chain(numeric_traits())
                .collect::<Vec<_>>()
        };
        let unknown_field = |field: &str| {
            let all = fields();
            bad(
                tag,
                format!(
                    "rule names `{field}`, which is no tag, attribute or trait{}",
                    hint(field, all)
                ),
            )
        };
        match e {
            Expr::And { args } | Expr::Or { args } => {
                for a in args {
                    self.check_expr(tag, a, catalog)?;
                }
            }
            Expr::Not { arg } => self.check_expr(tag, arg, catalog)?,
            Expr::Tag { name } => match field_kind(name) {
                Some(FieldKind::Boolean) => {}
                Some(_) => {
                    return Err(bad(
                        tag,
                        format!("rule uses `{name}` as a boolean tag, but it is compared by value"),
                    ));
                }
                None => return Err(unknown_field(name)),
            },
            Expr::Compare { field, cmp, .. } => match field_kind(field) {
                Some(FieldKind::Enumerated)
                    if !matches!(cmp, crate::segment::Cmp::Eq | crate::segment::Cmp::Ne) =>
                {
                    return Err(bad(
                        tag,
                        format!("`{field}` is enumerated: only = != and IN compare it"),
                    ));
                }
                Some(FieldKind::Boolean) => {
                    return Err(bad(
                        tag,
                        format!("`{field}` is a boolean tag: name it alone, not in a comparison"),
                    ));
                }
                Some(_) => {}
                None => return Err(unknown_field(field)),
            },
            Expr::In { field, .. } => match field_kind(field) {
                Some(FieldKind::Enumerated) => {}
                Some(_) => {
                    return Err(bad(
                        tag,
                        format!(
                            "`{field}` is not enumerated: IN needs an attribute, enumerated trait or enum tag"
                        ),
                    ));
                }
                None => return Err(unknown_field(field)),
            },
            Expr::Between { field, .. } => match field_kind(field) {
                Some(FieldKind::Numeric) => {}
                Some(_) => {
                    return Err(bad(
                        tag,
                        format!("`{field}` is not numeric: BETWEEN needs a numeric trait"),
                    ));
                }
                None => return Err(unknown_field(field)),
            },
            Expr::Did(d) => {
                if !catalog.event_types.contains(&d.event_type) {
                    return Err(bad(
                        tag,
                        format!(
                            "rule names event type `{}`, which no event has{}",
                            d.event_type,
                            hint(&d.event_type, catalog.event_types.iter().cloned())
                        ),
                    ));
                }
                for (p, _) in &d.filters {
                    if !self.behaviour.dimensions.contains(p) {
                        return Err(bad(
                            tag,
                            format!(
                                "rule filters on property `{p}`, which is not a behaviour dimension (dimensions: {}){}",
                                self.behaviour.dimensions.join(", "),
                                hint(p, self.behaviour.dimensions.iter().cloned())
                            ),
                        ));
                    }
                }
            }
            Expr::Segment { name } => {
                return Err(bad(
                    tag,
                    format!(
                        "rule uses saved segment `{name}`: tag rules cannot refer to saved segments"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum FieldKind {
    Boolean,
    Enumerated,
    Numeric,
}

/// What the workspace's data holds, to check definitions against.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Event types seen in events, and the standard ones.
    pub event_types: BTreeSet<String>,
    /// Attribute names seen in `profile_update` events.
    pub attributes: BTreeSet<String>,
}

impl Catalog {
    fn enumerated_names(&self) -> impl Iterator<Item = String> + '_ {
        crate::profile::TRAITS
            .iter()
            .filter(|t| t.kind == TraitKind::Enumerated)
            .map(|t| t.name.to_string())
            .chain(self.attributes.iter().cloned())
    }
}

fn numeric_traits() -> impl Iterator<Item = String> {
    crate::profile::TRAITS
        .iter()
        .filter(|t| matches!(t.kind, TraitKind::Numeric { .. }))
        .map(|t| t.name.to_string())
}

/// The event types every workspace knows, seen or not.
pub const STANDARD_EVENT_TYPES: [&str; 9] = [
    "page_view",
    "add_to_cart",
    "purchase",
    "register",
    "coupon_claim",
    "store_visit",
    "ad_click",
    "lead",
    "profile_update",
];

fn hint(name: &str, candidates: impl IntoIterator<Item = String>) -> String {
    let all: Vec<String> = candidates.into_iter().collect();
    let near = near(name, all.iter().map(String::as_str));
    if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    }
}

/// Names of the tags `e` refers to as boolean tags.
fn tag_refs<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
    match e {
        Expr::And { args } | Expr::Or { args } => args.iter().for_each(|a| tag_refs(a, out)),
        Expr::Not { arg } => tag_refs(arg, out),
        Expr::Tag { name } => out.push(name),
        _ => {}
    }
}

fn bad(tag: &str, reason: String) -> Error {
    Error::invalid(format!("tag `{tag}`"), reason)
}

/// Tag names: `[a-z_][a-z0-9_]*`, at most 64 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "tag name `{name}` must be lower-case letters, digits and `_`, not starting with a digit, at most 64 bytes"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog {
            event_types: STANDARD_EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
            attributes: ["member_level", "city"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    fn defs(text: &str) -> TagDefinitions {
        TagDefinitions::parse(text, DefinitionFormat::Toml).unwrap()
    }

    #[test]
    fn the_generators_seed_tags_are_accepted() {
        let text = quiver_data::SEED_TAGS_TOML;
        let d = defs(text);
        assert_eq!(d.tags.len(), 4);
        let order = d.check(&catalog()).unwrap();
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        let cases = [
            (
                "[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrule = \"did(page_veiw) > 3\"",
                "event type `page_veiw`",
            ),
            (
                "[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrule = \"did(page_view WHERE colour = 'red')\"",
                "property `colour`",
            ),
            (
                "[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrule = \"total_spned >= 3\"",
                "`total_spned`",
            ),
            (
                "[[tag]]\nname = \"x\"\nkind = \"enum\"\nsource = \"levle\"",
                "source `levle`",
            ),
            (
                "[[tag]]\nname = \"x\"\nkind = \"numeric\"\nsource = \"city\"",
                "not a numeric trait",
            ),
            (
                "[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrule = \"y\"\n[[tag]]\nname = \"y\"\nkind = \"boolean\"\nrule = \"x\"",
                "cycle",
            ),
            (
                "[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrule = \"did(purchase) >=\"",
                "rule: line 1",
            ),
            ("[[tag]]\nname = \"x\"\nkind = \"boolean\"", "needs `rule`"),
            (
                "[[tag]]\nname = \"Bad\"\nkind = \"manual\"",
                "tag name `Bad`",
            ),
        ];
        for (text, needle) in cases {
            let err = defs(text).check(&catalog()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}\n=> {err}\n(wanted {needle})");
        }
        let err = defs("[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrule = \"did(page_veiw)\"")
            .check(&catalog())
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean page_view"), "{err}");
        assert!(
            TagDefinitions::parse(
                "[[tag]]\nname = \"x\"\nkind = \"boolean\"\nrul = \"a\"",
                DefinitionFormat::Toml
            )
            .is_err()
        );
    }

    #[test]
    fn rules_are_ordered_after_the_tags_they_use_and_json_works() {
        let d = TagDefinitions::parse(
            r#"{"tag": [
                {"name": "both", "kind": "boolean", "rule": "buyer AND NOT lurker"},
                {"name": "lurker", "kind": "boolean", "rule": "did(page_view) AND NOT buyer"},
                {"name": "buyer", "kind": "boolean", "rule": "did(purchase)"}
            ]}"#,
            DefinitionFormat::Json,
        )
        .unwrap();
        let order: Vec<String> = d
            .check(&catalog())
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(order, vec!["buyer", "lurker", "both"]);
        let back = TagDefinitions::parse(&d.to_toml().unwrap(), DefinitionFormat::Toml).unwrap();
        assert_eq!(back, d);
    }
}
