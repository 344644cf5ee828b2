//! The tree of a segment expression, shared by the parser, the printer, the
//! JSON form (serde) and the evaluator.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// A segment expression: a predicate over persons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Expr {
    /// Every operand holds (two or more).
    And {
        /// The operands, in source order.
        args: Vec<Expr>,
    },
    /// Any operand holds (two or more).
    Or {
        /// The operands, in source order.
        args: Vec<Expr>,
    },
    /// The operand does not hold (among live persons).
    Not {
        /// The negated expression.
        arg: Box<Expr>,
    },
    /// A boolean tag by name: `skincare_lover`.
    Tag {
        /// The tag's name.
        name: String,
    },
    /// `field op value` on an enumerated tag, attribute or trait:
    /// `member_level = 'vip'`, `total_spend >= 1000`.
    Compare {
        /// A tag, attribute or trait name.
        field: String,
        /// The comparison.
        cmp: Cmp,
        /// The right-hand side.
        value: Literal,
    },
    /// `field [NOT] IN (v, ...)`.
    In {
        /// A tag, attribute or trait name.
        field: String,
        /// The values (one or more).
        values: Vec<Literal>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `field BETWEEN low AND high` (both ends included) on a numeric trait.
    Between {
        /// A numeric trait.
        field: String,
        /// Lower bound, included.
        low: Literal,
        /// Upper bound, included.
        high: Literal,
    },
    /// `did(TYPE [WHERE prop = v [AND ...]]) [op n] [window]`.
    Did(Did),
    /// `segment('saved name')`.
    Segment {
        /// The saved segment's name.
        name: String,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    /// `=`
    Eq,
    /// `!=` (also written `<>`)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    /// A number: `1000`, `99.5`, `-3`.
    Number(f64),
    /// A quoted string: `'vip'` (a quote inside is doubled: `'o''clock'`).
    String(String),
}

/// A behaviour predicate: how many times a person did something, in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Did {
    /// The event type: `purchase`, `page_view`.
    pub event_type: String,
    /// `WHERE prop = 'v' AND ...`: property equalities, in source order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<(String, String)>,
    /// `op n`; absent means "at least once" (`>= 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<(Cmp, u64)>,
    /// The window; absent means all time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// A window of days for [`Did`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Window {
    /// `IN LAST n DAYS`: the `n` days ending with "now"'s day (today included).
    Last {
        /// Number of days, ≥ 1.
        days: u32,
    },
    /// `BETWEEN 'YYYY-MM-DD' AND 'YYYY-MM-DD'`: both days included.
    Between {
        /// First day.
        from: NaiveDate,
        /// Last day.
        to: NaiveDate,
    },
}
