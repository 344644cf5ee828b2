//! OneID rules: per identifier kind a priority, whether it may merge persons,
//! a cap per person, blocklisted values and patterns; and the super-node guard.
//! Declared in TOML (a workspace's `identity.toml`), compiled once per run.
//!
//! ```toml
//! max_persons_per_value = 3          # the super-node guard's K (default for every kind)
//!
//! [kinds.phone]
//! priority = 80                      # stronger kinds are unioned first
//! max_per_person = 3                 # a union that would give a person a 4th phone is refused
//! blocklist = ["+8613900000000"]
//! patterns = ['^\+861390000\d{4}$']  # regular expressions over the normalised value
//!
//! [kinds.device]
//! priority = 10
//! max_persons = 1                    # a device seen with two persons is quarantined
//! ```
//!
//! For `openid` the cap counts per app id (the `<appid>:` prefix of the value):
//! `max_per_person = 1` means one openid per mini-program or official account.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The rules of one workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityRules {
    /// The super-node guard: a value whose links would join more than this many
    /// persons is quarantined (not used for merging) and reported. Per-kind
    /// `max_persons` overrides it.
    pub max_persons_per_value: u32,
    /// Rules by identifier kind (`phone`, `email`, `unionid`, `openid`, `device`, `member`, ...).
    pub kinds: BTreeMap<String, KindRule>,
    /// The rule for kinds not listed in `kinds`.
    pub default_kind: KindRule,
}

/// The rule for one identifier kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KindRule {
    /// Higher is stronger: unions through stronger kinds are applied first.
    pub priority: u8,
    /// Whether values of this kind may link two persons. When `false` a value
    /// is attached to the person it co-occurs with most, never linking two.
    pub merge: bool,
    /// Most values of this kind one person may hold; a union that would exceed
    /// it is refused and recorded. Absent: no cap.
    pub max_per_person: Option<u32>,
    /// The super-node guard's K for this kind (default: `max_persons_per_value`).
    pub max_persons: Option<u32>,
    /// Values never used (compared with the normalised value).
    pub blocklist: Vec<String>,
    /// Regular expressions; a normalised value matching any is never used.
    pub patterns: Vec<String>,
}

impl Default for KindRule {
    fn default() -> Self {
        KindRule {
            priority: 50,
            merge: true,
            max_per_person: None,
            max_persons: None,
            blocklist: Vec::new(),
            patterns: Vec::new(),
        }
    }
}

fn kind(priority: u8, max_per_person: Option<u32>, max_persons: Option<u32>) -> KindRule {
    KindRule {
        priority,
        max_per_person,
        max_persons,
        ..KindRule::default()
    }
}

impl Default for IdentityRules {
    /// Defaults for the generator's kinds: member cards and unionids are one
    /// per person and strongest; phones and emails up to three (a new number,
    /// a typo); one openid per app; devices weakest and never shared.
    fn default() -> Self {
        let kinds = [
            ("member", kind(100, Some(1), None)),
            ("unionid", kind(90, Some(1), None)),
            ("phone", kind(80, Some(3), None)),
            ("openid", kind(70, Some(1), None)),
            ("email", kind(60, Some(3), None)),
            ("device", kind(10, Some(5), Some(1))),
        ];
        IdentityRules {
            max_persons_per_value: 3,
            kinds: kinds.into_iter().map(|(k, r)| (k.to_string(), r)).collect(),
            default_kind: KindRule::default(),
        }
    }
}

impl IdentityRules {
    /// Parses TOML; an unknown key or a bad pattern is an error naming it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let rules: IdentityRules =
            toml::from_str(text).map_err(|e| Error::Config(format!("identity rules: {e}")))?;
        rules.compile()?;
        Ok(rules)
    }

    /// The rules as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print rules: {e}\n"))
    }

    /// The rule for `kind`.
    pub fn kind(&self, kind: &str) -> &KindRule {
        self.kinds.get(kind).unwrap_or(&self.default_kind)
    }

    pub(crate) fn compile(&self) -> Result<CompiledRules> {
        if self.max_persons_per_value == 0 {
            return Err(Error::Config(
                "identity rules: max_persons_per_value must be at least 1".into(),
            ));
        }
        let mut kinds = BTreeMap::new();
        for (name, rule) in &self.kinds {
            kinds.insert(name.clone(), CompiledKind::new(name, rule, self)?);
        }
        let default_kind = CompiledKind::new("default_kind", &self.default_kind, self)?;
        Ok(CompiledRules {
            kinds,
            default_kind,
        })
    }
}

/// The largest `max_per_person`: the union-find keeps cap counts in 16 bits.
pub(crate) const MAX_CAP: u32 = u16::MAX as u32;

/// A kind's rule, ready to apply.
#[derive(Debug, Clone)]
pub(crate) struct CompiledKind {
    pub priority: u8,
    pub merge: bool,
    pub cap: Option<u32>,
    pub guard: u32,
    blocklist: hashbrown::HashSet<String>,
    patterns: Option<regex::RegexSet>,
}

impl CompiledKind {
    fn new(name: &str, rule: &KindRule, rules: &IdentityRules) -> Result<Self> {
        let patterns = if rule.patterns.is_empty() {
            None
        } else {
            Some(regex::RegexSet::new(&rule.patterns).map_err(|e| {
                Error::Config(format!("identity rules: kinds.{name}.patterns: {e}"))
            })?)
        };
        if let Some(cap) = rule.max_per_person
            && !(1..=MAX_CAP).contains(&cap)
        {
            return Err(Error::Config(format!(
                "identity rules: kinds.{name}.max_per_person must be between 1 and {MAX_CAP}, got {cap}"
            )));
        }
        Ok(CompiledKind {
            priority: rule.priority,
            merge: rule.merge,
            cap: rule.max_per_person,
            guard: rule
                .max_persons
                .unwrap_or(rules.max_persons_per_value)
                .max(1),
            blocklist: rule.blocklist.iter().cloned().collect(),
            patterns,
        })
    }

    /// Whether `value` is blocklisted or matches a pattern.
    pub fn blocked(&self, value: &str) -> bool {
        self.blocklist.contains(value) || self.patterns.as_ref().is_some_and(|p| p.is_match(value))
    }
}

/// [`IdentityRules`] with patterns compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRules {
    kinds: BTreeMap<String, CompiledKind>,
    default_kind: CompiledKind,
}

impl CompiledRules {
    pub fn kind(&self, kind: &str) -> &CompiledKind {
        self.kinds.get(kind).unwrap_or(&self.default_kind)
    }
}

/// The class a value's cap counts in: the kind, and for `openid` the kind and app id.
pub(crate) fn cap_class<'a>(kind: &'a str, value: &'a str) -> (&'a str, &'a str) {
    if kind == "openid" {
        (kind, value.split_once(':').map_or("", |(app, _)| app))
    } else {
        (kind, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let rules = IdentityRules::default();
        let back = IdentityRules::from_toml(&rules.to_toml()).unwrap();
        assert_eq!(back, rules);
    }

    #[test]
    fn unknown_keys_and_bad_patterns_are_named() {
        let e = IdentityRules::from_toml("[kinds.phone]\nprority = 3\n").unwrap_err();
        assert!(e.to_string().contains("prority"), "{e}");
        let e = IdentityRules::from_toml("[kinds.phone]\npatterns = ['(']\n").unwrap_err();
        assert!(e.to_string().contains("kinds.phone.patterns"), "{e}");
        let e = IdentityRules::from_toml("[kinds.email]\nmax_per_person = 0\n").unwrap_err();
        assert!(e.to_string().contains("kinds.email.max_per_person"), "{e}");
        let e = IdentityRules::from_toml("[kinds.email]\nmax_per_person = 65536\n").unwrap_err();
        assert!(
            e.to_string().contains("between 1 and 65535, got 65536"),
            "{e}"
        );
        IdentityRules::from_toml("[kinds.email]\nmax_per_person = 65535\n").unwrap();
    }

    #[test]
    fn blocklist_and_patterns_block() {
        let rules = IdentityRules::from_toml(
            "[kinds.phone]\nblocklist = ['+8613800000000']\npatterns = ['^\\+861390000\\d{4}$']\n",
        )
        .unwrap()
        .compile()
        .unwrap();
        let phone = rules.kind("phone");
        assert!(phone.blocked("+8613800000000"));
        assert!(phone.blocked("+8613900001234"));
        assert!(!phone.blocked("+8613800138000"));
        // Unlisted kinds get the default rule.
        assert_eq!(rules.kind("loyalty").priority, 50);
    }

    #[test]
    fn openid_caps_count_per_app() {
        assert_eq!(cap_class("openid", "wx1:abc"), ("openid", "wx1"));
        assert_eq!(cap_class("phone", "+86138"), ("phone", ""));
    }
}
