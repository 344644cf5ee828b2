//! The SQL session: catalog `quiver`, a schema per workspace, its tables
//! opened when a query names them, planning with parameters.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, MemTable, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
    TableProvider,
};
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF, async_udf::AsyncScalarUDF};
use datafusion::prelude::{SQLOptions, SessionContext, ident};
use datafusion::scalar::ScalarValue;

use super::functions::{InSegment, PersonOf, PersonTags, SegmentFunction};
use crate::profile::PersonMap;
use crate::store::{Workspace, table_provider};
use crate::{Error, Result};

/// The catalog every session's workspaces are schemas of.
pub const CATALOG: &str = "quiver";

/// The schema unqualified names resolve in when a session has no default
/// workspace: empty, so `events` alone is "not found" there.
const NO_DEFAULT: &str = "public";

/// A table a session can see.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The schema (workspace) holding it.
    pub schema_name: String,
    /// The table.
    pub name: String,
    /// `TABLE` or `VIEW`.
    pub table_type: &'static str,
    /// Its columns.
    pub schema: SchemaRef,
}

/// Per-workspace caches of the SQL tables.
#[derive(Debug, Default)]
pub(crate) struct AnalyticsState {
    /// Who owns each identifier, with the OneID run it was read after.
    persons: tokio::sync::Mutex<Option<(u64, Arc<PersonMap>)>>,
    /// Per-person timelines of the last run's events.
    pub(super) timeline: tokio::sync::Mutex<Option<Arc<super::timeline::Timeline>>>,
}

impl Workspace {
    /// Who owns each identifier after the last OneID run (`None` before the
    /// first), loaded once per run.
    pub(crate) async fn person_map(&self) -> Result<Option<Arc<PersonMap>>> {
        let run = crate::identity::tables::read_state(self.dir())?.run;
        if run == 0 {
            return Ok(None);
        }
        let mut slot = self.analytics_state().persons.lock().await;
        if let Some((r, map)) = slot.as_ref()
            && *r == run
        {
            return Ok(Some(map.clone()));
        }
        let rules = self.identity_rules()?;
        let Some(map) = PersonMap::load(self, &rules, run).await? else {
            return Ok(None);
        };
        let map = Arc::new(map);
        *slot = Some((run, map.clone()));
        Ok(Some(map))
    }

    /// Runs a read-only SQL query over this workspace's tables (`events`,
    /// `identifiers`, ...: see [`crate::analytics`]).
    #[tracing::instrument(level = "debug", skip(self), fields(ws = %self.name()))]
    pub async fn sql(&self, query: &str) -> Result<SendableRecordBatchStream> {
        let me = self.arc()?;
        let session = SqlSession::new(vec![me], Some(self.name()))?;
        Ok(session.execute(query, None).await?.1)
    }
}

/// A SQL session over some workspaces, each a schema of catalog
/// [`CATALOG`]. Cheap to create: tables are opened when a query names them.
pub struct SqlSession {
    ctx: SessionContext,
    workspaces: Vec<Arc<Workspace>>,
}

impl std::fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSession")
            .field(
                "workspaces",
                &self.workspaces.iter().map(|w| w.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SqlSession {
    /// A session seeing `workspaces`; unqualified table names resolve in
    /// `default` (one of them), and `segment(...)` / `in_segment(...)`
    /// evaluate there.
    pub fn new(workspaces: Vec<Arc<Workspace>>, default: Option<&str>) -> Result<Self> {
        let default_ws = match default {
            Some(d) => Some(
                workspaces
                    .iter()
                    .find(|w| w.name() == d)
                    .cloned()
                    .ok_or_else(|| Error::NotFound {
                        what: "workspace",
                        name: d.to_string(),
                    })?,
            ),
            None => None,
        };
        let cfg = crate::store::session_config()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, default.unwrap_or(NO_DEFAULT));
        let ctx = SessionContext::new_with_config(cfg);
        let catalog = MemoryCatalogProvider::new();
        for ws in &workspaces {
            catalog.register_schema(ws.name(), Arc::new(WorkspaceSchema { ws: ws.clone() }))?;
        }
        if default.is_none() {
            catalog.register_schema(NO_DEFAULT, Arc::new(MemorySchemaProvider::new()))?;
        }
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        ctx.register_udtf(
            "segment",
            Arc::new(SegmentFunction {
                default: default_ws.clone(),
                workspaces: workspaces.clone(),
            }),
        );
        ctx.register_udf(
            AsyncScalarUDF::new(Arc::new(InSegment::new(default_ws))).into_scalar_udf(),
        );
        Ok(SqlSession { ctx, workspaces })
    }

    /// The workspaces (schemas) this session sees.
    pub fn workspaces(&self) -> Vec<String> {
        self.workspaces
            .iter()
            .map(|w| w.name().to_string())
            .collect()
    }

    /// Plans `sql`, refusing anything but queries.
    async fn plan(&self, sql: &str) -> Result<LogicalPlan> {
        let plan = self
            .ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(sql_error)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(sql_error)?;
        Ok(plan)
    }

    /// The columns `sql` returns and the parameters it takes (`$1`, `$2`,
    /// ... in order, or named `$name`), without running it.
    pub async fn describe(&self, sql: &str) -> Result<(SchemaRef, SchemaRef)> {
        let plan = self.plan(sql).await?;
        let mut params: Vec<(String, DataType)> = Vec::new();
        for (name, ty) in plan.get_parameter_types().map_err(sql_error)? {
            let ty = ty.ok_or_else(|| {
                Error::Sql(format!(
                    "cannot infer the type of parameter {name}: cast it, e.g. CAST({name} AS BIGINT)"
                ))
            })?;
            params.push((name, ty));
        }
        // `$2` after `$1`, `$10` after `$9`.
        params.sort_by_key(|(n, _)| {
            let digits = n.trim_start_matches('$');
            (digits.parse::<u64>().unwrap_or(u64::MAX), n.clone())
        });
        let params = Schema::new(
            params
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        );
        Ok((plan_schema(&plan), Arc::new(params)))
    }

    /// Runs `sql` with `params` (one row: columns named `0`, `1`, ... or
    /// `$1`, `$2`, ... bind positionally, other names bind `$name`). The
    /// schema is the plan's, which the stream's batches match.
    pub async fn execute(
        &self,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream)> {
        let mut plan = self.plan(sql).await?;
        if let Some(batch) = params {
            plan = plan
                .with_param_values(param_values(batch)?)
                .map_err(sql_error)?;
        }
        let schema = plan_schema(&plan);
        let df = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(sql_error)?;
        Ok((schema, df.execute_stream().await.map_err(sql_error)?))
    }

    /// Every table of every workspace of the session, with its columns.
    pub async fn tables(&self) -> Result<Vec<TableInfo>> {
        let mut out = Vec::new();
        for ws in &self.workspaces {
            let schema = WorkspaceSchema { ws: ws.clone() };
            for name in schema.table_names() {
                if let Some(t) = schema.table(&name).await? {
                    out.push(TableInfo {
                        schema_name: ws.name().to_string(),
                        table_type: if name == "events" { "VIEW" } else { "TABLE" },
                        name,
                        schema: t.schema(),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn plan_schema(plan: &LogicalPlan) -> SchemaRef {
    Arc::new(plan.schema().as_arrow().clone())
}

fn sql_error(e: DataFusionError) -> Error {
    Error::Sql(e.to_string())
}

/// One row of `batch` as parameter values.
fn param_values(batch: &RecordBatch) -> Result<ParamValues> {
    if batch.num_rows() != 1 {
        return Err(Error::invalid(
            "parameters",
            format!("expected one row of values, got {}", batch.num_rows()),
        ));
    }
    let mut named: Vec<(String, Option<u64>, ScalarValue)> = Vec::new();
    for (i, field) in batch.schema().fields().iter().enumerate() {
        let value = ScalarValue::try_from_array(batch.column(i), 0)?;
        let name = field.name().trim_start_matches('$').to_string();
        let position = name.parse::<u64>().ok();
        named.push((name, position, value));
    }
    if named.iter().all(|(_, p, _)| p.is_some()) {
        named.sort_by_key(|(_, p, _)| *p);
        return Ok(ParamValues::from(
            named.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        ));
    }
    Ok(ParamValues::from(
        named
            .into_iter()
            .map(|(n, _, v)| (n, v))
            .collect::<Vec<(String, ScalarValue)>>(),
    ))
}

/// A workspace's tables.
#[derive(Debug)]
struct WorkspaceSchema {
    ws: Arc<Workspace>,
}

impl WorkspaceSchema {
    fn written(&self, name: &str) -> bool {
        self.ws.dir().join(name).join("_delta_log").is_dir()
    }
}

#[async_trait]
impl SchemaProvider for WorkspaceSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = vec!["events".to_string()];
        names.extend(
            crate::identity::TABLES
                .into_iter()
                .chain(crate::profile::TABLES)
                .filter(|n| self.written(n))
                .map(str::to_string),
        );
        if crate::index::IndexSet::versions(&self.ws.index_dir()).is_ok_and(|v| !v.is_empty()) {
            names.push("person_tags".into());
        }
        names
    }

    async fn table(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let ws = &self.ws;
        let table: Option<Arc<dyn TableProvider>> = match name {
            "events" => Some(events_view(ws).await?),
            "person_tags" if self.table_exist(name) => {
                Some(Arc::new(PersonTags { ws: ws.clone() }))
            }
            n if crate::identity::TABLES.contains(&n) || crate::profile::TABLES.contains(&n) => {
                match crate::identity::open_table(ws, n).await? {
                    Some(t) => Some(table_provider(&t).await?),
                    None => None,
                }
            }
            _ => None,
        };
        Ok(table)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|n| n == name)
    }
}

/// `events` = Delta ∪ memtable (read under one lock, so no acknowledged row
/// is missing or doubled), plus each event's person.
async fn events_view(ws: &Arc<Workspace>) -> Result<Arc<dyn TableProvider>> {
    let ctx = SessionContext::new_with_config(crate::store::session_config());
    let (table, mem) = ws.read_view();
    let delta = ctx.read_table(table_provider(&table).await?)?;
    // The provider's physical types may differ from the memtable's (a
    // dictionary-wrapped partition column, say): bring the memtable rows to
    // its schema so the union is exact.
    let target: SchemaRef = Arc::new(delta.schema().as_arrow().clone());
    let batches = mem
        .iter()
        .map(|b| crate::query::conform(b, &target))
        .collect::<Result<Vec<_>>>()?;
    let mem = ctx.read_table(Arc::new(MemTable::try_new(target.clone(), vec![batches])?))?;
    let events = delta.union(mem)?;
    let udf = |f: PersonOf| -> ScalarUDF { AsyncScalarUDF::new(Arc::new(f)).into_scalar_udf() };
    let ordinal = udf(PersonOf::ordinal(ws.clone()));
    let person_id = udf(PersonOf::person_id(ws.clone()));
    let mut columns: Vec<_> = target.fields().iter().map(|f| ident(f.name())).collect();
    columns.push(
        person_id
            .call(vec![ident("identifiers")])
            .alias("person_id"),
    );
    columns.push(ordinal.call(vec![ident("identifiers")]).alias("ordinal"));
    Ok(events.select(columns)?.into_view())
}
