//! What SQL gets from the rest of the engine: each event's person, the
//! `segment(...)` table function and `in_segment(...)`, both evaluated by
//! the bitmap engine, and `person_tags` from the tag index.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BooleanArray, Int64Array, Int64Builder, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature, TableType, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use parking_lot::Mutex;
use roaring::RoaringBitmap;

use crate::Workspace;
use crate::segment::{AudienceOptions, parse};
use crate::tag::TagKind;

/// Rows per batch of the tables built from bitmaps.
const BATCH_ROWS: usize = 64 * 1024;

fn plan_error(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Plan(e.to_string())
}

/// What [`PersonOf`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Out {
    Ordinal,
    PersonId,
}

/// `quiver_person_ordinal(identifiers)` / `quiver_person_id(identifiers)`:
/// the live person owning the strongest of an event's identifiers (null
/// before the first resolve, or when no live person owns any of them).
#[derive(Debug)]
pub(super) struct PersonOf {
    ws: Arc<Workspace>,
    out: Out,
    signature: Signature,
}

impl PersonOf {
    pub(super) fn ordinal(ws: Arc<Workspace>) -> Self {
        Self::new(ws, Out::Ordinal)
    }

    pub(super) fn person_id(ws: Arc<Workspace>) -> Self {
        Self::new(ws, Out::PersonId)
    }

    fn new(ws: Arc<Workspace>, out: Out) -> Self {
        PersonOf {
            ws,
            out,
            // Volatile keeps filters on it above the scan: pushed into the
            // Parquet reader, an async function could not run.
            signature: Signature::any(1, Volatility::Volatile),
        }
    }
}

impl PartialEq for PersonOf {
    fn eq(&self, other: &Self) -> bool {
        self.out == other.out && self.ws.name() == other.ws.name()
    }
}
impl Eq for PersonOf {}
impl Hash for PersonOf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.out.hash(state);
        self.ws.name().hash(state);
    }
}

impl ScalarUDFImpl for PersonOf {
    fn name(&self) -> &str {
        match self.out {
            Out::Ordinal => "quiver_person_ordinal",
            Out::PersonId => "quiver_person_id",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(match self.out {
            Out::Ordinal => DataType::Int64,
            Out::PersonId => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Internal(format!(
            "{} is async",
            self.name()
        )))
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for PersonOf {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let ids = args.args[0].to_array(rows)?;
        let map = self.ws.person_map().await?;
        let owners: Vec<Option<u32>> = match &map {
            None => vec![None; rows],
            Some(map) => {
                let list = ids.as_list_opt::<i32>().ok_or_else(|| {
                    DataFusionError::Plan(format!(
                        "{}: expected the `identifiers` list, got {}",
                        self.name(),
                        ids.data_type()
                    ))
                })?;
                let items = list.values().as_struct();
                let kinds = arrow::compute::cast(items.column(0), &DataType::Utf8)?;
                let values = arrow::compute::cast(items.column(1), &DataType::Utf8)?;
                let (kinds, values) = (kinds.as_string::<i32>(), values.as_string::<i32>());
                let offsets = list.value_offsets();
                (0..rows)
                    .map(|row| {
                        if list.is_null(row) {
                            return None;
                        }
                        map.owner_of(
                            (offsets[row] as usize..offsets[row + 1] as usize)
                                .filter(|&j| items.is_valid(j) && kinds.is_valid(j))
                                .map(|j| (kinds.value(j), values.value(j))),
                        )
                    })
                    .collect()
            }
        };
        let array: ArrayRef = match self.out {
            Out::Ordinal => Arc::new(Int64Array::from_iter(
                owners.iter().map(|o| o.map(i64::from)),
            )),
            Out::PersonId => {
                let mut b = StringBuilder::with_capacity(rows, rows * 16);
                for o in owners {
                    let id = o.and_then(|o| {
                        map.as_ref()
                            .and_then(|m| m.person_ids.get(o as usize).cloned().flatten())
                    });
                    b.append_option(id);
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(array))
    }
}

/// A string literal argument of a function.
fn literal_text(fun: &str, what: &str, e: &Expr) -> DfResult<String> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Ok(s.clone()),
        other => Err(plan_error(format!(
            "{fun}(): the {what} must be a string literal, not `{other}`"
        ))),
    }
}

/// Members of `text` in `ws` now.
fn members(ws: &Workspace, text: &str) -> DfResult<RoaringBitmap> {
    let e = parse(text).map_err(|e| plan_error(format!("segment expression: {e}")))?;
    let audience = ws
        .audience(&e, AudienceOptions::default())
        .map_err(plan_error)?;
    Ok(audience.members)
}

/// `segment('<expression>' [, '<workspace>'])`: the members' `person_id`
/// and `ordinal`.
#[derive(Debug)]
pub(super) struct SegmentFunction {
    pub default: Option<Arc<Workspace>>,
    pub workspaces: Vec<Arc<Workspace>>,
}

impl TableFunctionImpl for SegmentFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > 2 {
            return Err(plan_error(
                "segment() takes a segment expression and, optionally, a workspace: segment('vip AND skincare_lover' [, 'shop'])",
            ));
        }
        let text = literal_text("segment", "expression", &exprs[0])?;
        let ws = match exprs.get(1) {
            Some(e) => {
                let name = literal_text("segment", "workspace", e)?;
                self.workspaces
                    .iter()
                    .find(|w| w.name() == name)
                    .cloned()
                    .ok_or_else(|| {
                        plan_error(format!(
                            "segment(): workspace `{name}` is not one this session sees"
                        ))
                    })?
            }
            None => self.default.clone().ok_or_else(|| {
                plan_error(
                    "segment(): this session has no default workspace: name it, segment('<expression>', '<workspace>')",
                )
            })?,
        };
        let members = members(&ws, &text)?;
        Ok(Arc::new(SegmentTable { ws, members }))
    }
}

fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Utf8, true),
        Field::new("ordinal", DataType::Int64, false),
    ]))
}

/// An evaluated segment as a table.
#[derive(Debug)]
struct SegmentTable {
    ws: Arc<Workspace>,
    members: RoaringBitmap,
}

#[async_trait]
impl TableProvider for SegmentTable {
    fn schema(&self) -> SchemaRef {
        person_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let map = self.ws.person_map().await?;
        let ids = map.as_ref().map(|m| &m.person_ids);
        let schema = person_schema();
        let all: Vec<u32> = self.members.iter().collect();
        let mut batches = Vec::new();
        for chunk in all.chunks(BATCH_ROWS) {
            let mut pid = StringBuilder::with_capacity(chunk.len(), chunk.len() * 16);
            for &o in chunk {
                pid.append_option(ids.and_then(|v| v.get(o as usize).cloned().flatten()));
            }
            let ords = Int64Array::from_iter_values(chunk.iter().map(|&o| i64::from(o)));
            batches.push(RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(pid.finish()), Arc::new(ords)],
            )?);
        }
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[batches], schema, projection.cloned())?;
        Ok(exec)
    }
}

/// `in_segment(person_id | ordinal, '<expression>')`: whether the person is
/// a member now, in the session's default workspace.
#[derive(Debug)]
pub(super) struct InSegment {
    ws: Option<Arc<Workspace>>,
    signature: Signature,
    /// Evaluated expressions, by text.
    audiences: Mutex<hashbrown::HashMap<String, Arc<RoaringBitmap>>>,
    /// `person_id` → ordinal, built on first use.
    ordinals: tokio::sync::OnceCell<Arc<hashbrown::HashMap<String, u32>>>,
}

impl InSegment {
    pub(super) fn new(ws: Option<Arc<Workspace>>) -> Self {
        InSegment {
            ws,
            // Volatile, as `PersonOf`: never pushed into a Parquet scan.
            signature: Signature::any(2, Volatility::Volatile),
            audiences: Mutex::new(hashbrown::HashMap::new()),
            ordinals: tokio::sync::OnceCell::new(),
        }
    }

    fn workspace(&self) -> DfResult<&Arc<Workspace>> {
        self.ws.as_ref().ok_or_else(|| {
            plan_error("in_segment(): this session has no default workspace to evaluate in")
        })
    }

    fn audience(&self, text: &str) -> DfResult<Arc<RoaringBitmap>> {
        if let Some(b) = self.audiences.lock().get(text) {
            return Ok(b.clone());
        }
        let b = Arc::new(members(self.workspace()?, text)?);
        self.audiences.lock().insert(text.to_string(), b.clone());
        Ok(b)
    }
}

impl PartialEq for InSegment {
    fn eq(&self, other: &Self) -> bool {
        self.ws.as_ref().map(|w| w.name()) == other.ws.as_ref().map(|w| w.name())
    }
}
impl Eq for InSegment {}
impl Hash for InSegment {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.ws.as_ref().map(|w| w.name()).hash(state);
    }
}

impl ScalarUDFImpl for InSegment {
    fn name(&self) -> &str {
        "in_segment"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Internal("in_segment is async".into()))
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for InSegment {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let text = match &args.args[1] {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => s.clone(),
            _ => {
                return Err(plan_error(
                    "in_segment(): the expression must be a string literal",
                ));
            }
        };
        let members = self.audience(&text)?;
        let who = args.args[0].to_array(rows)?;
        let out: BooleanArray = match who.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let ws = self.workspace()?.clone();
                let ordinals = self
                    .ordinals
                    .get_or_try_init(|| async move {
                        let map = ws.person_map().await?;
                        let mut by_id = hashbrown::HashMap::new();
                        if let Some(m) = map {
                            for (o, id) in m.person_ids.iter().enumerate() {
                                if let Some(id) = id {
                                    by_id.insert(id.clone(), o as u32);
                                }
                            }
                        }
                        Ok::<_, crate::Error>(Arc::new(by_id))
                    })
                    .await?;
                let ids = arrow::compute::cast(&who, &DataType::Utf8)?;
                ids.as_string::<i32>()
                    .iter()
                    .map(|id| id.map(|id| ordinals.get(id).is_some_and(|o| members.contains(*o))))
                    .collect()
            }
            t if t.is_integer() => {
                let ords = arrow::compute::cast(&who, &DataType::Int64)?;
                ords.as_primitive::<Int64Type>()
                    .iter()
                    .map(|o| o.map(|o| u32::try_from(o).is_ok_and(|o| members.contains(o))))
                    .collect()
            }
            other => {
                return Err(plan_error(format!(
                    "in_segment(): the first argument is a person_id (string) or an ordinal (integer), not {other}"
                )));
            }
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `person_tags (person_id, ordinal, tag, value)`: every defined tag of
/// every person at the latest index version (boolean and manual tags with
/// value `true`, enumerated tags with their value, numeric tags with theirs).
#[derive(Debug)]
pub(super) struct PersonTags {
    pub ws: Arc<Workspace>,
}

fn person_tags_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Utf8, true),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]))
}

/// Builds `person_tags` batches row by row.
struct TagRows<'a> {
    ids: Option<&'a Vec<Option<String>>>,
    schema: SchemaRef,
    pid: StringBuilder,
    ord: Int64Builder,
    tag: StringBuilder,
    value: StringBuilder,
    batches: Vec<RecordBatch>,
}

impl TagRows<'_> {
    fn push(&mut self, o: u32, tag: &str, value: &str) -> DfResult<()> {
        self.pid
            .append_option(self.ids.and_then(|v| v.get(o as usize).cloned().flatten()));
        self.ord.append_value(i64::from(o));
        self.tag.append_value(tag);
        self.value.append_value(value);
        if self.ord.len() >= BATCH_ROWS {
            self.cut()?;
        }
        Ok(())
    }

    fn cut(&mut self) -> DfResult<()> {
        if self.ord.is_empty() {
            return Ok(());
        }
        self.batches.push(RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(self.pid.finish()),
                Arc::new(self.ord.finish()),
                Arc::new(self.tag.finish()),
                Arc::new(self.value.finish()),
            ],
        )?);
        Ok(())
    }
}

#[async_trait]
impl TableProvider for PersonTags {
    fn schema(&self) -> SchemaRef {
        person_tags_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = person_tags_schema();
        let map = self.ws.person_map().await?;
        let mut rows = TagRows {
            ids: map.as_ref().map(|m| &m.person_ids),
            schema: schema.clone(),
            pid: StringBuilder::new(),
            ord: Int64Builder::new(),
            tag: StringBuilder::new(),
            value: StringBuilder::new(),
            batches: Vec::new(),
        };
        if let Some(index) = self.ws.tag_index()? {
            for t in self.ws.tag_definitions()?.tags {
                match t.kind {
                    TagKind::Boolean | TagKind::Manual => {
                        if let Some(b) = index.tags.get(&t.name) {
                            for o in b {
                                rows.push(o, &t.name, "true")?;
                            }
                        }
                    }
                    TagKind::Enum => {
                        for (v, b) in index.enums.get(&t.name).into_iter().flatten() {
                            for o in b {
                                rows.push(o, &t.name, v)?;
                            }
                        }
                    }
                    TagKind::Numeric => {
                        if let Some(n) = index.numbers.get(&t.name) {
                            for o in &index.live {
                                if let Some(v) = n.bsi.get(crate::index::Ordinal(o)) {
                                    rows.push(o, &t.name, &crate::tag::format_scaled(v, n.scale))?;
                                }
                            }
                        }
                    }
                }
            }
        }
        rows.cut()?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[rows.batches], schema, projection.cloned())?;
        Ok(exec)
    }
}
