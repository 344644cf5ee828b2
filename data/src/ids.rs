//! True identifiers: how each person's phone, email, unionid, openids, devices and member card
//! are minted, and the normalised form written to `truth.parquet`.
//!
//! Phones, member cards and emails are unique by construction (a seeded affine bijection of
//! the person index), so two persons never share one by accident: every shared value in the
//! output is deliberate noise (family devices, store phones, recycled numbers). Random ids
//! (unionid, openid, device) are 150+ random bits. How values are *written* on events
//! (formats, typos, junk) lives in `noise`.

use rand::Rng;

use crate::catalog::{FAMILY, GIVEN, PHONE_PREFIXES};

/// SplitMix64 finaliser: a bijection on `u64`, used to derive seeds and ids.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64 step of `x`: `mix64(x + golden gamma)`.
pub(crate) fn splitmix(x: u64) -> u64 {
    mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `x -> (a * x + b) mod m` with `gcd(a, m) = 1`: a bijection on `0..m`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Affine {
    a: u64,
    b: u64,
    m: u64,
}

impl Affine {
    fn new(m: u64, key: u64) -> Self {
        // A seeded odd multiplier, walked until coprime with m.
        let mut a = (mix64(key) % m).max(1) | 1;
        while gcd(a, m) != 1 {
            a = (a + 2) % m;
        }
        Affine {
            a,
            b: splitmix(key) % m,
            m,
        }
    }

    fn apply(&self, x: u64) -> u64 {
        ((u128::from(x) * u128::from(self.a) + u128::from(self.b)) % u128::from(self.m)) as u64
    }
}

/// An 11-digit Chinese mobile number, ASCII digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Phone(pub(crate) [u8; 11]);

impl Phone {
    /// From an index in the phone space `0..PHONE_SPACE` (prefix index * 1e8 + subscriber).
    fn from_index(x: u64) -> Phone {
        let prefix = PHONE_PREFIXES[(x / 100_000_000) as usize];
        let mut n = u64::from(prefix) * 100_000_000 + x % 100_000_000;
        let mut d = [b'0'; 11];
        for slot in d.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        Phone(d)
    }

    /// The store default phone of store `s` (1-based): `1390000` + four digits of `s`.
    pub(crate) fn store(s: u16) -> Phone {
        let mut d = *b"13900000000";
        let mut n = s;
        for slot in d[7..].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        Phone(d)
    }

    /// True for the numbers reserved for store default phones.
    pub(crate) fn is_store(&self) -> bool {
        &self.0[..7] == b"1390000"
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ever built from ASCII digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Normalised form: `+86` and the 11 digits.
    pub(crate) fn normalised(&self) -> String {
        let mut s = String::with_capacity(14);
        s.push_str("+86");
        s.push_str(self.as_str());
        s
    }
}

const PHONE_SPACE: u64 = PHONE_PREFIXES.len() as u64 * 100_000_000;
/// First index of `1390000xxxx` (139 is the last prefix).
const STORE_RANGE: std::ops::Range<u64> = (PHONE_SPACE - 100_000_000)..(PHONE_SPACE - 99_990_000);

/// Most persons a world can hold: phone ids `2 * person + variant` stay below the store range.
pub(crate) const MAX_PERSONS: u64 = 500_000_000;

/// Seeded bijections from person index to phone, member card and email numbers.
#[derive(Clone, Debug)]
pub(crate) struct IdSpace {
    phone: Affine,
    member: Affine,
    qq: Affine,
    name: Affine,
}

const NAME_COMBOS: u64 = (GIVEN.len() * FAMILY.len() * 2) as u64;

impl IdSpace {
    pub(crate) fn new(seed: u64, persons: u64) -> Self {
        let name_space = persons.max(1).div_ceil(NAME_COMBOS) * NAME_COMBOS;
        IdSpace {
            phone: Affine::new(PHONE_SPACE, seed ^ 0x5048_4f4e_4550),
            member: Affine::new(9_000_000_000, seed ^ 0x4d45_4d42_4552),
            qq: Affine::new(1_000_000_000, seed ^ 0x5151_5151),
            name: Affine::new(name_space, seed ^ 0x4e41_4d45),
        }
    }

    /// Phone `variant` (0 = own number, 1 = the new number of a person whose old one was
    /// recycled) of person `p`. Distinct for distinct `(p, variant)`, never a store phone.
    pub(crate) fn phone(&self, p: u64, variant: u64) -> Phone {
        // Cycle-walk so the bijection skips the store range (inputs are all below it).
        let mut x = 2 * p + variant;
        loop {
            x = self.phone.apply(x);
            if !STORE_RANGE.contains(&x) {
                return Phone::from_index(x);
            }
        }
    }

    /// Member card `M` + 10 digits.
    pub(crate) fn member(&self, p: u64) -> String {
        format!("M{}", 1_000_000_000 + self.member.apply(p))
    }

    /// Email address: a QQ number at qq.com, or `given.family<n>@domain` / `given_family<n>`,
    /// where (given, family, separator, n) is a bijection of `p` so addresses never collide.
    pub(crate) fn email(&self, p: u64, qq_style: bool, domain: &str) -> String {
        if qq_style {
            return format!("{}@qq.com", 100_000_000 + self.qq.apply(p));
        }
        let mut x = self.name.apply(p);
        let given = GIVEN[(x % GIVEN.len() as u64) as usize];
        x /= GIVEN.len() as u64;
        let family = FAMILY[(x % FAMILY.len() as u64) as usize];
        x /= FAMILY.len() as u64;
        let sep = if x.is_multiple_of(2) { "." } else { "_" };
        x /= 2;
        if x == 0 {
            format!("{given}{sep}{family}@{domain}")
        } else {
            format!("{given}{sep}{family}{x}@{domain}")
        }
    }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn push_random(rng: &mut impl Rng, out: &mut String, alphabet: &[u8], n: usize) {
    let mut bits = 0u64;
    let mut left = 0;
    for _ in 0..n {
        if left == 0 {
            bits = rng.random();
            left = 10;
        }
        out.push(char::from(alphabet[(bits & 63) as usize % alphabet.len()]));
        bits >>= 6;
        left -= 1;
    }
}

/// WeChat unionid: `o6_` + 25 base64url characters.
pub(crate) fn unionid(rng: &mut impl Rng) -> String {
    let mut s = String::with_capacity(28);
    s.push_str("o6_");
    push_random(rng, &mut s, B64URL, 25);
    s
}

/// Openid on `app`, written `<appid>:o` + 27 base64url characters.
pub(crate) fn openid(rng: &mut impl Rng, app: &str) -> String {
    let mut s = String::with_capacity(app.len() + 29);
    s.push_str(app);
    s.push_str(":o");
    push_random(rng, &mut s, B64URL, 27);
    s
}

/// Device id `dev-` + 16 lowercase hex digits.
pub(crate) fn device(rng: &mut impl Rng) -> String {
    format!("dev-{:016x}", rng.random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn phones_are_unique_valid_and_avoid_store_range() {
        let ids = IdSpace::new(7, 50_000);
        let mut seen = HashSet::new();
        for p in 0..50_000 {
            for v in 0..2 {
                let ph = ids.phone(p, v);
                assert!(!ph.is_store());
                let prefix: u16 = ph.as_str()[..3].parse().unwrap();
                assert!(PHONE_PREFIXES.contains(&prefix));
                assert!(seen.insert(ph));
            }
        }
        assert_eq!(Phone::store(7).as_str(), "13900000007");
        assert_eq!(Phone::store(200).as_str(), "13900000200");
    }

    #[test]
    fn members_and_emails_are_unique() {
        let ids = IdSpace::new(1, 20_000);
        let mut members = HashSet::new();
        let mut emails = HashSet::new();
        for p in 0..20_000 {
            let m = ids.member(p);
            assert_eq!(m.len(), 11);
            assert!(members.insert(m));
            assert!(emails.insert(ids.email(p, p % 3 == 0, "163.com")));
        }
    }
}
