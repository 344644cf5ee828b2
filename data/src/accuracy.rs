//! Identity accuracy against the generator's truth: pairwise precision and
//! recall over identifier values.
//!
//! A pair of values is *true* when one person owns both, *predicted* when a
//! resolver put both in one person. Precision = correct predicted pairs /
//! predicted pairs; recall = correct predicted pairs / true pairs. Counted
//! from the contingency table (values per (predicted, true) person), never
//! pair by pair. Values with more than one owner in truth (family tablets,
//! recycled numbers) have no single right answer and are left out, as are
//! predicted values that are nobody's (junk, store phones); a truth value the
//! resolver did not place counts as a person of its own.
//!
//! Some values of a person never share an event, directly or through a chain,
//! with the rest (a device used only for ads, a mini-program account never
//! bound to a phone): no resolver can join them. `linked_recall` counts only
//! the pairs the person's own events link (truth's `evidence_group`).

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{Error, Result, TruthRow};

/// Pairwise accuracy of a resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// Correct predicted pairs / predicted pairs (1 when nothing was paired).
    pub precision: f64,
    /// Correct predicted pairs / true pairs (1 when there are none).
    pub recall: f64,
    /// Recall over the pairs some chain of the person's own events links (same
    /// evidence group): what a resolver can reach without outside knowledge.
    pub linked_recall: f64,
    /// Pairs of one person in one evidence group.
    pub linked_pairs: u64,
    /// Pairs one true person owns.
    pub true_pairs: u64,
    /// Pairs one predicted person holds.
    pub predicted_pairs: u64,
    /// Pairs both.
    pub correct_pairs: u64,
    /// Values evaluated (single owner in truth).
    pub values: u64,
    /// Truth values with more than one owner, left out.
    pub shared: u64,
    /// Truth values the resolver did not place.
    pub unplaced: u64,
    /// True persons with at least one evaluated value.
    pub true_persons: u64,
    /// Predicted persons holding at least one evaluated value.
    pub predicted_persons: u64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Reads `truth.parquet`.
pub fn read_truth(path: &Path) -> Result<Vec<TruthRow>> {
    let io = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let bad = |what: String| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("no column `{name}`")))
        };
        let kinds =
            arrow::compute::cast(&col("kind")?, &DataType::Utf8).map_err(|e| bad(e.to_string()))?;
        let values = arrow::compute::cast(&col("value")?, &DataType::Utf8)
            .map_err(|e| bad(e.to_string()))?;
        let persons = arrow::compute::cast(&col("true_person")?, &DataType::Int64)
            .map_err(|e| bad(e.to_string()))?;
        let groups = match batch.column_by_name("evidence_group") {
            Some(g) => {
                Some(arrow::compute::cast(g, &DataType::Int64).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        let groups = groups.as_ref().map(|g| g.as_primitive::<Int64Type>());
        let (kinds, values) = (kinds.as_string::<i32>(), values.as_string::<i32>());
        let persons = persons.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if kinds.is_null(i) || values.is_null(i) || persons.is_null(i) {
                continue;
            }
            out.push(TruthRow {
                kind: kinds.value(i).to_string(),
                value: values.value(i).to_string(),
                true_person: persons.value(i) as u64,
                evidence_group: groups.map_or(0, |g| g.value(i) as u32),
            });
        }
    }
    Ok(out)
}

/// Pairwise precision and recall of `predicted` (`(kind, value, person)`) against `truth`.
pub fn pairwise<P: std::hash::Hash + Eq>(
    truth: &[TruthRow],
    predicted: impl IntoIterator<Item = (String, String, P)>,
) -> Accuracy {
    // Single-owner truth values.
    let key = |kind: &str, value: &str| format!("{kind}\u{1f}{value}");
    let mut owner: HashMap<String, Option<(u64, u32)>> = HashMap::with_capacity(truth.len());
    for t in truth {
        owner
            .entry(key(&t.kind, &t.value))
            .and_modify(|o| {
                if o.is_some_and(|(p, _)| p != t.true_person) {
                    *o = None;
                }
            })
            .or_insert(Some((t.true_person, t.evidence_group)));
    }
    let shared = owner.values().filter(|o| o.is_none()).count() as u64;
    // Predicted person index per evaluated value.
    let mut label: HashMap<P, u64> = HashMap::new();
    let mut placed: HashMap<String, u64> = HashMap::new();
    for (kind, value, person) in predicted {
        let k = key(&kind, &value);
        if !matches!(owner.get(&k), Some(Some(_))) {
            continue;
        }
        let next = label.len() as u64;
        let l = *label.entry(person).or_insert(next);
        placed.insert(k, l);
    }
    let mut next = label.len() as u64;
    let mut cells: HashMap<(u64, u64), u64> = HashMap::new();
    let mut linked_cells: HashMap<(u64, u64, u32), u64> = HashMap::new();
    let mut by_pred: HashMap<u64, u64> = HashMap::new();
    let mut by_true: HashMap<u64, u64> = HashMap::new();
    let mut by_group: HashMap<(u64, u32), u64> = HashMap::new();
    let (mut values, mut unplaced) = (0u64, 0u64);
    for (key, o) in &owner {
        let Some((t, group)) = *o else { continue };
        values += 1;
        let p = match placed.get(key) {
            Some(&p) => p,
            None => {
                unplaced += 1;
                next += 1;
                next - 1
            }
        };
        *cells.entry((p, t)).or_insert(0) += 1;
        *linked_cells.entry((p, t, group)).or_insert(0) += 1;
        *by_group.entry((t, group)).or_insert(0) += 1;
        *by_pred.entry(p).or_insert(0) += 1;
        *by_true.entry(t).or_insert(0) += 1;
    }
    let correct: u64 = cells.values().map(|&n| pairs(n)).sum();
    let predicted_pairs: u64 = by_pred.values().map(|&n| pairs(n)).sum();
    let true_pairs: u64 = by_true.values().map(|&n| pairs(n)).sum();
    let linked_pairs: u64 = by_group.values().map(|&n| pairs(n)).sum();
    let linked_correct: u64 = linked_cells.values().map(|&n| pairs(n)).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Accuracy {
        precision: ratio(correct, predicted_pairs),
        recall: ratio(correct, true_pairs),
        linked_recall: ratio(linked_correct, linked_pairs),
        linked_pairs,
        true_pairs,
        predicted_pairs,
        correct_pairs: correct,
        values,
        shared,
        unplaced,
        true_persons: by_true.len() as u64,
        predicted_persons: by_pred.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: &str, value: &str, p: u64) -> TruthRow {
        TruthRow {
            kind: kind.into(),
            value: value.into(),
            true_person: p,
            evidence_group: 0,
        }
    }

    fn p(kind: &str, value: &str, person: u32) -> (String, String, u32) {
        (kind.into(), value.into(), person)
    }

    #[test]
    fn perfect_over_and_under_merging() {
        let truth = [
            t("phone", "a", 0),
            t("email", "b", 0),
            t("phone", "c", 1),
            t("email", "d", 1),
        ];
        let exact = pairwise(
            &truth,
            [
                p("phone", "a", 7),
                p("email", "b", 7),
                p("phone", "c", 8),
                p("email", "d", 8),
            ],
        );
        assert_eq!((exact.precision, exact.recall), (1.0, 1.0));
        assert_eq!(exact.true_pairs, 2);
        // Everything in one person: 6 predicted pairs, 2 correct.
        let over = pairwise(
            &truth,
            [
                p("phone", "a", 1),
                p("email", "b", 1),
                p("phone", "c", 1),
                p("email", "d", 1),
            ],
        );
        assert_eq!((over.correct_pairs, over.predicted_pairs), (2, 6));
        assert!((over.precision - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(over.recall, 1.0);
        // `d` not placed, `c` alone: recall 1/2.
        let under = pairwise(
            &truth,
            [p("phone", "a", 1), p("email", "b", 1), p("phone", "c", 2)],
        );
        assert_eq!(under.unplaced, 1);
        assert_eq!((under.precision, under.recall), (1.0, 0.5));
        // If `c` and `d` share no event, nothing linked was missed.
        let mut split = truth.to_vec();
        split[3].evidence_group = 1;
        let under = pairwise(
            &split,
            [p("phone", "a", 1), p("email", "b", 1), p("phone", "c", 2)],
        );
        assert_eq!(
            (under.recall, under.linked_recall, under.linked_pairs),
            (0.5, 1.0, 1)
        );
    }

    #[test]
    fn shared_and_unknown_values_are_left_out() {
        let truth = [
            t("device", "tablet", 0),
            t("device", "tablet", 1),
            t("phone", "a", 0),
            t("phone", "b", 1),
        ];
        let acc = pairwise(
            &truth,
            [
                p("device", "tablet", 1),
                p("phone", "a", 1),
                p("phone", "b", 2),
                p("phone", "store", 1),
            ],
        );
        assert_eq!((acc.shared, acc.values), (1, 2));
        assert_eq!((acc.precision, acc.recall), (1.0, 1.0));
    }
}
