//! The memtable: acknowledged rows not yet in Delta, and the Delta snapshot
//! they sit on, kept under one lock so that a query sees Delta ∪ memtable
//! with no row missing or doubled while a flush swaps them.

use std::time::Instant;

use arrow::array::RecordBatch;
use deltalake_core::DeltaTable;

/// Rows of sealed WAL segments waiting for their Delta commit.
#[derive(Debug, Clone)]
pub(crate) struct Frozen {
    pub segment: u64,
    pub batches: Vec<RecordBatch>,
}

/// What a reader needs: the committed table and the rows above it.
#[derive(Debug)]
pub(crate) struct MemState {
    pub active: Vec<RecordBatch>,
    pub active_rows: usize,
    pub active_since: Option<Instant>,
    pub frozen: Vec<Frozen>,
    pub table: DeltaTable,
}

impl MemState {
    pub fn new(table: DeltaTable) -> Self {
        MemState {
            active: Vec::new(),
            active_rows: 0,
            active_since: None,
            frozen: Vec::new(),
            table,
        }
    }

    pub fn push(&mut self, batch: RecordBatch) {
        if self.active.is_empty() {
            self.active_since = Some(Instant::now());
        }
        self.active_rows += batch.num_rows();
        self.active.push(batch);
    }

    /// Moves the active rows under sealed segment `segment`.
    pub fn freeze(&mut self, segment: u64) {
        let batches = std::mem::take(&mut self.active);
        self.active_rows = 0;
        self.active_since = None;
        if !batches.is_empty() {
            self.frozen.push(Frozen { segment, batches });
        }
    }

    /// Every row not yet in Delta.
    pub fn unflushed(&self) -> Vec<RecordBatch> {
        self.frozen
            .iter()
            .flat_map(|f| f.batches.iter().cloned())
            .chain(self.active.iter().cloned())
            .collect()
    }

    pub fn unflushed_rows(&self) -> usize {
        self.active_rows
            + self
                .frozen
                .iter()
                .flat_map(|f| &f.batches)
                .map(|b| b.num_rows())
                .sum::<usize>()
    }
}
