//! Who the persons are. Each person's profile (identifiers, registered channel, level, city,
//! tastes, activity level) is drawn from the person's own RNG, seeded from `(seed, index)`.
//! The few structures that span persons are derived from the seed alone, so any unit of
//! persons can be generated on its own, on any thread:
//! - households (~5% of persons, 2–5 members sharing a tablet and a city) are formed inside
//!   each unit of [`UNIT_PERSONS`] consecutive persons from the unit's own RNG;
//! - recycled phones (~0.5% of persons): old owner `p` hands its number to `p + persons / 2`
//!   (mod persons) on a switch day in the middle of the window, then uses a new number.
//!
//! Event emission lives in `activity`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::catalog::{CITIES, Category, Channel, Level, MARKETPLACES, REGISTER_CHANNELS, STORES};
use crate::ids::{self, IdSpace, Phone, mix64, splitmix};

/// Persons per unit of work: the grain of parallelism, of household formation and of the
/// time-ordered runs in the output. A constant, so output never depends on thread count.
pub(crate) const UNIT_PERSONS: u64 = 1024;

pub(crate) const DAY_MS: i64 = 86_400_000;
/// China Standard Time, the zone of all generated activity.
pub(crate) const TZ_OFFSET_MS: i64 = 8 * 3_600_000;

/// Share of persons living in a household that shares a tablet.
const HOUSEHOLD_RATE: f64 = 0.05;
/// Per-mille of persons whose phone number is recycled to another person.
const RECYCLE_PER_MILLE: u64 = 5;

const SALT_HOUSEHOLD: u64 = 0x686f_7573_6568_6f6c;
const SALT_RECYCLE: u64 = 0x7265_6379_636c_6521;

/// Weighted pick: index into `weights`.
pub(crate) fn pick(rng: &mut impl Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    if total == 0 {
        return 0;
    }
    let mut x = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// The generated world: parameters every unit needs.
#[derive(Clone, Debug)]
pub(crate) struct World {
    pub(crate) seed: u64,
    pub(crate) persons: u64,
    pub(crate) days: u32,
    /// First instant of the window (local midnight of the first day), UTC ms.
    pub(crate) start_ms: i64,
    /// End of the window (exclusive), UTC ms.
    pub(crate) end_ms: i64,
    pub(crate) ids: IdSpace,
    /// Key mixed into event ids.
    pub(crate) id_key: u64,
}

/// A person's part in a recycled phone number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recycle {
    None,
    /// Uses its number before `switch_ms`, a new number after.
    OldOwner {
        switch_ms: i64,
    },
    /// Gets person `from`'s number and is active only from `switch_ms`.
    NewOwner {
        from: u64,
        switch_ms: i64,
    },
}

/// A household sharing one tablet.
#[derive(Clone, Debug)]
pub(crate) struct Household {
    pub(crate) tablet: String,
    pub(crate) city: u8,
}

impl World {
    pub(crate) fn new(seed: u64, persons: u64, days: u32, last_day: chrono::NaiveDate) -> Self {
        let first_day = last_day - chrono::Days::new(u64::from(days.saturating_sub(1)));
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        let start_ms = (first_day - epoch).num_days() * DAY_MS - TZ_OFFSET_MS;
        World {
            seed,
            persons,
            days,
            start_ms,
            end_ms: start_ms + i64::from(days) * DAY_MS,
            ids: IdSpace::new(seed, persons),
            id_key: splitmix(seed ^ 0x6576_656e_7473),
        }
    }

    /// The person's own RNG: depends on `(seed, index)` only.
    pub(crate) fn person_rng(&self, p: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed ^ splitmix(p))
    }

    fn recycle_flag(&self, p: u64) -> bool {
        mix64(self.seed ^ SALT_RECYCLE ^ splitmix(p)) % 1000 < RECYCLE_PER_MILLE
    }

    fn recycle_offset(&self) -> u64 {
        self.persons / 2
    }

    fn is_old_owner(&self, p: u64) -> bool {
        let k = self.recycle_offset();
        k > 0 && self.recycle_flag(p) && !self.recycle_flag((p + self.persons - k) % self.persons)
    }

    fn switch_ms(&self, old: u64) -> i64 {
        let days = u64::from(self.days);
        let lo = days * 3 / 10;
        let span = days * 4 / 10 + 1;
        let day = lo + mix64(self.seed ^ SALT_RECYCLE ^ old) % span;
        self.start_ms + day as i64 * DAY_MS
    }

    /// Person `p`'s part in a recycled number. An old owner's receiver is never an old owner
    /// itself, so the pairs are disjoint.
    pub(crate) fn recycle(&self, p: u64) -> Recycle {
        let k = self.recycle_offset();
        if k == 0 {
            return Recycle::None;
        }
        if self.is_old_owner(p) {
            return Recycle::OldOwner {
                switch_ms: self.switch_ms(p),
            };
        }
        let from = (p + self.persons - k) % self.persons;
        if self.is_old_owner(from) {
            return Recycle::NewOwner {
                from,
                switch_ms: self.switch_ms(from),
            };
        }
        Recycle::None
    }

    /// Households of the unit starting at person `first` with `len` persons: for each person
    /// of the unit its household, if any.
    pub(crate) fn households(&self, first: u64, len: usize) -> (Vec<Option<u32>>, Vec<Household>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ SALT_HOUSEHOLD ^ splitmix(first));
        let mut member_of = vec![None; len];
        let mut households = Vec::new();
        let target = (len as f64 * HOUSEHOLD_RATE).round() as usize;
        let mut order: Vec<usize> = (0..len).collect();
        let city_weights = CITIES.map(|c| c.1);
        let mut taken = 0;
        while taken + 2 <= target {
            let size = rng.random_range(2..=5usize).min(len - taken);
            let hh = households.len() as u32;
            for _ in 0..size {
                // Partial Fisher-Yates: draw an untaken person.
                let j = rng.random_range(taken..len);
                order.swap(taken, j);
                member_of[order[taken]] = Some(hh);
                taken += 1;
            }
            households.push(Household {
                tablet: ids::device(&mut rng),
                city: pick(&mut rng, &city_weights) as u8,
            });
        }
        (member_of, households)
    }
}

/// Kinds of sessions a person has; each maps to channels and a funnel in `activity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionKind {
    Marketplace,
    AdLed,
    Mini,
    OfficialAccount,
    Store,
    Crm,
    Service,
}

impl SessionKind {
    pub(crate) const ALL: [SessionKind; 7] = [
        SessionKind::Marketplace,
        SessionKind::AdLed,
        SessionKind::Mini,
        SessionKind::OfficialAccount,
        SessionKind::Store,
        SessionKind::Crm,
        SessionKind::Service,
    ];
}

/// One person: true identifiers and traits.
#[derive(Clone, Debug)]
pub(crate) struct Person {
    pub(crate) index: u64,
    /// Own number (for a new owner: the recycled number).
    pub(crate) phone: Option<Phone>,
    /// Old owners: the new number used from the switch on.
    pub(crate) phone2: Option<(Phone, i64)>,
    pub(crate) email: Option<String>,
    pub(crate) unionid: Option<String>,
    pub(crate) openid_mini: Option<String>,
    pub(crate) openid_oa: Option<String>,
    pub(crate) devices: Vec<String>,
    pub(crate) tablet: Option<String>,
    pub(crate) member: Option<String>,
    pub(crate) registered: Channel,
    pub(crate) level: Level,
    pub(crate) city: u8,
    pub(crate) stores: [u16; 2],
    pub(crate) favourite: [Category; 2],
    pub(crate) marketplace: Channel,
    pub(crate) session_weights: [u32; 7],
    pub(crate) sessions: u32,
    /// Active span, UTC ms: `[first, last)`.
    pub(crate) active: (i64, i64),
}

/// Share of persons with no session at all (just `register` and `profile_update`).
const DORMANT_RATE: f64 = 0.10;
/// Lomax tail of the session count: shape and scale (mean ≈ 1 + SCALE / (SHAPE - 1)).
const SESSIONS_SHAPE: f64 = 1.7;
const SESSIONS_SCALE: f64 = 2.9;
const MAX_SESSIONS: u32 = 1500;

impl Person {
    pub(crate) fn draw(
        world: &World,
        index: u64,
        rng: &mut ChaCha8Rng,
        household: Option<&Household>,
    ) -> Person {
        let recycle = world.recycle(index);
        let reg_weights = REGISTER_CHANNELS.map(|c| c.1);
        let registered = REGISTER_CHANNELS[pick(rng, &reg_weights)].0;
        let wechat_registered =
            matches!(registered, Channel::Miniprogram | Channel::OfficialAccount);

        let mut has_phone = rng.random_bool(0.9) || recycle != Recycle::None;
        let mut has_email = rng.random_bool(0.4);
        if matches!(registered, Channel::Crm | Channel::Service) && !has_phone && !has_email {
            has_phone = true;
        }
        // 37% register on WeChat; the rest get a unionid so that ~60% of persons have one.
        let has_unionid = wechat_registered || rng.random_bool(0.365);
        let mut has_member = rng.random_bool(0.29);
        if registered == Channel::Pos && !has_phone {
            has_member = true;
        }
        if !has_phone && !has_email && !has_member && !has_unionid {
            // Reachable by devices only; still give half of them an email.
            has_email = rng.random_bool(0.5);
        }

        let (phone, phone2) = match recycle {
            Recycle::None => (has_phone.then(|| world.ids.phone(index, 0)), None),
            Recycle::OldOwner { switch_ms } => (
                Some(world.ids.phone(index, 0)),
                Some((world.ids.phone(index, 1), switch_ms)),
            ),
            Recycle::NewOwner { from, .. } => (Some(world.ids.phone(from, 0)), None),
        };
        let email = has_email.then(|| {
            let qq_style = rng.random_bool(0.25);
            let w = crate::catalog::EMAIL_DOMAINS.map(|d| d.1);
            let domain = crate::catalog::EMAIL_DOMAINS[pick(rng, &w)].0;
            world.ids.email(index, qq_style, domain)
        });
        let unionid = has_unionid.then(|| ids::unionid(rng));
        let (mut uses_mini, uses_oa) = if has_unionid {
            (
                registered == Channel::Miniprogram || rng.random_bool(0.75),
                registered == Channel::OfficialAccount || rng.random_bool(0.45),
            )
        } else {
            (false, false)
        };
        if has_unionid && !uses_mini && !uses_oa {
            uses_mini = true;
        }
        let openid_mini = uses_mini.then(|| ids::openid(rng, crate::catalog::MINI_APP));
        let openid_oa = uses_oa.then(|| ids::openid(rng, crate::catalog::OA_APP));
        let n_devices = 1 + pick(rng, &[55, 33, 12]);
        let devices = (0..n_devices).map(|_| ids::device(rng)).collect();
        let member = has_member.then(|| world.ids.member(index));

        let level = Level::ALL[pick(rng, &Level::WEIGHTS)];
        let city_weights = CITIES.map(|c| c.1);
        let own_city = pick(rng, &city_weights) as u8;
        let city = household.map_or(own_city, |h| h.city);
        let per_city = STORES / CITIES.len() as u16;
        let store = |k: u16| u16::from(city) + 1 + CITIES.len() as u16 * k;
        let first_store = rng.random_range(0..per_city);
        let second_store = (first_store + rng.random_range(1..per_city)) % per_city;
        let stores = [store(first_store), store(second_store)];

        let first = Category::ALL[pick(rng, &Category::WEIGHTS)];
        let mut second_weights = Category::WEIGHTS;
        second_weights[first.index() as usize] = 0;
        let favourite = [first, Category::ALL[pick(rng, &second_weights)]];

        let mp_weights = MARKETPLACES.map(|c| c.1);
        let marketplace = if registered.is_marketplace() {
            registered
        } else {
            MARKETPLACES[pick(rng, &mp_weights)].0
        };

        let mut session_weights = [0u32; 7];
        for (i, kind) in SessionKind::ALL.iter().enumerate() {
            let base: f64 = match kind {
                SessionKind::Marketplace => 30.0,
                SessionKind::AdLed => 10.0,
                SessionKind::Mini if uses_mini => 30.0,
                SessionKind::OfficialAccount if uses_oa => 10.0,
                SessionKind::Store => 20.0,
                SessionKind::Crm if has_phone || has_email => 5.0,
                SessionKind::Service if has_phone || has_email => 3.0,
                _ => 0.0,
            };
            let home = match kind {
                SessionKind::Marketplace => registered.is_marketplace(),
                SessionKind::Mini => registered == Channel::Miniprogram,
                SessionKind::OfficialAccount => registered == Channel::OfficialAccount,
                SessionKind::Store => registered == Channel::Pos,
                SessionKind::Crm => registered == Channel::Crm,
                SessionKind::Service => registered == Channel::Service,
                SessionKind::AdLed => false,
            };
            let taste = (normal(rng) * 0.8).exp();
            let w = base * taste * if home { 3.0 } else { 1.0 };
            session_weights[i] = (w * 100.0) as u32;
        }

        let sessions = if rng.random_bool(DORMANT_RATE) {
            0
        } else {
            let u: f64 = 1.0 - rng.random::<f64>();
            let tail = SESSIONS_SCALE * (u.powf(-1.0 / SESSIONS_SHAPE) - 1.0);
            (1.0 + tail).min(f64::from(MAX_SESSIONS)) as u32
        };

        // A recycled number's old owner starts before the switch and the new owner after,
        // so both use it.
        let days = i64::from(world.days);
        let switch_day = |ms: i64| (ms - world.start_ms) / DAY_MS;
        let (lo_day, hi_day) = match recycle {
            Recycle::NewOwner { switch_ms, .. } => (switch_day(switch_ms), days),
            Recycle::OldOwner { switch_ms } => (0, switch_day(switch_ms).max(1)),
            Recycle::None => (0, days),
        };
        let sessions = if matches!(recycle, Recycle::OldOwner { .. }) {
            sessions.max(3)
        } else {
            sessions
        };
        let u: f64 = rng.random();
        let first_day = lo_day + ((hi_day - lo_day) as f64 * u.powf(1.5)) as i64;
        let first_day = first_day.min(days - 1);
        let last_day = if rng.random_bool(0.7) {
            days - 1
        } else {
            rng.random_range(first_day..days)
        };
        let active = (
            world.start_ms + first_day * DAY_MS,
            world.start_ms + (last_day + 1) * DAY_MS,
        );

        Person {
            index,
            phone,
            phone2,
            email,
            unionid,
            openid_mini,
            openid_oa,
            devices,
            tablet: household.map(|h| h.tablet.clone()),
            member,
            registered,
            level,
            city,
            stores,
            favourite,
            marketplace,
            session_weights,
            sessions,
            active,
        }
    }
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
