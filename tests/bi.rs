//! BI access end to end: a Flight SQL client not written by us (the Python
//! ADBC driver from PyPI) browses and queries the real `quiver` binary; its
//! answers must equal what `quiver sql` gives. Tokens and basic auth decide
//! which workspaces a connection sees.

use std::process::Command;

use serde_json::{Value, json};

use crate::tags::Shop;

const TOKEN: &str = "bi-token";
const USER: &str = "analyst";
const PASSWORD: &str = "s3cret-pw";

/// Rows of `quiver sql Q --json` as lists in column order `cols`.
fn quiver_rows(shop: &Shop, q: &str, cols: &[&str]) -> Value {
    let rows: Vec<Value> = shop
        .sql(q)
        .into_iter()
        .map(|r| Value::Array(cols.iter().map(|c| r[*c].clone()).collect()))
        .collect();
    Value::Array(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_browses_and_queries_like_quiver_sql() {
    crate::tags::require_python(
        "import adbc_driver_flightsql.dbapi, pyarrow",
        "adbc-driver-flightsql pyarrow",
    );
    let tokens = format!(r#"[{{token = "{TOKEN}", workspaces = ["shop"]}}]"#);
    let users = format!(r#"[{{name = "{USER}", password = "{PASSWORD}", workspaces = ["*"]}}]"#);
    let shop = Shop::start(
        150,
        &[
            ("QUIVER_AUTH__TOKENS", &tokens),
            ("QUIVER_AUTH__USERS", &users),
        ],
        true,
    );
    shop.define_seed();
    shop.refresh();
    // A second workspace the token does not open.
    let out = shop.server.cli(&["workspace", "create", "secret"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack = quiver_proto::v1::ingest_service_client::IngestServiceClient::new(
        shop.server.channel().await,
    )
    .ingest_batch(quiver_proto::v1::IngestRequest {
        workspace: "secret".into(),
        batch_seq: 0,
        events: vec![quiver_tests::event("s1", "13800138000")],
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ack.accepted, 1, "{ack:?}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/adbc_client.py");
    let url = shop.server.url().replace("http://", "grpc://");
    let out = Command::new("python3")
        .args([script, &url, TOKEN, USER, PASSWORD])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "adbc_client.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    // Browsing: one catalog, the granted workspace only, its tables with
    // their columns.
    assert_eq!(got["vendor_name"], "Quiver");
    assert_eq!(got["catalogs"], json!(["quiver"]));
    assert_eq!(got["schemas"], json!(["information_schema", "shop"]));
    let tables: Vec<&str> = got["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "shop.events:VIEW",
        "shop.identifiers:TABLE",
        "shop.persons:TABLE",
        "shop.identity_history:TABLE",
        "shop.profiles:TABLE",
        "shop.person_tags:TABLE",
    ] {
        assert!(tables.contains(&t), "{t} missing from {tables:?}");
    }
    assert!(
        !tables.iter().any(|t| t.starts_with("secret.")),
        "{tables:?}"
    );
    let columns = got["events_columns"].as_array().unwrap();
    for c in [
        "event_id",
        "event_time",
        "channel",
        "identifiers",
        "person_id",
        "ordinal",
    ] {
        assert!(columns.contains(&json!(c)), "events lacks {c}: {columns:?}");
    }
    assert_eq!(got["table_types"], json!(["TABLE", "VIEW"]));

    // Queries: the same answers as `quiver sql`.
    assert_eq!(
        got["by_channel"]["rows"],
        quiver_rows(
            &shop,
            "SELECT channel, count(*) AS n FROM events GROUP BY channel ORDER BY channel",
            &["channel", "n"]
        )
    );
    assert_eq!(
        got["prepared_pos"]["rows"],
        quiver_rows(
            &shop,
            "SELECT count(*) AS n FROM events WHERE channel = 'pos'",
            &["n"]
        )
    );
    assert!(got["prepared_pos"]["rows"][0][0].as_i64().unwrap() > 0);
    assert_eq!(
        got["prepared_purchase"]["rows"],
        quiver_rows(
            &shop,
            "SELECT count(*) AS n FROM events WHERE event_type = 'purchase' AND channel <> 'pos'",
            &["n"]
        )
    );
    let joined = quiver_rows(
        &shop,
        "SELECT e.event_type, count(*) AS n FROM events e JOIN segment('skincare_lover') s ON e.person_id = s.person_id GROUP BY 1 ORDER BY 1",
        &["event_type", "n"],
    );
    assert_eq!(got["segment_join"]["rows"], joined);
    assert!(!joined.as_array().unwrap().is_empty());
    let mini = shop.json(&["count", "miniprogram_user", "--now", crate::tags::NOW]);
    assert_eq!(got["in_segment"]["rows"][0][0], mini["count"], "{mini}");
    assert_eq!(
        got["person_tags"]["rows"],
        quiver_rows(
            &shop,
            "SELECT tag, count(*) AS n FROM person_tags GROUP BY tag ORDER BY tag",
            &["tag", "n"]
        )
    );
    assert_eq!(
        got["identifiers_sample"]["rows"],
        quiver_rows(
            &shop,
            "SELECT kind, value, person_id FROM identifiers ORDER BY kind, value LIMIT 5",
            &["kind", "value", "person_id"]
        )
    );
    // Plain types on the wire (no string views), for every client.
    assert_eq!(got["by_channel"]["types"], json!(["string", "int64"]));

    // What the token must not do.
    let secret = got["secret_error"].as_str().unwrap_or_default();
    assert!(secret.contains("secret"), "{}", got["secret_error"]);
    assert!(got["ddl_error"].is_string(), "{}", got["ddl_error"]);
    let wrong = got["wrong_token_error"].as_str().unwrap_or_default();
    assert!(
        wrong.to_lowercase().contains("unauthenticated") || wrong.contains("bearer"),
        "{wrong}"
    );

    // Basic auth: a session token granting every workspace, default by header.
    assert_eq!(got["basic_secret"]["rows"], json!([[1]]));
    assert_eq!(
        got["basic_shop"]["rows"],
        quiver_rows(&shop, "SELECT count(*) AS n FROM events", &["n"])
    );
}

/// The funnel `ad_click → add_to_cart → purchase` within 7 days, in SQL:
/// per first-step event the earliest second step, then any third step,
/// inside the window (bench/ runs the same shape in DuckDB).
const FUNNEL_SQL: &str = "WITH e AS (SELECT person_id AS p, event_type AS t, event_time AS ts FROM events WHERE person_id IS NOT NULL), \
s1 AS (SELECT p, ts AS t1 FROM e WHERE t = 'ad_click'), \
s2 AS (SELECT s1.p, s1.t1, min(e.ts) AS t2 FROM s1 JOIN e ON e.p = s1.p AND e.t = 'add_to_cart' AND e.ts >= s1.t1 AND e.ts <= s1.t1 + INTERVAL '7 days' GROUP BY s1.p, s1.t1), \
s3 AS (SELECT DISTINCT s2.p FROM s2 JOIN e ON e.p = s2.p AND e.t = 'purchase' AND e.ts >= s2.t2 AND e.ts <= s2.t1 + INTERVAL '7 days') \
SELECT (SELECT count(DISTINCT p) FROM s1) AS a, (SELECT count(DISTINCT p) FROM s2) AS b, (SELECT count(*) FROM s3) AS c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_retention_and_attribution_over_the_cli_match_sql() {
    let shop = Shop::start(200, &[], true);
    let f = shop.json(&[
        "funnel",
        "ad_click",
        "add_to_cart",
        "purchase",
        "--window-days",
        "7",
        "--by",
        "channel",
    ]);
    let sql = &shop.sql(FUNNEL_SQL)[0];
    let got: Vec<&Value> = f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["persons"])
        .collect();
    assert_eq!(got, vec![&sql["a"], &sql["b"], &sql["c"]], "{f}");
    assert!(sql["c"].as_u64().unwrap() > 0, "{sql}");
    let by_channel: u64 = f["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["persons"][0].as_u64().unwrap())
        .sum();
    assert_eq!(by_channel, sql["a"].as_u64().unwrap());

    // Retention: cohort sizes are the persons whose first event is in each
    // week, over the first 8 weeks of data.
    let first = shop.sql("SELECT CAST(min(event_time) AS DATE) AS d FROM events")[0]["d"]
        .as_str()
        .unwrap()
        .to_string();
    let from = chrono::NaiveDate::parse_from_str(&first, "%Y-%m-%d").unwrap();
    let to = from + chrono::Duration::days(56);
    let (from, to) = (from.to_string(), to.to_string());
    let r = shop.json(&["retention", "--from", &from, "--to", &to, "--periods", "4"]);
    let sizes = shop.sql(&format!(
        "SELECT CAST(date_trunc('week', t0) AS DATE) AS c, count(*) AS n FROM \
         (SELECT person_id, min(event_time) AS t0 FROM events WHERE person_id IS NOT NULL GROUP BY person_id) \
         WHERE t0 >= '{from}T00:00:00Z' AND t0 < '{to}T00:00:00Z' GROUP BY 1 ORDER BY 1"
    ));
    let got: Vec<(String, u64)> = r["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["persons"].as_u64().unwrap() > 0)
        .map(|c| {
            // Period 0 always holds the cohort event itself.
            assert_eq!(c["retained"][0], c["persons"], "{c}");
            (
                c["start"].as_str().unwrap().to_string(),
                c["persons"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = sizes
        .iter()
        .map(|row| {
            (
                row["c"].as_str().unwrap().to_string(),
                row["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());

    // Attribution: every purchase of a person is credited once per model.
    let a = shop.json(&["attribution", "--lookback-days", "30"]);
    let purchases = &shop.sql(
        "SELECT count(*) AS n FROM events WHERE event_type = 'purchase' AND person_id IS NOT NULL",
    )[0]["n"];
    assert_eq!(&a["conversions"], purchases, "{a}");
    for model in ["first_touch", "last_touch", "linear"] {
        let total: f64 = a["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[model].as_f64().unwrap())
            .sum();
        assert!(
            (total - purchases.as_f64().unwrap()).abs() < 1e-6,
            "{model}: {total}"
        );
    }

    // A typo is an error naming it, and the CLI exits non-zero.
    let err = shop.fails(&["funnel", "ad_click", "purchse"]);
    assert!(err.contains("purchse") && err.contains("purchase"), "{err}");
}
