//! The in-memory form of generated events and truth before encoding: compact [`Row`]s whose
//! string fields are [`Span`]s into one arena per unit, so emitting an event allocates
//! nothing. Encoding to Arrow, NDJSON and CSV lives in `encode`.

use crate::catalog::{Category, Channel, EventType, Level};

/// A slice of a unit's arena; `Span::NONE` is a null field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    pub(crate) const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };

    pub(crate) fn is_none(self) -> bool {
        self.start == u32::MAX
    }

    /// Appends `s` to `arena` and returns its span.
    pub(crate) fn push(arena: &mut String, s: &str) -> Span {
        let start = arena.len() as u32;
        arena.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    /// The span of everything appended to `arena` since `start`.
    pub(crate) fn since(arena: &str, start: usize) -> Span {
        Span {
            start: start as u32,
            len: (arena.len() - start) as u32,
        }
    }

    /// The text of the span, `None` for a null field.
    pub(crate) fn get(self, arena: &str) -> Option<&str> {
        if self.is_none() {
            return None;
        }
        let start = self.start as usize;
        arena.get(start..start + self.len as usize)
    }
}

/// What a product page shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Page {
    None,
    /// `/p/SKU-...` of the row's sku.
    Product,
    /// `/c/<category>` of the row's category.
    Category,
}

/// One event. Zero means "absent" for `sku`, `amount_cents`, `store`, `campaign`, `coupon`.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// Sort key within the unit: when the event reached the collector (a retried duplicate
    /// arrives later than its event time).
    pub(crate) arrival: i64,
    /// The true person (never written out; for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) person: u64,
    pub(crate) id: u64,
    pub(crate) time: i64,
    pub(crate) channel: Channel,
    pub(crate) event_type: EventType,
    pub(crate) phone: Span,
    pub(crate) email: Span,
    pub(crate) unionid: Span,
    pub(crate) openid: Span,
    pub(crate) device: Span,
    pub(crate) member: Span,
    pub(crate) category: Option<Category>,
    pub(crate) sku: u32,
    pub(crate) amount_cents: u32,
    pub(crate) store: u16,
    /// `yyyymm * 100 + k`, written `C202610-03`.
    pub(crate) campaign: u32,
    pub(crate) page: Page,
    pub(crate) level: Option<Level>,
    pub(crate) city: Option<u8>,
    /// `yyyymm * 100 + k`, written `CP202610-03`.
    pub(crate) coupon: u32,
}

impl Row {
    pub(crate) fn new(
        person: u64,
        id: u64,
        time: i64,
        channel: Channel,
        event_type: EventType,
    ) -> Row {
        Row {
            arrival: time,
            person,
            id,
            time,
            channel,
            event_type,
            phone: Span::NONE,
            email: Span::NONE,
            unionid: Span::NONE,
            openid: Span::NONE,
            device: Span::NONE,
            member: Span::NONE,
            category: None,
            sku: 0,
            amount_cents: 0,
            store: 0,
            campaign: 0,
            page: Page::None,
            level: None,
            city: None,
            coupon: 0,
        }
    }
}

/// Kinds of identifiers in `truth.parquet`, in the order truth rows are sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum IdKind {
    Device,
    Email,
    Member,
    Openid,
    Phone,
    Unionid,
}

impl IdKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IdKind::Device => "device",
            IdKind::Email => "email",
            IdKind::Member => "member",
            IdKind::Openid => "openid",
            IdKind::Phone => "phone",
            IdKind::Unionid => "unionid",
        }
    }
}

/// One truth row: `value` (normalised, in the unit's truth arena) belongs to `person`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TruthEntry {
    pub(crate) kind: IdKind,
    pub(crate) value: Span,
    pub(crate) person: u64,
    /// Evidence group within the person (see `activity`).
    pub(crate) group: u8,
}

/// Everything generated for one unit of persons.
#[derive(Debug, Default)]
pub(crate) struct Unit {
    /// Persons in the unit.
    pub(crate) persons: u64,
    /// Events in generation order.
    pub(crate) rows: Vec<Row>,
    /// Output order: indexes into `rows`, set by `finish`.
    pub(crate) order: Vec<u32>,
    pub(crate) arena: String,
    /// Truth rows in output order: by person, then kind, then value.
    pub(crate) truth: Vec<TruthEntry>,
    pub(crate) truth_arena: String,
}

impl Unit {
    /// Puts the events in output order: by arrival, ties by generation order.
    /// Fixes the output order: by arrival, ties by generation order; a retried duplicate
    /// never lands right after its original.
    pub(crate) fn finish(&mut self) {
        let mut keys: Vec<(i64, u32)> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.arrival, i as u32))
            .collect();
        keys.sort_unstable();
        let mut order: Vec<u32> = keys.into_iter().map(|k| k.1).collect();
        let n = order.len();
        for i in 1..n {
            if self.rows[order[i] as usize].id == self.rows[order[i - 1] as usize].id {
                if i + 1 < n {
                    order.swap(i, i + 1);
                } else if i >= 2 {
                    order.swap(i - 1, i - 2);
                }
            }
        }
        self.order = order;
    }

    /// The events in output order (after `finish`).
    pub(crate) fn ordered(&self) -> impl Iterator<Item = &Row> + '_ {
        self.order.iter().map(|&i| &self.rows[i as usize])
    }
}
