//! The event model: what a person did on a channel at a time.
//!
//! Owns the stored Arrow schema of the `events` table ([`events_schema`]), the
//! borrowed input form every transport converts to ([`RawEvent`]), row
//! validation with a reason per rejected row, and identifier normalisation
//! (`normalize`). Storage of validated batches lives in `store`.

mod columnar;
mod input;
pub(crate) mod normalize;
mod validate;

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

pub(crate) use columnar::validate as validate_columns;
pub use input::{ArrowInput, FILE_COLUMNS};
pub use normalize::{NormalizeConfig, Normalized, Normalizer};
pub(crate) use validate::{BatchValidator, ValidatedBatch, event_key};

/// Precision and scale of the `amount` column: `Decimal128(18, 2)`, in currency units.
pub const AMOUNT_PRECISION: u8 = 18;
/// Scale of `amount`: cents.
pub const AMOUNT_SCALE: i8 = 2;

/// The timezone of every stored timestamp.
pub const TZ: &str = "UTC";

/// Typed common properties, in stored column order.
pub const TYPED_PROPERTIES: [&str; 7] = [
    "category", "sku", "amount", "currency", "store_id", "campaign", "page",
];

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(TZ.into()))
}

/// The struct of one identifier: `kind`, `value` (normalised).
pub fn identifier_fields() -> Fields {
    Fields::from(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ])
}

/// The map entry struct of `properties`.
pub(crate) fn property_entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ])
}

static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = || Field::new("", DataType::Utf8, true);
    let named = |name: &str| s().with_name(name);
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("received_at", timestamp_type(), false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new(
            "identifiers",
            // Elements are declared nullable although validation never
            // stores a null one: a non-nullable nested field makes every
            // Delta write evaluate a per-row `array_compact` check.
            DataType::List(Arc::new(Field::new(
                "element",
                DataType::Struct(identifier_fields()),
                true,
            ))),
            false,
        ),
        named("category"),
        named("sku"),
        Field::new(
            "amount",
            DataType::Decimal128(AMOUNT_PRECISION, AMOUNT_SCALE),
            true,
        ),
        named("currency"),
        named("store_id"),
        named("campaign"),
        named("page"),
        Field::new(
            "properties",
            DataType::Map(
                Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(property_entry_fields()),
                    false,
                )),
                false,
            ),
            true,
        ),
        Field::new("event_date", DataType::Date32, false),
    ]))
});

/// The stored schema of a workspace's `events` table (Delta and memtable alike).
///
/// `event_date` (UTC date of `event_time`) is the Delta partition column.
pub fn events_schema() -> SchemaRef {
    EVENTS_SCHEMA.clone()
}

/// An event time as it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeInput<'a> {
    /// Not given.
    Missing,
    /// Text: RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), or epoch seconds / milliseconds.
    Text(&'a str),
    /// Microseconds since the Unix epoch, UTC.
    Micros(i64),
}

/// An amount as it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AmountInput<'a> {
    /// Not given.
    Missing,
    /// Decimal text such as `199.90`.
    Text(&'a str),
    /// A float, rounded to cents.
    Float(f64),
    /// A scaled integer: `value / 10^scale`.
    Decimal(i128, i8),
}

/// One event as a transport delivered it, borrowed from the request.
///
/// Every transport (gRPC messages, Arrow batches from Flight or files)
/// converts to this form; [`Workspace::ingest`](crate::Workspace::ingest)
/// validates and normalises it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent<'a> {
    /// The idempotency key.
    pub event_id: Option<&'a str>,
    /// When it happened.
    pub event_time: TimeInput<'a>,
    /// Where: `pos`, `miniprogram`, `tmall`, ...
    pub channel: Option<&'a str>,
    /// What: `page_view`, `purchase`, ...
    pub event_type: Option<&'a str>,
    /// `(kind, value)` pairs, raw.
    pub identifiers: Vec<(&'a str, &'a str)>,
    /// Product category.
    pub category: Option<&'a str>,
    /// Stock keeping unit.
    pub sku: Option<&'a str>,
    /// Money amount.
    pub amount: AmountInput<'a>,
    /// ISO 4217 currency code.
    pub currency: Option<&'a str>,
    /// Store where it happened.
    pub store_id: Option<&'a str>,
    /// Marketing campaign.
    pub campaign: Option<&'a str>,
    /// Page or screen.
    pub page: Option<&'a str>,
    /// Everything else.
    pub properties: Vec<(&'a str, &'a str)>,
}

impl Default for RawEvent<'_> {
    fn default() -> Self {
        RawEvent {
            event_id: None,
            event_time: TimeInput::Missing,
            channel: None,
            event_type: None,
            identifiers: Vec::new(),
            category: None,
            sku: None,
            amount: AmountInput::Missing,
            currency: None,
            store_id: None,
            campaign: None,
            page: None,
            properties: Vec::new(),
        }
    }
}

/// Why one row of a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Index of the row in its batch.
    pub row: u64,
    /// The field at fault (`event_time`, `identifiers[1].value`, ...).
    pub field: String,
    /// The offending value (cut to 80 characters).
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "row {}, field `{}`, value `{}`: {}",
            self.row, self.field, self.value, self.reason
        )
    }
}

/// The outcome of ingesting one batch: returned only after the accepted rows
/// are fsynced to the write-ahead log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Rows stored.
    pub accepted: u64,
    /// Rows whose `event_id` was seen before (within the dedup window or earlier in the batch).
    pub duplicates: u64,
    /// Rows rejected, each with its reason.
    pub rejected: Vec<RowError>,
    /// Identifier values dropped from accepted rows, counted by reason
    /// (`blocklisted phone`, `empty email`, ...).
    pub dropped_identifiers: Vec<(String, u64)>,
}
