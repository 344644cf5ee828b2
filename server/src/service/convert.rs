//! Proto messages to engine types and back. No logic beyond the mapping.

use quiver_engine::event::{AmountInput, TimeInput};
use quiver_engine::{IngestReport, RawEvent};
use quiver_proto::v1 as pb;

/// Borrows a proto event as a [`RawEvent`].
pub fn raw_event(e: &pb::Event) -> RawEvent<'_> {
    let event_time = if !e.event_time.is_empty() {
        TimeInput::Text(&e.event_time)
    } else if e.event_time_unix_ms != 0 {
        TimeInput::Micros(e.event_time_unix_ms.saturating_mul(1000))
    } else {
        TimeInput::Missing
    };
    let mut properties: Vec<(&str, &str)> = e
        .properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    properties.sort_unstable();
    RawEvent {
        event_id: Some(&e.event_id),
        event_time,
        channel: Some(&e.channel),
        event_type: Some(&e.r#type),
        identifiers: e
            .identifiers
            .iter()
            .map(|i| (i.kind.as_str(), i.value.as_str()))
            .collect(),
        category: e.category.as_deref(),
        sku: e.sku.as_deref(),
        amount: e
            .amount
            .as_deref()
            .map_or(AmountInput::Missing, AmountInput::Text),
        currency: e.currency.as_deref(),
        store_id: e.store_id.as_deref(),
        campaign: e.campaign.as_deref(),
        page: e.page.as_deref(),
        properties,
    }
}

/// A [`RawEvent`] as a proto event (the client side of `quiver ingest`).
pub fn proto_event(e: &RawEvent<'_>) -> pb::Event {
    let s = |v: Option<&str>| v.map(str::to_string);
    let (event_time, event_time_unix_ms) = match e.event_time {
        TimeInput::Text(t) => (t.to_string(), 0),
        TimeInput::Micros(m) => (String::new(), m.div_euclid(1000)),
        TimeInput::Missing => (String::new(), 0),
    };
    pb::Event {
        event_id: e.event_id.unwrap_or_default().to_string(),
        event_time,
        event_time_unix_ms,
        channel: e.channel.unwrap_or_default().to_string(),
        r#type: e.event_type.unwrap_or_default().to_string(),
        identifiers: e
            .identifiers
            .iter()
            .map(|(k, v)| pb::Identifier {
                kind: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        category: s(e.category),
        sku: s(e.sku),
        amount: match e.amount {
            AmountInput::Missing => None,
            AmountInput::Text(t) => Some(t.to_string()),
            AmountInput::Float(f) if f.is_nan() => None,
            AmountInput::Float(f) => Some(format!("{f:.2}")),
            AmountInput::Decimal(v, scale) => Some(decimal_text(v, scale)),
        },
        currency: s(e.currency),
        store_id: s(e.store_id),
        campaign: s(e.campaign),
        page: s(e.page),
        properties: e
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn decimal_text(v: i128, scale: i8) -> String {
    if scale <= 0 {
        return format!("{}", v * 10i128.pow(scale.unsigned_abs() as u32));
    }
    let d = 10i128.pow(scale as u32);
    let sign = if v < 0 { "-" } else { "" };
    let v = v.abs();
    format!("{sign}{}.{:0width$}", v / d, v % d, width = scale as usize)
}

/// An engine report as an ack.
pub fn ack(batch_seq: u64, r: IngestReport) -> pb::IngestAck {
    pb::IngestAck {
        batch_seq,
        accepted: r.accepted,
        duplicates: r.duplicates,
        rejected: r
            .rejected
            .into_iter()
            .map(|e| pb::RowError {
                row: e.row as u32,
                field: e.field,
                value: e.value,
                reason: e.reason,
            })
            .collect(),
        dropped_identifiers: r
            .dropped_identifiers
            .into_iter()
            .map(|(reason, count)| pb::DroppedIdentifiers { reason, count })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print() {
        assert_eq!(decimal_text(19990, 2), "199.90");
        assert_eq!(decimal_text(-5, 2), "-0.05");
        assert_eq!(decimal_text(12, 0), "12");
    }

    #[test]
    fn round_trip() {
        let raw = RawEvent {
            event_id: Some("e1"),
            event_time: TimeInput::Micros(1_700_000_000_123_000),
            channel: Some("pos"),
            event_type: Some("purchase"),
            identifiers: vec![("phone", "13800138000")],
            amount: AmountInput::Float(12.5),
            properties: vec![("coupon_id", "C1")],
            ..Default::default()
        };
        let pb = proto_event(&raw);
        let back = raw_event(&pb);
        assert_eq!(back.event_time, TimeInput::Micros(1_700_000_000_123_000));
        assert_eq!(back.amount, AmountInput::Text("12.50"));
        assert_eq!(back.identifiers, raw.identifiers);
        assert_eq!(back.properties, raw.properties);
    }
}
