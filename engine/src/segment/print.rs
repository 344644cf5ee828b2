//! Printer of the segment language: `Display` for the tree, writing canonical
//! source on one line, so that `parse(&e.to_string()) == Ok(e)`.
//! Owns the canonical spelling; the grammar lives in `segment::parse`.
//!
//! Canonical form: keywords upper case (`AND`, `IN LAST 7 DAYS`) except the
//! calls `did(...)` and `segment(...)`; one space around operators; names bare
//! when they are plain ASCII identifiers and no keyword, double-quoted
//! otherwise (`"会员等级"`, `"in"`, a `"` doubled); strings single-quoted with a
//! `'` doubled; numbers as Rust prints `f64` (shortest text that reads back to
//! the same value, never an exponent); parentheses only where needed: an `Or`
//! inside an `And` or a `Not`, and an `And` or `Or` nested in the same
//! operator (the parser keeps a parenthesised group as its own node).
//!
//! Trees the parser cannot produce print as best they can but do not read
//! back: an `And`/`Or` with fewer than two operands, a non-finite number, an
//! empty name, a did count with `!=`, a zero-day window, a date outside years
//! 0–9999 or a date window that ends before it starts.

use std::fmt::{self, Display, Formatter};

use super::ast::{Cmp, Did, Expr, Literal, Window};
use super::parse::is_bare_name;

/// A name: bare if it can be, else double-quoted.
struct Name<'a>(&'a str);

impl Display for Name<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if is_bare_name(self.0) {
            f.write_str(self.0)
        } else {
            write!(f, "\"{}\"", self.0.replace('"', "\"\""))
        }
    }
}

/// A single-quoted string.
struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.0.replace('\'', "''"))
    }
}

/// Writes `args` joined by `sep`, parenthesising those for which `wrap` holds.
fn join(
    f: &mut Formatter<'_>,
    args: &[Expr],
    sep: &str,
    wrap: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if wrap(arg) {
            write!(f, "({arg})")?;
        } else {
            write!(f, "{arg}")?;
        }
    }
    Ok(())
}

/// Prints canonical source (see the module docs):
///
/// ```
/// use quiver_engine::segment::parse;
/// let e = parse("(a or b) and not  did(purchase) in last 14 days").unwrap();
/// assert_eq!(e.to_string(), "(a OR b) AND NOT did(purchase) IN LAST 14 DAYS");
/// assert_eq!(parse(&e.to_string()), Ok(e));
/// ```
impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And { args } => join(f, args, " AND ", |a| {
                matches!(a, Expr::And { .. } | Expr::Or { .. })
            }),
            Expr::Or { args } => join(f, args, " OR ", |a| matches!(a, Expr::Or { .. })),
            Expr::Not { arg } => match **arg {
                Expr::And { .. } | Expr::Or { .. } => write!(f, "NOT ({arg})"),
                _ => write!(f, "NOT {arg}"),
            },
            Expr::Tag { name } => Name(name).fmt(f),
            Expr::Compare { field, cmp, value } => {
                write!(f, "{} {cmp} {value}", Name(field))
            }
            Expr::In {
                field,
                values,
                negated,
            } => {
                let not = if *negated { "NOT " } else { "" };
                write!(f, "{} {not}IN (", Name(field))?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{value}")?;
                }
                f.write_str(")")
            }
            Expr::Between { field, low, high } => {
                write!(f, "{} BETWEEN {low} AND {high}", Name(field))
            }
            Expr::Did(did) => did.fmt(f),
            Expr::Segment { name } => write!(f, "segment({})", Quoted(name)),
        }
    }
}

/// `=`, `!=`, `<`, `<=`, `>`, `>=`.
impl Display for Cmp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmp::Eq => "=",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        })
    }
}

/// `1000`, `-0.25`, `'o''clock'`.
impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Number(n) => write!(f, "{n}"),
            Literal::String(s) => Quoted(s).fmt(f),
        }
    }
}

/// `did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS`.
impl Display for Did {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "did({}", Name(&self.event_type))?;
        for (i, (prop, value)) in self.filters.iter().enumerate() {
            let word = if i == 0 { "WHERE" } else { "AND" };
            write!(f, " {word} {} = {}", Name(prop), Quoted(value))?;
        }
        f.write_str(")")?;
        if let Some((cmp, n)) = self.count {
            write!(f, " {cmp} {n}")?;
        }
        if let Some(window) = &self.window {
            write!(f, " {window}")?;
        }
        Ok(())
    }
}

/// `IN LAST 7 DAYS` (`IN LAST 1 DAY`), `BETWEEN '2025-01-01' AND '2025-01-31'`.
impl Display for Window {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Window::Last { days: 1 } => f.write_str("IN LAST 1 DAY"),
            Window::Last { days } => write!(f, "IN LAST {days} DAYS"),
            Window::Between { from, to } => write!(f, "BETWEEN '{from}' AND '{to}'"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    const PRODUCT_EXAMPLE: &str = "member_level = 'vip' AND skincare_lover
  AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS
  AND NOT did(purchase) IN LAST 14 DAYS
  AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')";

    fn tag(name: &str) -> Expr {
        Expr::Tag { name: name.into() }
    }

    #[test]
    fn canonical_text() {
        let cases = [
            (
                PRODUCT_EXAMPLE,
                "member_level = 'vip' AND skincare_lover AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS AND NOT did(purchase) IN LAST 14 DAYS AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')",
            ),
            ("a or b and c", "a OR b AND c"),
            ("(a or b) and c", "(a OR b) AND c"),
            ("(a and b) and c", "(a AND b) AND c"),
            ("(a or b) or c", "(a OR b) OR c"),
            ("a or (b and c)", "a OR b AND c"),
            ("not (a or b)", "NOT (a OR b)"),
            ("not (a and b)", "NOT (a AND b)"),
            ("not not a", "NOT NOT a"),
            ("not (x = 1)", "NOT x = 1"),
            ("x<>1", "x != 1"),
            ("x not in ( -1.50 ,'a''b' )", "x NOT IN (-1.5, 'a''b')"),
            ("x between 0.10 and 2", "x BETWEEN 0.1 AND 2"),
            ("did(x) = 0 in last 1 days", "did(x) = 0 IN LAST 1 DAY"),
            (
                "did(x where a='1' and \"b c\"='2') between '2025-01-01' and '2025-01-01'",
                "did(x WHERE a = '1' AND \"b c\" = '2') BETWEEN '2025-01-01' AND '2025-01-01'",
            ),
            ("segment('it''s')", "segment('it''s')"),
            (
                "\"in\" OR \"Did\" OR \"a\"\"b\" OR \"ok\"",
                "\"in\" OR \"Did\" OR \"a\"\"b\" OR ok",
            ),
            ("x = 100000000000000000000", "x = 100000000000000000000"),
            ("x = 0.000001", "x = 0.000001"),
        ];
        for (text, canonical) in cases {
            let e = parse(text).unwrap();
            assert_eq!(e.to_string(), canonical, "{text}");
            assert_eq!(parse(canonical), Ok(e), "{canonical}");
        }
    }

    #[test]
    fn names_are_quoted_when_needed() {
        for (name, printed) in [
            ("plain_Name9", "plain_Name9"),
            ("_x", "_x"),
            ("9lives", "\"9lives\""),
            ("with space", "\"with space\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("会员等级", "\"会员等级\""),
            ("AND", "\"AND\""),
            ("segment", "\"segment\""),
            ("days", "\"days\""),
        ] {
            assert_eq!(tag(name).to_string(), printed);
            assert_eq!(parse(printed), Ok(tag(name)));
        }
    }

    #[test]
    fn json_form() {
        let e = parse("a AND NOT did(purchase WHERE channel = 'pos') >= 2 IN LAST 7 DAYS").unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"op":"and","args":[{"op":"tag","name":"a"},{"op":"not","arg":{"op":"did","event_type":"purchase","filters":[["channel","pos"]],"count":["ge",2],"window":{"kind":"last","days":7}}}]}"#
        );
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);

        let e = parse(PRODUCT_EXAMPLE).unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);

        // Found by the fuzz target: a float that JSON parsing without
        // `float_roundtrip` reads back one ulp off.
        let e = parse("d < 4444444444444444444444444440444444").unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
            1 => prop::sample::select(vec!["and", "OR", "Not", "in", "between", "did", "segment", "where", "last", "day", "DAYS"]).prop_map(String::from),
            1 => "[ -~]{1,6}",
            1 => "\\PC{1,4}",
            1 => any::<String>().prop_filter("names are not empty", |s| !s.is_empty()),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z' ]{0,6}", any::<String>()]
    }

    /// Numbers that JSON reads back exactly too (serde_json without
    /// `float_roundtrip` may be one ulp off on arbitrary ones).
    fn simple_number() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1_000i64..1_000).prop_map(|n| n as f64),
            (-100_000i64..100_000).prop_map(|n| n as f64 / 100.0),
        ]
    }

    /// Any finite `f64`: the printer writes the shortest round-trip digits.
    fn any_number() -> impl Strategy<Value = f64> {
        prop_oneof![
            simple_number(),
            any::<f64>().prop_filter("finite", |n| n.is_finite()),
        ]
    }

    fn literal(number: BoxedStrategy<f64>) -> impl Strategy<Value = Literal> {
        prop_oneof![
            number.prop_map(Literal::Number),
            text().prop_map(Literal::String)
        ]
    }

    fn cmp() -> impl Strategy<Value = Cmp> {
        prop::sample::select(vec![Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge])
    }

    fn date() -> impl Strategy<Value = NaiveDate> {
        // 0001-01-01 ..= 9999-12-31
        (1i32..=3_652_059).prop_map(|n| NaiveDate::from_num_days_from_ce_opt(n).unwrap())
    }

    fn window() -> impl Strategy<Value = Window> {
        prop_oneof![
            prop_oneof![1u32..=31, 1u32..=u32::MAX].prop_map(|days| Window::Last { days }),
            (date(), date()).prop_map(|(a, b)| Window::Between {
                from: a.min(b),
                to: a.max(b)
            }),
        ]
    }

    fn did() -> impl Strategy<Value = Did> {
        let count_cmp = prop::sample::select(vec![Cmp::Eq, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge]);
        (
            name(),
            prop::collection::vec((name(), text()), 0..3),
            prop::option::of((count_cmp, prop_oneof![0u64..10, any::<u64>()])),
            prop::option::of(window()),
        )
            .prop_map(|(event_type, filters, count, window)| Did {
                event_type,
                filters,
                count,
                window,
            })
    }

    /// Well-formed trees: `And`/`Or` with two or more operands (nesting the
    /// same operator is fine), everything else as the parser allows.
    fn expr(number: BoxedStrategy<f64>) -> impl Strategy<Value = Expr> {
        let lit = || literal(number.clone());
        let leaf = prop_oneof![
            name().prop_map(|name| Expr::Tag { name }),
            (name(), cmp(), lit()).prop_map(|(field, cmp, value)| Expr::Compare {
                field,
                cmp,
                value
            }),
            (name(), prop::collection::vec(lit(), 1..4), any::<bool>()).prop_map(
                |(field, values, negated)| Expr::In {
                    field,
                    values,
                    negated
                }
            ),
            (name(), lit(), lit()).prop_map(|(field, low, high)| Expr::Between {
                field,
                low,
                high
            }),
            did().prop_map(Expr::Did),
            text().prop_map(|name| Expr::Segment { name }),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..5).prop_map(|args| Expr::And { args }),
                prop::collection::vec(inner.clone(), 2..5).prop_map(|args| Expr::Or { args }),
                inner.prop_map(|arg| Expr::Not { arg: Box::new(arg) }),
            ]
        })
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(e in expr(any_number().boxed())) {
            let text = e.to_string();
            prop_assert_eq!(parse(&text), Ok(e), "{}", text);
        }

        #[test]
        fn json_round_trip(e in expr(simple_number().boxed())) {
            let json = serde_json::to_string(&e).unwrap();
            prop_assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);
        }
    }
}
