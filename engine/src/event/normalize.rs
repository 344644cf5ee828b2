//! Identifier normalisation: one canonical form per identifier, so that the
//! same person's phone typed five ways is one value.
//!
//! - `phone`: E.164 through the `phonenumber` crate (libphonenumber's metadata),
//!   default region configurable (`CN`). Full-width digits and punctuation,
//!   `+86 138-0013-8000`, `8613800138000`, `(0)138…`, `0086…` all become
//!   `+8613800138000`. A number libphonenumber calls invalid is an error.
//! - `email`: trimmed, lower-cased, syntax checked.
//! - `openid`: kept with its app id as `<appid>:<openid>` (kind `openid`);
//!   `openid:<appid>` as the kind is accepted too. Case is kept.
//! - `device`: trimmed, lower-cased. Others: trimmed, case kept.
//!
//! A configurable blocklist of junk values (`00000000000`, `null`,
//! `test@test.com`, ...) drops the identifier from the event with a counted
//! reason; it is never an error and never merged on.

use std::borrow::Cow;
use std::collections::BTreeMap;

use phonenumber::country;
use serde::Deserialize;

/// Normalisation settings (`[normalize]` in the server config).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Region for phone numbers written without a country code (ISO 3166 alpha-2).
    pub default_region: String,
    /// Junk values dropped for every identifier kind (compared trimmed, case-insensitive).
    pub blocklist: Vec<String>,
    /// Junk values for one kind only, compared after normalisation (`phone = ["+8613800000000"]`).
    pub blocklist_by_kind: BTreeMap<String, Vec<String>>,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        let any = [
            "null",
            "nil",
            "none",
            "undefined",
            "n/a",
            "na",
            "-",
            "--",
            "0",
            "unknown",
            "test",
            "00000000000",
            "11111111111",
            "12345678901",
            "13800000000",
            "test@test.com",
            "none@none.com",
            "null@null.com",
            "a@a.com",
            "00000000-0000-0000-0000-000000000000",
        ];
        NormalizeConfig {
            default_region: "CN".into(),
            blocklist: any.iter().map(|s| s.to_string()).collect(),
            blocklist_by_kind: BTreeMap::new(),
        }
    }
}

/// The outcome of normalising one identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    /// The canonical `(kind, value)`.
    Value(Cow<'static, str>, String),
    /// Dropped, with the counted reason (`blocklisted phone`, `empty email`).
    Dropped(String),
}

/// Applies [`NormalizeConfig`]. Cheap to share; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Normalizer {
    region: country::Id,
    any: Blocklist,
    by_kind: BTreeMap<String, Blocklist>,
}

/// Blocklisted values, lower-cased, with a bitmap of their byte lengths so
/// that almost every lookup ends before hashing.
#[derive(Debug, Clone, Default)]
struct Blocklist {
    values: hashbrown::HashSet<String>,
    /// Bit `n` is set when some value is `n` bytes long (bit 127: ≥ 127).
    lengths: u128,
}

impl Blocklist {
    fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut b = Blocklist::default();
        for v in values {
            let v = v.trim().to_lowercase();
            b.lengths |= 1u128 << v.len().min(127);
            b.values.insert(v);
        }
        b
    }

    /// Whether `v` (any case) is listed.
    fn contains(&self, v: &str) -> bool {
        if v.is_ascii() && self.lengths & (1u128 << v.len().min(127)) == 0 {
            return false;
        }
        self.values.contains(lower(v).as_ref())
    }
}

/// `s` lower-cased, borrowed when that changes nothing.
fn lower(s: &str) -> Cow<'_, str> {
    if !s.is_ascii() {
        Cow::Owned(s.to_lowercase())
    } else if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The identifier kinds Quiver knows, as `'static` names.
const KNOWN_KINDS: [&str; 6] = ["phone", "email", "unionid", "openid", "device", "member"];

impl Normalizer {
    /// Builds a normaliser; errors name the bad setting.
    pub fn new(cfg: &NormalizeConfig) -> crate::Result<Self> {
        let region: country::Id = cfg.default_region.parse().map_err(|_| {
            crate::Error::Config(format!(
                "normalize.default_region: `{}` is not an ISO 3166 region code",
                cfg.default_region
            ))
        })?;
        let any = Blocklist::new(&cfg.blocklist);
        let mut by_kind = BTreeMap::new();
        for (kind, values) in &cfg.blocklist_by_kind {
            let kind = canonical_kind(kind).map_err(|reason| {
                crate::Error::Config(format!("normalize.blocklist_by_kind: {reason}"))
            })?;
            by_kind.insert(kind.to_string(), Blocklist::new(values));
        }
        Ok(Normalizer {
            region,
            any,
            by_kind,
        })
    }

    /// Normalises one identifier. `Err` carries the rejection reason.
    pub fn normalize(&self, kind: &str, value: &str) -> Result<Normalized, String> {
        let (kind, app) = split_kind(kind)?;
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Ok(Normalized::Dropped(format!("empty {kind}")));
        }
        if self.any.contains(trimmed) {
            return Ok(Normalized::Dropped(format!("blocklisted {kind}")));
        }
        let value = match kind {
            "phone" => self.phone(trimmed)?,
            "email" => email(trimmed)?,
            "openid" => openid(app, trimmed)?,
            "device" => token(trimmed, 256)?.to_lowercase(),
            _ => token(trimmed, 256)?.to_string(),
        };
        if let Some(set) = self.by_kind.get(kind)
            && set.contains(&value)
        {
            return Ok(Normalized::Dropped(format!("blocklisted {kind}")));
        }
        if kind != "phone" && self.any.contains(&value) {
            return Ok(Normalized::Dropped(format!("blocklisted {kind}")));
        }
        let kind = match KNOWN_KINDS.iter().find(|k| **k == kind) {
            Some(k) => Cow::Borrowed(*k),
            None => Cow::Owned(kind.to_string()),
        };
        Ok(Normalized::Value(kind, value))
    }

    /// A phone number in E.164 (`+8613800138000`).
    pub fn phone(&self, raw: &str) -> Result<String, String> {
        // The common case, already clean: `+86` + 11 digits, or 11 digits in CN.
        if let Some(e164) = cn_mobile_fast(raw, self.region == country::Id::CN) {
            return Ok(e164);
        }
        let mut s = String::with_capacity(raw.len());
        for ch in raw.chars() {
            let ch = fold_width(ch);
            match ch {
                '0'..='9' | '+' => s.push(ch),
                ' ' | '-' | '.' | '/' | '\t' => {}
                '(' | ')' => s.push(ch),
                _ => return Err(format!("not a phone number: unexpected `{ch}`")),
            }
        }
        // "(0)" is a trunk prefix written in parentheses; "(+86)" a country code.
        let s = s.replace("(0)", "").replace(['(', ')'], "");
        if s.is_empty() || s.matches('+').count() > 1 || (s.contains('+') && !s.starts_with('+')) {
            return Err("not a phone number".into());
        }
        let digits = s.trim_start_matches('+');
        if digits.len() < 5 || digits.len() > 17 {
            return Err(format!("not a phone number: {} digits", digits.len()));
        }
        // "0086…" and "86…" (13 digits) without the plus: an international
        // prefix or a bare country code, both common in Chinese exports.
        let candidate =
            if let Some(rest) = digits.strip_prefix("00").filter(|_| !s.starts_with('+')) {
                format!("+{rest}")
            } else if !s.starts_with('+')
                && self.region == country::Id::CN
                && digits.len() == 13
                && digits.starts_with("861")
            {
                format!("+{digits}")
            } else {
                s.clone()
            };
        if let Some(e164) = cn_mobile_fast(&candidate, self.region == country::Id::CN) {
            return Ok(e164);
        }
        let number = phonenumber::parse(Some(self.region), &candidate)
            .map_err(|e| format!("not a phone number: {e}"))?;
        if !phonenumber::is_valid(&number) {
            return Err("not a valid phone number for its region".into());
        }
        Ok(number.format().mode(phonenumber::Mode::E164).to_string())
    }
}

/// Chinese mobile prefixes (the first five digits, `10000..=19999`) that
/// libphonenumber accepts whatever the last six digits are. Built once by
/// asking libphonenumber itself, so the fast path can never disagree with it.
static CN_MOBILE_PREFIXES: std::sync::LazyLock<Vec<bool>> = std::sync::LazyLock::new(|| {
    (10_000u32..20_000)
        .map(|prefix| {
            ["000000", "999999", "512347"].iter().all(|rest| {
                phonenumber::parse(None, format!("+86{prefix}{rest}"))
                    .is_ok_and(|n| phonenumber::is_valid(&n))
            })
        })
        .collect()
});

/// E.164 of a Chinese mobile number without going through libphonenumber's
/// parser (its regex cache sits behind a mutex and dominated ingest
/// profiles): `candidate` is `+86` + 11 digits, or 11 digits when the
/// default region is CN, and its five-digit prefix is one libphonenumber
/// accepts for any ending. Anything else returns `None` (the slow path).
fn cn_mobile_fast(candidate: &str, region_cn: bool) -> Option<String> {
    let digits = match candidate.strip_prefix("+86") {
        Some(rest) => rest,
        None if region_cn => candidate,
        None => return None,
    };
    let b = digits.as_bytes();
    if b.len() != 11 || b[0] != b'1' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let prefix = digits[..5].parse::<usize>().ok()?;
    if !*CN_MOBILE_PREFIXES.get(prefix.checked_sub(10_000)?)? {
        return None;
    }
    Some(format!("+86{digits}"))
}

/// Maps full-width forms (U+FF01..U+FF5E, ideographic space) to ASCII.
fn fold_width(ch: char) -> char {
    match ch {
        '\u{3000}' => ' ',
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(ch as u32 - 0xFEE0).unwrap_or(ch),
        _ => ch,
    }
}

/// The canonical name of an identifier kind (`mobile` → `phone`).
pub fn canonical_kind(kind: &str) -> Result<&str, String> {
    let kind = kind.trim();
    let canonical = match lower(kind).as_ref() {
        "phone" | "mobile" | "tel" | "phone_number" => "phone",
        "email" | "mail" | "e_mail" => "email",
        "unionid" | "union_id" => "unionid",
        "openid" | "open_id" => "openid",
        "device" | "device_id" | "deviceid" => "device",
        "member" | "member_id" | "member_card" | "card" => "member",
        _ => {
            let ok = !kind.is_empty()
                && kind.len() <= 32
                && kind.starts_with(|c: char| c.is_ascii_lowercase())
                && kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(format!(
                    "identifier kind `{kind}` must be lower-case letters, digits and `_`, at most 32"
                ));
            }
            return Ok(kind);
        }
    };
    Ok(canonical)
}

/// Splits `openid:<appid>` kinds; returns the canonical kind and the app id, if any.
fn split_kind(kind: &str) -> Result<(&str, Option<&str>), String> {
    match kind.split_once(':') {
        Some((k, app)) if canonical_kind(k)? == "openid" => Ok(("openid", Some(app.trim()))),
        Some(_) => Err(format!(
            "identifier kind `{kind}`: only `openid:<appid>` may carry a suffix"
        )),
        None => Ok((canonical_kind(kind)?, None)),
    }
}

fn email(raw: &str) -> Result<String, String> {
    let v = raw.to_lowercase();
    let (local, domain) = v
        .split_once('@')
        .ok_or_else(|| "not an email address: no `@`".to_string())?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    if !local_ok {
        return Err(format!("not an email address: bad local part `{local}`"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    if !domain_ok {
        return Err(format!("not an email address: bad domain `{domain}`"));
    }
    Ok(v)
}

fn openid(app: Option<&str>, raw: &str) -> Result<String, String> {
    let (app, id) = match app {
        Some(app) => (app, raw),
        None => raw
            .split_once(':')
            .map(|(a, i)| (a.trim(), i.trim()))
            .ok_or_else(|| "an openid needs its app id: `<appid>:<openid>`".to_string())?,
    };
    let ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !ok(app, 64) {
        return Err(format!("openid app id `{app}` is not a valid app id"));
    }
    if !ok(id, 128) {
        return Err(format!(
            "openid `{id}` has characters outside [A-Za-z0-9_-]"
        ));
    }
    Ok(format!("{app}:{id}"))
}

fn token(raw: &str, max: usize) -> Result<&str, String> {
    if raw.len() > max {
        return Err(format!("longer than {max} bytes"));
    }
    if raw.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm() -> Normalizer {
        Normalizer::new(&NormalizeConfig::default()).unwrap()
    }

    fn value(kind: &str, v: &str) -> String {
        match norm().normalize(kind, v) {
            Ok(Normalized::Value(_, v)) => v,
            other => panic!("{kind}:{v} gave {other:?}"),
        }
    }

    #[test]
    fn chinese_phone_forms() {
        for raw in [
            "+86 138-0013-8000",
            "8613800138000",
            "+8613800138000",
            "13800138000",
            "138 0013 8000",
            "+86-138-0013-8000",
            "１３８００１３８０００",
            "＋８６ １３８ ００１３ ８０００",
            "(+86) 13800138000",
            "(0)138 0013 8000",
            "0138 0013 8000",
            "008613800138000",
            " 138.0013.8000 ",
        ] {
            assert_eq!(value("phone", raw), "+8613800138000", "{raw}");
        }
        assert_eq!(value("mobile", "+1 650-253-0000"), "+16502530000");
    }

    #[test]
    fn bad_phones_are_errors() {
        for raw in [
            "12345",
            "phone",
            "1380013800",
            "+86 2",
            "138-0013-80001234567",
        ] {
            assert!(norm().normalize("phone", raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(value("email", "  Alice.W@QQ.com "), "alice.w@qq.com");
        assert_eq!(value("mail", "a+b@mail.example.cn"), "a+b@mail.example.cn");
        for bad in ["alice", "a@b", "a@@b.cn", ".a@b.cn", "a b@c.cn", "a@b.c0m"] {
            assert!(norm().normalize("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn openids_keep_their_app() {
        assert_eq!(value("openid", " wx123:oAbC-9_z "), "wx123:oAbC-9_z");
        assert_eq!(value("openid:wx123", "oAbC"), "wx123:oAbC");
        assert!(norm().normalize("openid", "oAbC").is_err());
    }

    #[test]
    fn blocklist_drops_with_reason() {
        let n = norm();
        for (k, v) in [
            ("phone", "00000000000"),
            ("phone", "NULL"),
            ("email", "Test@Test.com "),
            ("device", "00000000-0000-0000-0000-000000000000"),
        ] {
            assert_eq!(
                n.normalize(k, v),
                Ok(Normalized::Dropped(format!("blocklisted {k}"))),
                "{k}:{v}"
            );
        }
        assert_eq!(
            n.normalize("email", "  "),
            Ok(Normalized::Dropped("empty email".into()))
        );
        let mut cfg = NormalizeConfig::default();
        cfg.blocklist_by_kind
            .insert("mobile".into(), vec!["+8613900001234".into()]);
        let n = Normalizer::new(&cfg).unwrap();
        assert_eq!(
            n.normalize("phone", "139 0000 1234"),
            Ok(Normalized::Dropped("blocklisted phone".into()))
        );
    }

    #[test]
    fn blocklist_lengths_and_case() {
        let long = "x".repeat(130);
        let b = Blocklist::new(&["ÄBC".to_string(), long.to_uppercase(), "null".into()]);
        assert!(b.contains("äbc") && b.contains("ÄbC"));
        assert!(b.contains(&long) && !b.contains(&"x".repeat(131)));
        assert!(b.contains("NuLL") && !b.contains("nul") && !b.contains("nulls"));
    }

    #[test]
    fn kinds() {
        assert_eq!(canonical_kind("Device_ID"), Ok("device"));
        assert_eq!(canonical_kind("douyin_id"), Ok("douyin_id"));
        assert!(canonical_kind("Bad Kind").is_err());
        assert!(norm().normalize("email:x", "a@b.cn").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(kind in "(phone|email|openid|device|member|x_y)", v in "\\PC{0,40}") {
            let n = norm();
            if let Ok(Normalized::Value(k, once)) = n.normalize(&kind, &v) {
                prop_assert_eq!(n.normalize(&k, &once), Ok(Normalized::Value(k.clone(), once.clone())));
            }
        }

        #[test]
        fn the_fast_path_agrees_with_libphonenumber(d in "1[0-9]{10}", plus in any::<bool>()) {
            let raw = if plus { format!("+86{d}") } else { d.clone() };
            let slow = phonenumber::parse(Some(country::Id::CN), &raw)
                .ok()
                .filter(phonenumber::is_valid)
                .map(|n| n.format().mode(phonenumber::Mode::E164).to_string());
            if let Some(fast) = cn_mobile_fast(&raw, true) {
                prop_assert_eq!(Some(fast), slow.clone());
            }
            prop_assert_eq!(norm().phone(&raw).ok(), slow);
        }

        #[test]
        fn phone_forms_agree(d in "1[3589][0-9]{9}") {
            let n = norm();
            if let Ok(canon) = n.phone(&d) {
                let spaced = format!("+86 {}-{}-{}", &d[..3], &d[3..7], &d[7..]);
                prop_assert_eq!(n.phone(&spaced), Ok(canon.clone()));
                prop_assert_eq!(n.phone(&format!("86{d}")), Ok(canon.clone()));
                prop_assert_eq!(n.phone(&canon), Ok(canon.clone()));
            }
        }
    }
}
