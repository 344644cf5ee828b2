//! What persons do: turns each [`Person`] into events (a `register`, one or more
//! `profile_update`s, then power-law many sessions) and records which of the person's true
//! identifiers those events carry, which becomes the person's truth rows.
//!
//! Sessions follow funnels (`ad_click` → `page_view` → `add_to_cart` → `purchase`;
//! `store_visit` → `purchase`; `coupon_claim`; `lead`) and carry the identifiers their
//! channel sees: pos → phone and/or member + store; miniprogram → mini openid + unionid,
//! sometimes phone/member; official_account → OA openid + unionid; marketplaces → phone
//! and/or device; ad → device; crm/service → phone and/or email. `register` and
//! `profile_update` carry the channel's full profile, which links a person's identifiers.
//!
//! Event-level noise (rates per event): junk value 1%; retried duplicate 0.2% (same
//! `event_id`, arriving 1 hour–3 days later, never adjacent to the original); store default
//! phone on 3% of pos events, and on every pos event of a shopper with neither phone nor
//! member card. Family tablets appear on ~40% of ad and tmall sessions of household members.
//! Value noise (formats, case, typos) is in `noise`.
//!
//! Truth is what was observed: a person's truth rows are the true identifiers that appear on
//! at least one of their events (normalised), plus the typo'd values they produced. Junk
//! values and store phones are never truth. An identifier a person owns but never used is
//! left out, since no resolver could place it. Each row also carries its evidence group:
//! values of one person are in one group when the person's own events link them, directly
//! or through a chain (store phones and junk never link). Two groups of one person share
//! no event, so no resolver can join them without outside knowledge.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::catalog::{
    CITIES, Category, Channel, EventType, HOUR_WEIGHTS, ITEMS_PER_CATEGORY, Level, MARKETPLACES,
};
use crate::event::{IdKind, Page, Row, Span, TruthEntry, Unit};
use crate::ids::{Phone, mix64};
use crate::noise;
use crate::population::{DAY_MS, Person, SessionKind, TZ_OFFSET_MS, UNIT_PERSONS, World, pick};

/// Share of events with one junk identifier value.
const JUNK_RATE: f64 = 0.01;
/// Share of events delivered twice.
const DUPLICATE_RATE: f64 = 0.002;
/// Share of pos events where the cashier typed the store's default phone.
const STORE_PHONE_RATE: f64 = 0.03;

const HOUR_MS: i64 = 3_600_000;

/// Generates unit `unit_index` (persons `unit_index * UNIT_PERSONS ..`): events in output
/// order and truth rows.
pub(crate) fn generate_unit(world: &World, unit_index: u64) -> Unit {
    let first = unit_index * UNIT_PERSONS;
    let len = UNIT_PERSONS.min(world.persons - first) as usize;
    let (member_of, households) = world.households(first, len);
    let mut unit = Unit {
        persons: len as u64,
        rows: Vec::with_capacity(len * 14),
        order: Vec::new(),
        arena: String::with_capacity(len * 14 * 40),
        truth: Vec::with_capacity(len * 6),
        truth_arena: String::with_capacity(len * 6 * 30),
    };
    for (i, hh) in member_of.iter().enumerate() {
        let p = first + i as u64;
        let mut rng = world.person_rng(p);
        let household = hh.map(|h| &households[h as usize]);
        let person = Person::draw(world, p, &mut rng, household);
        let mut em = Emitter {
            w: world,
            p: &person,
            rng: &mut rng,
            unit: &mut unit,
            n: 0,
            used: 0,
            typos: Vec::new(),
            event_bits: 0,
            links: std::array::from_fn(|i| i as u8),
            junk: None,
        };
        em.run();
        em.flush_truth();
    }
    unit.finish();
    unit
}

/// Bits of `Emitter::used`: which true identifiers appeared on some event.
const USED_PHONE: u16 = 1;
const USED_PHONE2: u16 = 1 << 1;
const USED_EMAIL: u16 = 1 << 2;
const USED_UNIONID: u16 = 1 << 3;
const USED_MINI: u16 = 1 << 4;
const USED_OA: u16 = 1 << 5;
const USED_TABLET: u16 = 1 << 6;
const USED_MEMBER: u16 = 1 << 7;
const USED_DEVICE0: u16 = 1 << 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Junk {
    Phone,
    Email,
    Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PhoneSrc {
    Own,
    Store(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceRef {
    Own(usize),
    Tablet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum App {
    Mini,
    OfficialAccount,
}

/// The identifiers one event (or a whole session) carries.
#[derive(Clone, Copy, Debug, Default)]
struct Ids {
    phone: Option<PhoneSrc>,
    email: bool,
    unionid: bool,
    openid: Option<App>,
    device: Option<DeviceRef>,
    member: bool,
    store: u16,
}

struct Emitter<'a> {
    w: &'a World,
    p: &'a Person,
    rng: &'a mut ChaCha8Rng,
    unit: &'a mut Unit,
    /// Events emitted for this person so far (duplicates excluded).
    n: u32,
    used: u16,
    typos: Vec<(IdKind, String)>,
    junk: Option<Junk>,
    /// Own identifiers on the event being built: the `USED_*` bits, and bit
    /// `TYPO_BIT0 + i` for the person's `i`-th typo'd value.
    event_bits: u64,
    /// Union-find over those bits: values the person's own events link.
    links: [u8; 64],
}

/// The first bit of typo'd values in [`Emitter::event_bits`].
const TYPO_BIT0: u32 = 16;

impl Emitter<'_> {
    /// Records that the event being built carries own identifier `bit`.
    fn mark(&mut self, bit: u16) {
        self.used |= bit;
        self.event_bits |= u64::from(bit);
    }

    /// Records a typo'd value on the event being built.
    fn mark_typo(&mut self, kind: IdKind, value: String) {
        let i = self.typos.len() as u32;
        self.typos.push((kind, value));
        if TYPO_BIT0 + i < 64 {
            self.event_bits |= 1 << (TYPO_BIT0 + i);
        }
    }

    fn root(&mut self, mut x: u8) -> u8 {
        while self.links[x as usize] != x {
            x = self.links[x as usize];
        }
        x
    }

    /// Links every own value of the event just built.
    fn link_event(&mut self) {
        let bits = std::mem::take(&mut self.event_bits);
        let first = bits.trailing_zeros();
        if first >= 64 {
            return;
        }
        let a = self.root(first as u8);
        let mut rest = bits & (bits - 1);
        while rest != 0 {
            let b = self.root(rest.trailing_zeros() as u8);
            if a != b {
                let (lo, hi) = (a.min(b), a.max(b));
                self.links[hi as usize] = lo;
            }
            rest &= rest - 1;
        }
    }

    /// The evidence group of own-identifier bit `bit`: the smallest bit its events link it to.
    fn group(&mut self, bit: u32) -> u8 {
        if bit >= 64 {
            // Past the tracked typos: a group of its own.
            return u8::MAX;
        }
        let mut r = self.root(bit as u8);
        // Roots may move as later links land on lower bits; follow to the end.
        while self.links[r as usize] != r {
            r = self.links[r as usize];
        }
        r
    }

    fn run(&mut self) {
        let mut starts: Vec<(i64, SessionKind)> = (0..self.p.sessions)
            .map(|_| {
                let kind = SessionKind::ALL[pick(self.rng, &self.p.session_weights)];
                (self.session_time(kind == SessionKind::Store), kind)
            })
            .collect();
        starts.sort_unstable_by_key(|s| s.0);

        let register_at = match starts.first() {
            Some(&(t, _)) => t - self.rng.random_range(10_000..900_000),
            None => self.session_time(false),
        }
        .max(self.w.start_ms);
        self.register(register_at);
        self.profile_updates(register_at);
        for (t, kind) in starts {
            self.session(t, kind);
        }
    }

    // ---- time -----------------------------------------------------------------------

    /// A session start in the person's active span: weekends busier, evenings busiest.
    fn session_time(&mut self, store_hours: bool) -> i64 {
        let (from, to) = self.p.active;
        let first_day = (from - self.w.start_ms) / DAY_MS;
        let n_days = ((to - from) / DAY_MS).max(1);
        let mut day = first_day;
        for _ in 0..4 {
            day = first_day + self.rng.random_range(0..n_days);
            let local_day = (self.w.start_ms + TZ_OFFSET_MS) / DAY_MS + day;
            let weekday = (local_day + 3).rem_euclid(7); // 0 = Monday; 1970-01-01 was a Thursday
            if weekday >= 5 || self.rng.random_bool(0.8) {
                break;
            }
        }
        let hour = if store_hours {
            10 + pick(self.rng, &HOUR_WEIGHTS[10..22])
        } else {
            pick(self.rng, &HOUR_WEIGHTS)
        } as i64;
        self.w.start_ms + day * DAY_MS + hour * HOUR_MS + self.rng.random_range(0..HOUR_MS)
    }

    /// The time of the next event in a session, or `None` past the window.
    fn next_time(&mut self, t: i64) -> Option<i64> {
        let next = t + self.rng.random_range(5_000..240_000);
        (next < self.w.end_ms).then_some(next)
    }

    // ---- events ---------------------------------------------------------------------

    fn begin(&mut self, time: i64, channel: Channel, event_type: EventType) -> Row {
        let raw = (self.p.index << 24) | u64::from(self.n);
        self.n += 1;
        self.junk = if self.rng.random_bool(JUNK_RATE) {
            Some(match channel {
                Channel::Ad => Junk::Device,
                c if c.is_marketplace() && self.rng.random_bool(0.3) => Junk::Device,
                Channel::Crm | Channel::Service if self.rng.random_bool(0.5) => Junk::Email,
                _ => Junk::Phone,
            })
        } else {
            None
        };
        Row::new(
            self.p.index,
            mix64(raw ^ self.w.id_key),
            time,
            channel,
            event_type,
        )
    }

    fn push(&mut self, mut row: Row) {
        if let Some(junk) = self.junk.take() {
            let arena = &mut self.unit.arena;
            match junk {
                Junk::Phone => {
                    let v = noise::JUNK_PHONES[self.rng.random_range(0..noise::JUNK_PHONES.len())];
                    row.phone = Span::push(arena, v);
                }
                Junk::Email => {
                    let v = noise::JUNK_EMAILS[self.rng.random_range(0..noise::JUNK_EMAILS.len())];
                    row.email = Span::push(arena, v);
                }
                Junk::Device => row.device = Span::push(arena, noise::JUNK_DEVICE),
            }
        }
        if self.rng.random_bool(DUPLICATE_RATE) {
            let mut dup = row.clone();
            dup.arrival = row.time + self.rng.random_range(HOUR_MS..3 * DAY_MS);
            self.unit.rows.push(row);
            self.unit.rows.push(dup);
        } else {
            self.unit.rows.push(row);
        }
    }

    /// Sets the identifiers `ids` on `row`, with value noise.
    fn apply(&mut self, row: &mut Row, ids: &Ids) {
        self.event_bits = 0;
        self.apply_ids(row, ids);
        self.link_event();
    }

    fn apply_ids(&mut self, row: &mut Row, ids: &Ids) {
        let mut phone = ids.phone;
        if ids.store != 0 {
            row.store = ids.store;
            if self.rng.random_bool(STORE_PHONE_RATE) {
                phone = Some(PhoneSrc::Store(ids.store));
            }
        }
        if let Some(src) = phone {
            row.phone = self.put_phone(src, row.time);
        }
        if ids.email {
            row.email = self.put_email();
        }
        if ids.unionid
            && let Some(u) = &self.p.unionid
        {
            self.mark(USED_UNIONID);
            row.unionid = Span::push(&mut self.unit.arena, u);
        }
        if let Some(app) = ids.openid {
            let (value, bit) = match app {
                App::Mini => (&self.p.openid_mini, USED_MINI),
                App::OfficialAccount => (&self.p.openid_oa, USED_OA),
            };
            if let Some(v) = value {
                self.mark(bit);
                row.openid = Span::push(&mut self.unit.arena, v);
            }
        }
        if let Some(d) = ids.device {
            row.device = self.put_device(d);
        }
        if ids.member
            && let Some(m) = &self.p.member
        {
            self.mark(USED_MEMBER);
            row.member = Span::push(&mut self.unit.arena, m);
        }
    }

    fn put_phone(&mut self, src: PhoneSrc, time: i64) -> Span {
        if self.junk == Some(Junk::Phone) {
            self.junk = None;
            let v = noise::JUNK_PHONES[self.rng.random_range(0..noise::JUNK_PHONES.len())];
            return Span::push(&mut self.unit.arena, v);
        }
        let phone = match src {
            PhoneSrc::Store(s) => Phone::store(s),
            PhoneSrc::Own => {
                let (phone, bit) = match (self.p.phone2, self.p.phone) {
                    (Some((new, switch)), _) if time >= switch => (new, USED_PHONE2),
                    (_, Some(own)) => (own, USED_PHONE),
                    (_, None) => return Span::NONE,
                };
                if self.rng.random_bool(noise::PHONE_TYPO_RATE) {
                    let typo = noise::phone_typo(self.rng, &phone);
                    self.mark_typo(IdKind::Phone, typo.normalised());
                    typo
                } else {
                    self.mark(bit);
                    phone
                }
            }
        };
        let arena = &mut self.unit.arena;
        let start = arena.len();
        noise::write_phone(arena, &phone, noise::phone_style(self.rng));
        Span::since(arena, start)
    }

    fn put_email(&mut self) -> Span {
        if self.junk == Some(Junk::Email) {
            self.junk = None;
            let v = noise::JUNK_EMAILS[self.rng.random_range(0..noise::JUNK_EMAILS.len())];
            return Span::push(&mut self.unit.arena, v);
        }
        let p = self.p;
        let Some(email) = &p.email else {
            return Span::NONE;
        };
        if self.rng.random_bool(noise::EMAIL_TYPO_RATE) {
            let typo = noise::email_typo(self.rng, email);
            let span = Span::push(&mut self.unit.arena, &typo);
            self.mark_typo(IdKind::Email, typo);
            return span;
        }
        self.mark(USED_EMAIL);
        let arena = &mut self.unit.arena;
        if self.rng.random_bool(noise::EMAIL_CASE_RATE) {
            let start = arena.len();
            noise::write_email_noisy(arena, self.rng, email);
            Span::since(arena, start)
        } else {
            Span::push(arena, email)
        }
    }

    fn put_device(&mut self, d: DeviceRef) -> Span {
        if self.junk == Some(Junk::Device) {
            self.junk = None;
            return Span::push(&mut self.unit.arena, noise::JUNK_DEVICE);
        }
        let p = self.p;
        let (value, bit) = match d {
            DeviceRef::Tablet => match &p.tablet {
                Some(t) => (t, USED_TABLET),
                None => (&p.devices[0], USED_DEVICE0),
            },
            DeviceRef::Own(i) => {
                let i = i.min(p.devices.len() - 1);
                (&p.devices[i], USED_DEVICE0 << i)
            }
        };
        self.mark(bit);
        Span::push(&mut self.unit.arena, value)
    }

    // ---- identifiers per channel --------------------------------------------------------

    fn pick_device(&mut self, tablet_ok: bool) -> DeviceRef {
        if tablet_ok && self.p.tablet.is_some() && self.rng.random_bool(0.4) {
            return DeviceRef::Tablet;
        }
        DeviceRef::Own(pick(self.rng, &[60, 30, 10][..self.p.devices.len()]))
    }

    fn home_store(&mut self) -> u16 {
        self.p.stores[usize::from(self.rng.random_bool(0.25))]
    }

    /// Identifiers `channel` sees; `profile` for `register`/`profile_update` (the full
    /// profile the channel holds), otherwise a typical session.
    fn channel_ids(&mut self, channel: Channel, profile: bool) -> Ids {
        let p = self.p;
        let has_phone = p.phone.is_some();
        let mut ids = Ids::default();
        match channel {
            Channel::Pos => {
                ids.store = self.home_store();
                let (phone, member) = match (has_phone, p.member.is_some()) {
                    (true, true) if profile => (true, true),
                    (true, true) => match pick(self.rng, &[40, 30, 30]) {
                        0 => (true, false),
                        1 => (false, true),
                        _ => (true, true),
                    },
                    (a, b) => (a, b),
                };
                ids.phone = if phone {
                    Some(PhoneSrc::Own)
                } else if !member {
                    Some(PhoneSrc::Store(ids.store))
                } else {
                    None
                };
                ids.member = member;
            }
            Channel::Miniprogram => {
                ids.openid = Some(App::Mini);
                ids.unionid = true;
                let phone_rate = if profile { 0.8 } else { 0.3 };
                if has_phone && self.rng.random_bool(phone_rate) {
                    ids.phone = Some(PhoneSrc::Own);
                }
                ids.member = self.rng.random_bool(if profile { 0.5 } else { 0.1 });
            }
            Channel::OfficialAccount => {
                ids.openid = Some(App::OfficialAccount);
                ids.unionid = true;
            }
            Channel::Ad => ids.device = Some(self.pick_device(true)),
            Channel::Crm | Channel::Service => {
                let has_email = p.email.is_some();
                let (phone, email) = match (has_phone, has_email) {
                    (true, true) if profile => (true, true),
                    (true, true) => match pick(self.rng, &[30, 30, 40]) {
                        0 => (true, false),
                        1 => (false, true),
                        _ => (true, true),
                    },
                    (a, b) => (a, b),
                };
                ids.phone = phone.then_some(PhoneSrc::Own);
                ids.email = email;
                ids.member = profile && self.rng.random_bool(0.3);
            }
            marketplace => {
                let tablet_ok = marketplace == Channel::Tmall;
                if profile {
                    ids.phone = has_phone.then_some(PhoneSrc::Own);
                    ids.device = Some(DeviceRef::Own(0));
                } else if has_phone {
                    match pick(self.rng, &[45, 30, 25]) {
                        0 => ids.phone = Some(PhoneSrc::Own),
                        1 => ids.device = Some(self.pick_device(tablet_ok)),
                        _ => {
                            ids.phone = Some(PhoneSrc::Own);
                            ids.device = Some(self.pick_device(tablet_ok));
                        }
                    }
                } else {
                    ids.device = Some(self.pick_device(tablet_ok));
                }
            }
        }
        ids
    }

    // ---- lifecycle events -------------------------------------------------------------

    fn register(&mut self, t: i64) {
        let channel = self.p.registered;
        let ids = self.channel_ids(channel, true);
        let mut row = self.begin(t, channel, EventType::Register);
        self.apply(&mut row, &ids);
        self.push(row);
    }

    /// One or more profile updates after registering; the last carries the current level.
    fn profile_updates(&mut self, registered_at: i64) {
        let count = 1 + pick(self.rng, &[80, 15, 5]);
        let end_ms = self.w.end_ms;
        let mut times: Vec<i64> = (0..count)
            .map(|i| {
                if i == 0 && self.rng.random_bool(0.7) {
                    registered_at + self.rng.random_range(30_000..HOUR_MS)
                } else {
                    self.session_time(false).max(registered_at + 1_000)
                }
            })
            .map(|t| t.min(end_ms - 1))
            .collect();
        times.sort_unstable();
        let p = self.p;
        let mut channels = Vec::with_capacity(4);
        if p.openid_mini.is_some() {
            channels.push(Channel::Miniprogram);
        }
        if p.phone.is_some() || p.email.is_some() {
            channels.push(Channel::Crm);
            channels.push(Channel::Service);
        }
        if p.phone.is_some() || p.member.is_some() {
            channels.push(Channel::Pos);
        }
        if channels.is_empty() {
            channels.push(p.registered);
        }
        for (i, t) in times.iter().enumerate() {
            let level = if i + 1 == count || p.level == Level::Normal || self.rng.random_bool(0.5) {
                p.level
            } else {
                Level::ALL[self.rng.random_range(0..p.level as usize)]
            };
            let channel = channels[self.rng.random_range(0..channels.len())];
            let ids = self.channel_ids(channel, true);
            let mut row = self.begin(*t, channel, EventType::ProfileUpdate);
            self.apply(&mut row, &ids);
            row.level = Some(level);
            row.city = Some(p.city);
            self.push(row);
        }
    }

    // ---- sessions ---------------------------------------------------------------------

    fn session(&mut self, t: i64, kind: SessionKind) {
        match kind {
            SessionKind::Marketplace => {
                let channel = self.marketplace();
                let ids = self.channel_ids(channel, false);
                self.shop(t, channel, &ids, 0.30);
            }
            SessionKind::AdLed => self.ad_led(t),
            SessionKind::Mini => {
                let ids = self.channel_ids(Channel::Miniprogram, false);
                let mut t = t;
                if self.rng.random_bool(0.12) {
                    self.coupon(t, Channel::Miniprogram, &ids);
                    let Some(next) = self.next_time(t) else {
                        return;
                    };
                    t = next;
                }
                self.shop(t, Channel::Miniprogram, &ids, 0.30);
            }
            SessionKind::OfficialAccount => {
                let ids = self.channel_ids(Channel::OfficialAccount, false);
                let views = 1 + self.rng.random_range(0..2);
                let mut t = t;
                for _ in 0..views {
                    let cat = self.session_category();
                    let mut row = self.begin(t, Channel::OfficialAccount, EventType::PageView);
                    self.apply(&mut row, &ids);
                    row.category = Some(cat);
                    row.page = Page::Category;
                    self.push(row);
                    let Some(next) = self.next_time(t) else {
                        return;
                    };
                    t = next;
                }
                if self.rng.random_bool(0.25) {
                    self.coupon(t, Channel::OfficialAccount, &ids);
                }
            }
            SessionKind::Store => self.store_visit(t),
            SessionKind::Crm | SessionKind::Service => {
                let channel = if kind == SessionKind::Crm {
                    Channel::Crm
                } else {
                    Channel::Service
                };
                let ids = self.channel_ids(channel, false);
                if channel == Channel::Crm && self.rng.random_bool(0.4) {
                    self.coupon(t, channel, &ids);
                } else {
                    let mut row = self.begin(t, channel, EventType::Lead);
                    self.apply(&mut row, &ids);
                    if channel == Channel::Crm && self.rng.random_bool(0.5) {
                        row.campaign = self.campaign(t);
                    }
                    self.push(row);
                }
            }
        }
    }

    fn marketplace(&mut self) -> Channel {
        if self.rng.random_bool(0.6) {
            self.p.marketplace
        } else {
            let w = MARKETPLACES.map(|c| c.1);
            MARKETPLACES[pick(self.rng, &w)].0
        }
    }

    /// `ad_click`, then often a landing session on a marketplace or the mini-program.
    fn ad_led(&mut self, t: i64) {
        let device = self.pick_device(true);
        let ad = Ids {
            device: Some(device),
            ..Ids::default()
        };
        let mut row = self.begin(t, Channel::Ad, EventType::AdClick);
        self.apply(&mut row, &ad);
        row.campaign = self.campaign(t);
        self.push(row);
        if !self.rng.random_bool(0.6) {
            return;
        }
        let Some(t) = self.next_time(t) else { return };
        if self.p.openid_mini.is_some() && self.rng.random_bool(0.3) {
            let ids = self.channel_ids(Channel::Miniprogram, false);
            self.shop(t, Channel::Miniprogram, &ids, 0.35);
        } else {
            let channel = if device == DeviceRef::Tablet {
                Channel::Tmall
            } else {
                self.marketplace()
            };
            let phone =
                (self.p.phone.is_some() && self.rng.random_bool(0.5)).then_some(PhoneSrc::Own);
            let ids = Ids {
                device: Some(device),
                phone,
                ..Ids::default()
            };
            self.shop(t, channel, &ids, 0.35);
        }
    }

    /// `page_view`s, maybe `add_to_cart` (rate `cart`), maybe `purchase`.
    fn shop(&mut self, mut t: i64, channel: Channel, ids: &Ids, cart: f64) {
        let cat = self.session_category();
        let views = 1 + (self.rng.random::<f64>().ln() / 0.55f64.ln()).min(5.0) as u32;
        let mut last = (cat, 0u32);
        for v in 0..views {
            if v > 0 {
                let Some(next) = self.next_time(t) else {
                    return;
                };
                t = next;
            }
            let c = if self.rng.random_bool(0.8) {
                cat
            } else {
                Category::ALL[pick(self.rng, &Category::WEIGHTS)]
            };
            let mut row = self.begin(t, channel, EventType::PageView);
            self.apply(&mut row, ids);
            row.category = Some(c);
            if self.rng.random_bool(0.65) {
                row.sku = self.sku(c);
                row.page = Page::Product;
                last = (c, row.sku);
            } else {
                row.page = Page::Category;
            }
            self.push(row);
        }
        if !self.rng.random_bool(cart) {
            return;
        }
        let (c, mut sku) = last;
        if sku == 0 {
            sku = self.sku(c);
        }
        let Some(t) = self.next_time(t) else { return };
        let mut row = self.begin(t, channel, EventType::AddToCart);
        self.apply(&mut row, ids);
        row.category = Some(c);
        row.sku = sku;
        self.push(row);
        if self.rng.random_bool(0.5) {
            let Some(t) = self.next_time(t) else { return };
            self.purchase(t, channel, ids, c, sku);
        }
    }

    fn purchase(&mut self, t: i64, channel: Channel, ids: &Ids, c: Category, sku: u32) {
        let mut row = self.begin(t, channel, EventType::Purchase);
        self.apply(&mut row, ids);
        row.category = Some(c);
        row.sku = sku;
        let qty = 1 + pick(self.rng, &[85, 12, 3]) as u32;
        row.amount_cents = (self.price_cents(sku) * qty).min(300_000);
        self.push(row);
    }

    fn store_visit(&mut self, t: i64) {
        let ids = self.channel_ids(Channel::Pos, false);
        let mut row = self.begin(t, Channel::Pos, EventType::StoreVisit);
        self.apply(&mut row, &ids);
        self.push(row);
        if !self.rng.random_bool(0.6) {
            return;
        }
        let mut t = t;
        let items = 1 + usize::from(self.rng.random_bool(0.3));
        for _ in 0..items {
            let Some(next) = self.next_time(t) else {
                return;
            };
            t = next;
            let c = self.session_category();
            let sku = self.sku(c);
            self.purchase(t, Channel::Pos, &ids, c, sku);
        }
    }

    fn coupon(&mut self, t: i64, channel: Channel, ids: &Ids) {
        let mut row = self.begin(t, channel, EventType::CouponClaim);
        self.apply(&mut row, ids);
        row.coupon = yyyymm(t) * 100 + self.rng.random_range(1..=12);
        self.push(row);
    }

    fn campaign(&mut self, t: i64) -> u32 {
        yyyymm(t) * 100 + self.rng.random_range(1..=8)
    }

    // ---- products ---------------------------------------------------------------------

    fn session_category(&mut self) -> Category {
        match pick(self.rng, &[60, 25, 15]) {
            0 => self.p.favourite[0],
            1 => self.p.favourite[1],
            _ => Category::ALL[pick(self.rng, &Category::WEIGHTS)],
        }
    }

    /// A SKU of category `c`, popular items far more likely.
    fn sku(&mut self, c: Category) -> u32 {
        let u: f64 = self.rng.random();
        let item = (f64::from(ITEMS_PER_CATEGORY) * u.powf(2.5)) as u32;
        (c.index() + 1) * 100_000 + item.min(ITEMS_PER_CATEGORY - 1)
    }

    /// The unit price of `sku` in cents: fixed per (seed, sku), log-normal around the
    /// category median, rounded to 0.10 CNY, within 10–3000 CNY.
    fn price_cents(&self, sku: u32) -> u32 {
        let h = mix64(self.w.seed ^ 0x0070_7269_6365 ^ u64::from(sku));
        let u1 = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (mix64(h) >> 11) as f64 / (1u64 << 53) as f64;
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let cat = Category::ALL[(sku / 100_000 - 1) as usize % Category::ALL.len()];
        let price = cat.median_price_cents() * (0.6 * z).exp();
        ((price / 10.0).round() as u32 * 10).clamp(1_000, 300_000)
    }

    // ---- truth ------------------------------------------------------------------------

    /// Appends the person's truth rows: every true identifier that appeared on one of
    /// their events, plus the typo'd values they produced, sorted by (kind, value).
    fn flush_truth(&mut self) {
        let p = self.p;
        let used = self.used;
        // (kind, value, own-identifier bit)
        let mut rows: Vec<(IdKind, String, u32)> = std::mem::take(&mut self.typos)
            .into_iter()
            .enumerate()
            .map(|(i, (kind, value))| (kind, value, TYPO_BIT0 + i as u32))
            .collect();
        let mut add = |bit: u16, kind: IdKind, value: Option<&str>| {
            if used & bit != 0
                && let Some(v) = value
            {
                rows.push((kind, v.to_owned(), bit.trailing_zeros()));
            }
        };
        add(USED_EMAIL, IdKind::Email, p.email.as_deref());
        add(USED_UNIONID, IdKind::Unionid, p.unionid.as_deref());
        add(USED_MINI, IdKind::Openid, p.openid_mini.as_deref());
        add(USED_OA, IdKind::Openid, p.openid_oa.as_deref());
        add(USED_TABLET, IdKind::Device, p.tablet.as_deref());
        add(USED_MEMBER, IdKind::Member, p.member.as_deref());
        for (i, d) in p.devices.iter().enumerate() {
            add(USED_DEVICE0 << i, IdKind::Device, Some(d));
        }
        if used & USED_PHONE != 0
            && let Some(ph) = p.phone
        {
            rows.push((IdKind::Phone, ph.normalised(), USED_PHONE.trailing_zeros()));
        }
        if used & USED_PHONE2 != 0
            && let Some((ph, _)) = p.phone2
        {
            rows.push((IdKind::Phone, ph.normalised(), USED_PHONE2.trailing_zeros()));
        }
        let mut rows: Vec<(IdKind, String, u8)> = rows
            .into_iter()
            .map(|(kind, value, bit)| (kind, value, self.group(bit)))
            .collect();
        rows.sort_unstable();
        // A value written twice (a typo equal to another value) keeps its first group.
        rows.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
        for (kind, value, group) in rows {
            let value = Span::push(&mut self.unit.truth_arena, &value);
            self.unit.truth.push(TruthEntry {
                kind,
                value,
                person: p.index,
                group,
            });
        }
    }
}

/// The local (UTC+8) civil date of `t` (UTC ms) as `yyyymm`.
pub(crate) fn yyyymm(t: i64) -> u32 {
    let (y, m, _) = civil_from_days((t + TZ_OFFSET_MS).div_euclid(DAY_MS));
    (y * 100 + m as i64) as u32
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// City name of a city index.
pub(crate) fn city_name(city: u8) -> &'static str {
    CITIES[usize::from(city) % CITIES.len()].0
}
