//! Segments: the language — the tree ([`Expr`]), its parser ([`parse`]), its
//! printer (`Display`: `parse(&e.to_string()) == Ok(e)`) and its JSON form
//! (serde on [`Expr`]) — its evaluation over a tag index ([`evaluate`]), and
//! the audience requests on a workspace (count, breakdown, overlap, split,
//! saved segments, snapshots and diffs, export; `Workspace::audience` and
//! its neighbours).
//!
//! ```text
//! member_level = 'vip' AND skincare_lover
//!   AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS
//!   AND NOT did(purchase) IN LAST 14 DAYS
//!   AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')
//! ```

mod ast;
mod audience;
mod dense;
mod eval;
mod parse;
mod print;
mod saved;
#[cfg(test)]
mod tests;

pub use ast::{Cmp, Did, Expr, Literal, Window};
pub(crate) use audience::SegmentState;
pub use audience::{
    Audience, AudienceOptions, Breakdown, BreakdownRow, Evaluated, IdHash, Overlap, SnapshotDiff,
    SplitGroup,
};
pub(crate) use eval::{KeptResults, code_counts_cached, count_cached, evaluate_cached};
pub use eval::{day_number, evaluate, near};
pub use parse::{ParseError, parse};
pub use saved::{SavedSegment, SnapshotInfo};

/// An expression from its text or, when the text is empty, its JSON form;
/// a parse error becomes an invalid `expression` (line, column, what was
/// expected, caret).
pub fn parse_text_or_json(text: &str, json: &str) -> crate::Result<Expr> {
    if !text.trim().is_empty() {
        return parse(text).map_err(|e| crate::Error::invalid("expression", e.to_string()));
    }
    if json.trim().is_empty() {
        return Err(crate::Error::invalid(
            "expression",
            "empty: give the expression as text or as JSON",
        ));
    }
    let e: Expr = serde_json::from_str(json)
        .map_err(|e| crate::Error::invalid("expression_json", e.to_string()))?;
    // The JSON form holds the same trees as the text: check it round-trips.
    parse(&e.to_string()).map_err(|err| {
        crate::Error::invalid("expression_json", format!("not a valid expression ({err})"))
    })
}
