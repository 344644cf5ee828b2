//! Arrow input: the flat event file schema (`quiver gen` output, `quiver ingest`
//! files, Flight `DoPut`) resolved column by column into [`RawEvent`]s.
//!
//! Columns are matched by name: `event_id`, `event_time`, `channel`,
//! `event_type` (required); identifier columns `phone`, `email`, `unionid`,
//! `openid` (`<appid>:<openid>`), `device`, `member` (and their aliases, or
//! `id:<kind>` for any other kind), or an `identifiers` list of
//! `struct<kind, value>`; the typed properties; every other column becomes a
//! string property. A column of a type that cannot mean its field is an error
//! naming the column.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};

use super::normalize::canonical_kind;
use super::{AmountInput, RawEvent, TimeInput};
use crate::{Error, Result};

/// Columns of the flat event file schema that are not free-form properties.
pub const FILE_COLUMNS: [&str; 17] = [
    "event_id",
    "event_time",
    "channel",
    "event_type",
    "phone",
    "email",
    "unionid",
    "openid",
    "device",
    "member",
    "category",
    "sku",
    "amount",
    "currency",
    "store_id",
    "campaign",
    "page",
];

enum Time {
    Micros(Int64Array),
    Text(StringArray),
}

enum Amount {
    None,
    Float(Float64Array),
    Decimal(Decimal128Array, i8),
    Text(StringArray),
}

/// A record batch in the flat event file schema, resolved for row access.
pub struct ArrowInput {
    rows: usize,
    event_id: Option<StringArray>,
    event_time: Option<Time>,
    channel: Option<StringArray>,
    event_type: Option<StringArray>,
    ids: Vec<(String, StringArray)>,
    id_list: Option<ListArray>,
    typed: [Option<StringArray>; 6],
    amount: Amount,
    props: Vec<(String, StringArray)>,
}

fn strings(name: &str, a: &ArrayRef) -> Result<StringArray> {
    let ok = matches!(
        a.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
    ) || a.data_type().is_integer()
        || matches!(a.data_type(), DataType::Null);
    if !ok {
        return Err(Error::invalid(
            name,
            format!(
                "column `{name}` has type {}; expected a string",
                a.data_type()
            ),
        ));
    }
    let c = cast(a, &DataType::Utf8)
        .map_err(|e| Error::invalid(name, format!("column `{name}`: {e}")))?;
    Ok(c.as_string::<i32>().clone())
}

impl ArrowInput {
    /// Resolves the columns of `batch`; a column whose type cannot mean its
    /// field is an [`Error::InvalidArgument`] naming it. Missing required
    /// columns are reported per row by validation.
    pub fn new(batch: &RecordBatch) -> Result<Self> {
        let mut input = ArrowInput {
            rows: batch.num_rows(),
            event_id: None,
            event_time: None,
            channel: None,
            event_type: None,
            ids: Vec::new(),
            id_list: None,
            typed: Default::default(),
            amount: Amount::None,
            props: Vec::new(),
        };
        let schema = batch.schema();
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            let name = field.name().as_str();
            match name {
                "event_id" => input.event_id = Some(strings(name, col)?),
                "event_time" | "timestamp" => input.event_time = Some(time_column(name, col)?),
                "channel" => input.channel = Some(strings(name, col)?),
                "event_type" | "type" => input.event_type = Some(strings(name, col)?),
                "category" => input.typed[0] = Some(strings(name, col)?),
                "sku" => input.typed[1] = Some(strings(name, col)?),
                "currency" => input.typed[2] = Some(strings(name, col)?),
                "store_id" => input.typed[3] = Some(strings(name, col)?),
                "campaign" => input.typed[4] = Some(strings(name, col)?),
                "page" => input.typed[5] = Some(strings(name, col)?),
                "amount" => input.amount = amount_column(col)?,
                "identifiers" => input.id_list = Some(id_list(col)?),
                "received_at" | "event_date" | "workspace" => {}
                _ => {
                    if let Some(kind) = name.strip_prefix("id:") {
                        let kind = canonical_kind(kind).map_err(|r| Error::invalid(name, r))?;
                        input.ids.push((kind.to_string(), strings(name, col)?));
                    } else if matches!(
                        canonical_kind(name),
                        Ok("phone" | "email" | "unionid" | "openid" | "device" | "member")
                    ) {
                        let kind = canonical_kind(name).unwrap_or(name).to_string();
                        input.ids.push((kind, strings(name, col)?));
                    } else {
                        let c = cast(col, &DataType::Utf8).map_err(|e| {
                            Error::invalid(
                                name,
                                format!(
                                    "column `{name}` of type {} cannot be a property: {e}",
                                    col.data_type()
                                ),
                            )
                        })?;
                        input
                            .props
                            .push((name.to_string(), c.as_string::<i32>().clone()));
                    }
                }
            }
        }
        Ok(input)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Row `i` as a [`RawEvent`] borrowing from the batch.
    pub fn row(&self, i: usize) -> RawEvent<'_> {
        let s = |a| opt_str(a, i);
        let mut identifiers = Vec::with_capacity(self.ids.len());
        self.identifiers_into(i, &mut identifiers);
        let mut properties = Vec::new();
        self.properties_into(i, &mut properties);
        RawEvent {
            event_id: s(&self.event_id),
            event_time: self.time(i),
            channel: s(&self.channel),
            event_type: s(&self.event_type),
            identifiers,
            category: s(&self.typed[0]),
            sku: s(&self.typed[1]),
            currency: s(&self.typed[2]),
            store_id: s(&self.typed[3]),
            campaign: s(&self.typed[4]),
            page: s(&self.typed[5]),
            amount: self.amount(i),
            properties,
        }
    }

    /// Row `i`'s raw identifiers, appended to `out`: the identifier columns
    /// in column order, then the `identifiers` list.
    pub(super) fn identifiers_into<'a>(&'a self, i: usize, out: &mut Vec<(&'a str, &'a str)>) {
        for (kind, a) in &self.ids {
            if a.is_valid(i) {
                out.push((kind.as_str(), a.value(i)));
            }
        }
        if let Some(list) = &self.id_list
            && list.is_valid(i)
        {
            let (start, end) = (
                list.value_offsets()[i] as usize,
                list.value_offsets()[i + 1] as usize,
            );
            let st = list.values().as_struct();
            let kinds = st.column(0).as_string::<i32>();
            let values = st.column(1).as_string::<i32>();
            for j in start..end {
                if kinds.is_valid(j) && values.is_valid(j) {
                    out.push((kinds.value(j), values.value(j)));
                }
            }
        }
    }

    /// Row `i`'s free-form properties, appended to `out`.
    pub(super) fn properties_into<'a>(&'a self, i: usize, out: &mut Vec<(&'a str, &'a str)>) {
        out.extend(
            self.props
                .iter()
                .filter(|(_, a)| a.is_valid(i))
                .map(|(k, a)| (k.as_str(), a.value(i))),
        );
    }

    /// Row `i`'s event time.
    pub(super) fn time(&self, i: usize) -> TimeInput<'_> {
        match &self.event_time {
            None => TimeInput::Missing,
            Some(Time::Micros(a)) if a.is_valid(i) => TimeInput::Micros(a.value(i)),
            Some(Time::Text(a)) if a.is_valid(i) => TimeInput::Text(a.value(i)),
            Some(_) => TimeInput::Missing,
        }
    }

    /// Row `i`'s amount.
    pub(super) fn amount(&self, i: usize) -> AmountInput<'_> {
        match &self.amount {
            Amount::Float(a) if a.is_valid(i) => AmountInput::Float(a.value(i)),
            Amount::Decimal(a, s) if a.is_valid(i) => AmountInput::Decimal(a.value(i), *s),
            Amount::Text(a) if a.is_valid(i) => AmountInput::Text(a.value(i)),
            _ => AmountInput::Missing,
        }
    }

    /// The `event_id` column (as strings), if the batch has one.
    pub(super) fn event_ids(&self) -> Option<&StringArray> {
        self.event_id.as_ref()
    }

    /// The `channel` column, if present.
    pub(super) fn channels(&self) -> Option<&StringArray> {
        self.channel.as_ref()
    }

    /// The `event_type` column, if present.
    pub(super) fn event_types(&self) -> Option<&StringArray> {
        self.event_type.as_ref()
    }

    /// The typed text columns in stored order (category, sku, currency,
    /// store_id, campaign, page), each if present.
    pub(super) fn typed(&self) -> &[Option<StringArray>; 6] {
        &self.typed
    }
}

pub(super) fn opt_str(a: &Option<StringArray>, i: usize) -> Option<&str> {
    match a {
        Some(a) if a.is_valid(i) => Some(a.value(i)),
        _ => None,
    }
}

fn time_column(name: &str, a: &ArrayRef) -> Result<Time> {
    match a.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let t = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let t = cast(&t, &DataType::Int64)?;
            Ok(Time::Micros(
                t.as_primitive::<arrow::datatypes::Int64Type>().clone(),
            ))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            Ok(Time::Text(strings(name, a)?))
        }
        t if t.is_integer() => Ok(Time::Text(strings(name, &cast(a, &DataType::Int64)?)?)),
        t => Err(Error::invalid(
            name,
            format!(
                "column `{name}` has type {t}; expected a timestamp, a string or an epoch integer"
            ),
        )),
    }
}

fn amount_column(a: &ArrayRef) -> Result<Amount> {
    Ok(match a.data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            Amount::Float(cast(a, &DataType::Float64)?.as_primitive().clone())
        }
        t if t.is_integer() => Amount::Decimal(
            cast(a, &DataType::Decimal128(38, 0))?
                .as_primitive()
                .clone(),
            0,
        ),
        DataType::Decimal128(_, s) => Amount::Decimal(a.as_primitive().clone(), *s),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            Amount::Text(strings("amount", a)?)
        }
        DataType::Null => Amount::None,
        t => {
            return Err(Error::invalid(
                "amount",
                format!("column `amount` has type {t}; expected a number or decimal text"),
            ));
        }
    })
}

fn id_list(a: &ArrayRef) -> Result<ListArray> {
    let bad = || {
        Error::invalid(
            "identifiers",
            format!(
                "column `identifiers` has type {}; expected list<struct<kind: string, value: string>>",
                a.data_type()
            ),
        )
    };
    let list = a.as_list_opt::<i32>().ok_or_else(bad)?;
    let st = list.values().as_struct_opt().ok_or_else(bad)?;
    if st.num_columns() != 2 {
        return Err(bad());
    }
    let kinds = strings(
        "identifiers.kind",
        st.column_by_name("kind").ok_or_else(bad)?,
    )?;
    let values = strings(
        "identifiers.value",
        st.column_by_name("value").ok_or_else(bad)?,
    )?;
    let st = StructArray::try_new(
        super::identifier_fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect(),
        vec![Arc::new(kinds), Arc::new(values)],
        st.nulls().cloned(),
    )?;
    let field = Arc::new(arrow::datatypes::Field::new(
        "element",
        st.data_type().clone(),
        true,
    ));
    Ok(ListArray::try_new(
        field,
        list.offsets().clone(),
        Arc::new(st),
        list.nulls().cloned(),
    )?)
}
