//! The segment language: the tree ([`Expr`]), its parser ([`parse`]), its
//! printer (`Display`: `parse(&e.to_string()) == Ok(e)`) and its JSON form
//! (serde on [`Expr`]).
//!
//! ```text
//! member_level = 'vip' AND skincare_lover
//!   AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS
//!   AND NOT did(purchase) IN LAST 14 DAYS
//!   AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')
//! ```

mod ast;
mod eval;
mod parse;
mod print;

pub use ast::{Cmp, Did, Expr, Literal, Window};
pub use eval::{day_number, evaluate, near};
pub use parse::{ParseError, parse};
