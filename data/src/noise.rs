//! How identifier values are *written* on events: the phone format families, email case and
//! spaces, typos and junk values. Owns no decision of *when* noise happens beyond the
//! per-occurrence rates below; `activity` calls these while emitting events.
//!
//! Rates (per occurrence unless said otherwise):
//! - phone format: 70% plain `13800138000`, 30% one of `+86 138-0013-8000`, `8613800138000`,
//!   `+8613800138000`, `138 0013 8000`, `+86-138-0013-8000`, full-width `１３８００１３８０００`,
//!   `(+86) 13800138000`;
//! - phone typo 0.3%: one of the last eight digits changed (still a valid mobile number);
//! - email case/spaces 15%: `Wei.Zhang@QQ.com`, ` wei.zhang@qq.com `, upper case, or both;
//! - email typo 0.5%: a misspelt domain (`gmial.com`, `qq.con`, ...) or two swapped letters;
//! - junk values: see [`JUNK_PHONES`], [`JUNK_EMAILS`], [`JUNK_DEVICE`] (rate in `activity`).

use rand::Rng;

use crate::ids::Phone;

/// Share of phone occurrences written in a non-plain format.
pub(crate) const PHONE_FORMAT_RATE: f64 = 0.30;
/// Share of phone occurrences with a changed digit.
pub(crate) const PHONE_TYPO_RATE: f64 = 0.003;
/// Share of email occurrences with case or space noise.
pub(crate) const EMAIL_CASE_RATE: f64 = 0.15;
/// Share of email occurrences with a typo.
pub(crate) const EMAIL_TYPO_RATE: f64 = 0.005;

/// Junk written into phone fields.
pub(crate) const JUNK_PHONES: [&str; 5] = ["00000000000", "11111111111", "null", "N/A", "-"];
/// Junk written into email fields.
pub(crate) const JUNK_EMAILS: [&str; 3] = ["test@test.com", "null", "none@none.com"];
/// Junk written into device fields (a zeroed advertising id).
pub(crate) const JUNK_DEVICE: &str = "00000000-0000-0000-0000-000000000000";

/// Number of phone format families; family 0 is the plain 11 digits.
const PHONE_STYLES: u32 = 8;

/// Draws the format family of one phone occurrence.
pub(crate) fn phone_style(rng: &mut impl Rng) -> u8 {
    if rng.random_bool(PHONE_FORMAT_RATE) {
        rng.random_range(1..PHONE_STYLES) as u8
    } else {
        0
    }
}

/// Appends `phone` written in format family `style` (see the module doc).
pub(crate) fn write_phone(out: &mut String, phone: &Phone, style: u8) {
    let d = phone.as_str();
    let (a, b, c) = (&d[..3], &d[3..7], &d[7..]);
    match style {
        1 => {
            out.push_str("+86 ");
            push3(out, a, b, c, '-');
        }
        2 => {
            out.push_str("86");
            out.push_str(d);
        }
        3 => {
            out.push_str("+86");
            out.push_str(d);
        }
        4 => push3(out, a, b, c, ' '),
        5 => {
            out.push_str("+86-");
            push3(out, a, b, c, '-');
        }
        6 => {
            for ch in d.chars() {
                // Full-width digits U+FF10..U+FF19.
                let fw = char::from_u32(0xFF10 + (ch as u32 - '0' as u32)).unwrap_or(ch);
                out.push(fw);
            }
        }
        7 => {
            out.push_str("(+86) ");
            out.push_str(d);
        }
        _ => out.push_str(d),
    }
}

fn push3(out: &mut String, a: &str, b: &str, c: &str, sep: char) {
    out.push_str(a);
    out.push(sep);
    out.push_str(b);
    out.push(sep);
    out.push_str(c);
}

/// `phone` with one of its last eight digits changed; never a store default phone.
pub(crate) fn phone_typo(rng: &mut impl Rng, phone: &Phone) -> Phone {
    loop {
        let mut d = phone.0;
        let at = rng.random_range(3..11);
        let old = d[at] - b'0';
        let new = (old + rng.random_range(1..10u8)) % 10;
        d[at] = b'0' + new;
        let typo = Phone(d);
        if !typo.is_store() {
            return typo;
        }
    }
}

/// Appends `email` with case and/or space noise.
pub(crate) fn write_email_noisy(out: &mut String, rng: &mut impl Rng, email: &str) {
    let kind = rng.random_range(0..4u8);
    let spaces = kind == 1 || kind == 3;
    if spaces {
        out.push(' ');
    }
    match kind {
        // Capitalised words and an upper-case domain name: `Wei.Zhang12@QQ.com`.
        0 | 3 => {
            let (local, domain) = email.split_once('@').unwrap_or((email, ""));
            let mut start = true;
            for ch in local.chars() {
                out.push(if start { ch.to_ascii_uppercase() } else { ch });
                start = ch == '.' || ch == '_';
            }
            out.push('@');
            let (name, tld) = domain.split_once('.').unwrap_or((domain, ""));
            out.push_str(&name.to_ascii_uppercase());
            out.push('.');
            out.push_str(tld);
        }
        2 => out.push_str(&email.to_ascii_uppercase()),
        _ => out.push_str(email),
    }
    if spaces {
        out.push(' ');
    }
}

/// `email` with a typo: a misspelt domain when there is a classic one, else two swapped
/// adjacent letters of the local part. Always differs from `email`.
pub(crate) fn email_typo(rng: &mut impl Rng, email: &str) -> String {
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let misspelt = match domain {
        "gmail.com" => Some("gmial.com"),
        "qq.com" => Some("qq.con"),
        "163.com" => Some("163.cm"),
        "126.com" => Some("126.con"),
        "outlook.com" => Some("outlok.com"),
        "foxmail.com" => Some("foxmial.com"),
        "sina.com" => Some("sian.com"),
        _ => None,
    };
    if let Some(bad) = misspelt
        && rng.random_bool(0.6)
    {
        return format!("{local}@{bad}");
    }
    let b = local.as_bytes();
    let pairs: Vec<usize> = (0..b.len().saturating_sub(1))
        .filter(|&i| b[i] != b[i + 1])
        .collect();
    if pairs.is_empty() {
        return format!("{local}@{}", misspelt.unwrap_or("example.con"));
    }
    let i = pairs[rng.random_range(0..pairs.len())];
    let mut swapped = b.to_vec();
    swapped.swap(i, i + 1);
    let swapped = String::from_utf8(swapped).unwrap_or_else(|_| local.to_owned());
    format!("{swapped}@{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn phone_formats() {
        let p = Phone(*b"13800138000");
        let all: Vec<String> = (0..8)
            .map(|s| {
                let mut o = String::new();
                write_phone(&mut o, &p, s);
                o
            })
            .collect();
        assert_eq!(
            all,
            [
                "13800138000",
                "+86 138-0013-8000",
                "8613800138000",
                "+8613800138000",
                "138 0013 8000",
                "+86-138-0013-8000",
                "１３８００１３８０００",
                "(+86) 13800138000",
            ]
        );
    }

    #[test]
    fn typos_differ() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let p = Phone(*b"13800138000");
        for _ in 0..100 {
            assert_ne!(phone_typo(&mut rng, &p), p);
            for e in ["wei.zhang1@gmail.com", "aa@example.cn", "123456789@qq.com"] {
                assert_ne!(email_typo(&mut rng, e), e);
            }
        }
    }

    #[test]
    fn email_noise_normalises_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let mut o = String::new();
            write_email_noisy(&mut o, &mut rng, "wei.zhang12@qq.com");
            assert_eq!(o.trim().to_lowercase(), "wei.zhang12@qq.com");
        }
    }
}
