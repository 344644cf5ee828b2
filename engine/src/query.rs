//! Internal reads of `events` through DataFusion (the SQL users run is in
//! [`crate::analytics`]).

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionContext, cast, ident, lit};
use datafusion::scalar::ScalarValue;
use deltalake_core::DeltaTable;

use crate::store::table_provider;
use crate::{Error, Result};

fn context() -> SessionContext {
    SessionContext::new_with_config(crate::store::session_config())
}

/// Casts `batch` column by column (by name) to `target`.
pub(crate) fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = target
        .fields()
        .iter()
        .map(|f| {
            let c = batch.column_by_name(f.name()).ok_or_else(|| {
                Error::Internal(format!("memtable batch has no column `{}`", f.name()))
            })?;
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                Ok(arrow::compute::cast(c, f.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &opts,
    )?)
}

/// `event_id, received_at` of committed rows received at or after `cutoff` (µs).
pub(crate) async fn recent_event_ids(
    table: &DeltaTable,
    cutoff: i64,
) -> Result<SendableRecordBatchStream> {
    let ctx = context();
    let df = ctx.read_table(table_provider(table).await?)?;
    let ts = ScalarValue::TimestampMicrosecond(Some(cutoff), Some(crate::event::TZ.into()));
    let df = df
        .filter(ident("received_at").gt_eq(lit(ts)))?
        .select(vec![
            cast(ident("event_id"), arrow::datatypes::DataType::Utf8).alias("event_id"),
            ident("received_at"),
        ])?;
    Ok(df.execute_stream().await?)
}
