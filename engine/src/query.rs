//! SQL over a workspace through DataFusion. Owns the session a query runs in
//! and the `events` view: the Delta snapshot ∪ the memtable, read under one
//! lock so no acknowledged row is missing or doubled. Read-only: DDL, DML and
//! statements are refused.

use std::sync::Arc;

use datafusion::catalog::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, cast, ident, lit};
use datafusion::scalar::ScalarValue;
use deltalake_core::DeltaTable;

use crate::event::events_schema;
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
    memtable: Vec<arrow::array::RecordBatch>,
) -> Result<()> {
    let delta = ctx.read_table(table_provider(table).await?)?;
    let target = delta.schema().clone();
    let mem = MemTable::try_new(events_schema(), vec![memtable])?;
    let mem = ctx.read_table(Arc::new(mem))?;
    let exprs = target.fields().iter().map(|f| {
        let name = f.name();
        let src = events_schema();
        match src.field_with_name(name) {
            Ok(s) if s.data_type() == f.data_type() => ident(name),
            _ => cast(ident(name), f.data_type().clone()).alias(name),
        }
    });
    let mem = mem.select(exprs.collect::<Vec<_>>())?;
    let events = delta.union(mem)?;
    ctx.register_table("events", events.into_view())?;
    Ok(())
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
