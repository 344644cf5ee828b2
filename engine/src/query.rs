//! SQL over a workspace through DataFusion. Owns the session a query runs in
//! and the `events` view: the Delta snapshot ∪ the memtable, read under one
//! lock so no acknowledged row is missing or doubled, and the identity tables
//! once a resolve has written them. Read-only: DDL, DML and
//! statements are refused.

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, cast, ident, lit};
use datafusion::scalar::ScalarValue;
use deltalake_core::DeltaTable;

use crate::store::{Workspace, table_provider};
use crate::{Error, Result};

fn context(ws: &str) -> SessionContext {
    let cfg = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("quiver", ws)
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
    SessionContext::new_with_config(cfg)
}

/// Registers `events` = Delta ∪ memtable in `ctx`.
async fn register_events(
    ctx: &SessionContext,
    table: &DeltaTable,
    memtable: Vec<RecordBatch>,
) -> Result<()> {
    let delta = ctx.read_table(table_provider(table).await?)?;
    // The provider may expose other physical types (Utf8View for strings):
    // bring the memtable rows to its schema so the union is exact.
    let target: SchemaRef = Arc::new(delta.schema().as_arrow().clone());
    let batches = memtable
        .iter()
        .map(|b| conform(b, &target))
        .collect::<Result<Vec<_>>>()?;
    let mem = MemTable::try_new(target, vec![batches])?;
    let mem = ctx.read_table(Arc::new(mem))?;
    let events = delta.union(mem)?;
    ctx.register_table("events", events.into_view())?;
    Ok(())
}

/// Registers the tables a resolve and a tag refresh have written
/// (`identifiers`, `persons`, `identity_history`, `profiles`, `attribute_history`).
async fn register_identity(ctx: &SessionContext, ws: &Workspace) -> Result<()> {
    for name in crate::identity::TABLES
        .into_iter()
        .chain(crate::profile::TABLES)
    {
        if let Some(table) = crate::identity::open_table(ws, name).await? {
            ctx.register_table(name, table_provider(&table).await?)?;
        }
    }
    Ok(())
}

/// Casts `batch` column by column (by name) to `target`.
fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
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

impl Workspace {
    /// Runs a read-only SQL query over the workspace's tables (`events`).
    #[tracing::instrument(level = "debug", skip(self), fields(ws = %self.name()))]
    pub async fn sql(&self, query: &str) -> Result<SendableRecordBatchStream> {
        sql(self, query).await
    }
}

async fn sql(ws: &Workspace, query: &str) -> Result<SendableRecordBatchStream> {
    let ctx = context(ws.name());
    let (table, mem) = ws.read_view();
    register_events(&ctx, &table, mem).await?;
    register_identity(&ctx, ws).await?;
    let opts = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(query, opts)
        .await
        .map_err(|e| Error::Sql(e.to_string()))?;
    Ok(df.execute_stream().await?)
}

/// `event_id, received_at` of committed rows received at or after `cutoff` (µs).
pub(crate) async fn recent_event_ids(
    table: &DeltaTable,
    cutoff: i64,
) -> Result<SendableRecordBatchStream> {
    let ctx = context("default");
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
