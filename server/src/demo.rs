//! `quiver demo`: the main job end to end on the embedded default — generate
//! persons with known truth, start a server on a free loopback port, ingest
//! over gRPC, commit to Delta, answer questions with SQL, print a report.
//! Then OneID (accuracy against the truth) and the generator's seed tags
//! (coverage and build time); segments come next.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::AsArray;
use quiver_proto::v1 as pb;
use quiver_proto::v1::workspace_service_client::WorkspaceServiceClient;

use crate::cli::DemoArgs;
use crate::client::{self, output, status_error};
use crate::config::ServerConfig;

const WORKSPACE: &str = "demo";

struct Step {
    name: &'static str,
    seconds: f64,
    detail: String,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    let tmp;
    let root = match &args.data {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut steps = Vec::new();
    println!(
        "Quiver demo: {} persons, data in {}",
        args.persons,
        root.display()
    );

    // 1. generate
    let t = Instant::now();
    let gen_cfg = quiver_data::GenConfig {
        persons: args.persons,
        out: root.join("generated"),
        format: quiver_data::Format::Parquet,
        ..Default::default()
    };
    let bar = output::progress(args.persons, "persons generated", false);
    let generated = quiver_data::generate(&gen_cfg, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    steps.push(Step {
        name: "generate",
        seconds: t.elapsed().as_secs_f64(),
        detail: format!(
            "{} persons, {} events, {} truth identifiers",
            generated.persons, generated.events, generated.truth_rows
        ),
    });

    // 2. an embedded server on a free loopback port
    let t = Instant::now();
    let cfg = ServerConfig {
        data_dir: root.join("data"),
        ..Default::default()
    };
    let engine = quiver_engine::Engine::open(cfg.engine()).await?;
    let listener = crate::service::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::service::serve(
        Arc::clone(&engine),
        cfg.auth.clone(),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    let url = format!("http://{addr}");
    let channel = client::connect(&url).await?;
    WorkspaceServiceClient::new(channel.clone())
        .create_workspace(pb::CreateWorkspaceRequest {
            name: WORKSPACE.into(),
        })
        .await
        .map_err(status_error)?;
    steps.push(Step {
        name: "start server",
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("gRPC + Flight on {addr}, workspace `{WORKSPACE}`"),
    });

    // 3. ingest over the gRPC stream
    let opts = client::ingest::Options {
        mapping: None,
        batch_rows: 4096,
        transport: client::ingest::Transport::Grpc,
        progress: true,
        token: None,
    };
    let s =
        client::ingest::ingest_files(channel.clone(), WORKSPACE, &generated.files, &opts).await?;
    steps.push(Step {
        name: "ingest (gRPC, fsync per ack)",
        seconds: s.elapsed.as_secs_f64(),
        detail: format!(
            "{} accepted, {} duplicates, {} rejected; {:.0} events/s",
            s.accepted,
            s.duplicates,
            s.rejected,
            s.sent as f64 / s.elapsed.as_secs_f64().max(1e-9)
        ),
    });

    // 4. commit to Delta
    let t = Instant::now();
    let flushed = WorkspaceServiceClient::new(channel.clone())
        .flush(pb::FlushRequest {
            workspace: WORKSPACE.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    steps.push(Step {
        name: "flush to Delta",
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("{} rows, table version {}", flushed.rows, flushed.version),
    });

    // 5. OneID
    let report = client::identity::resolve(
        channel.clone(),
        WORKSPACE,
        false,
        false,
        String::new(),
        false,
    )
    .await?;
    steps.push(Step {
        name: "resolve identities (OneID)",
        seconds: report.seconds,
        detail: format!(
            "{} events, {} identifier values → {} persons; {} quarantined values, {} refused unions",
            report.events, report.identifiers, report.persons, report.quarantined_count, report.refused_count
        ),
    });
    let truth = quiver_data::read_truth(&root.join("generated").join("truth.parquet"))?;
    let placed = client::sql(
        channel.clone(),
        WORKSPACE,
        "SELECT kind, value, person_id FROM identifiers",
    )
    .await?;
    let mut predicted = Vec::new();
    for b in &placed {
        let cols: Vec<_> = (0..3)
            .map(|i| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let cols: Vec<&arrow::array::StringArray> =
            cols.iter().map(|c| c.as_string::<i32>()).collect();
        for r in 0..b.num_rows() {
            predicted.push((
                cols[0].value(r).to_string(),
                cols[1].value(r).to_string(),
                cols[2].value(r).to_string(),
            ));
        }
    }
    let acc = quiver_data::pairwise(&truth, predicted);
    let accuracy = format!(
        "persons found {} vs true persons {}\npairwise precision {:.4}, recall {:.4} (over pairs the events link: {:.4})\n{} true pairs, {} linked by some chain of the person's own events",
        report.persons,
        generated.persons,
        acc.precision,
        acc.recall,
        acc.linked_recall,
        acc.true_pairs,
        acc.linked_pairs
    );

    // 6. tags: the generator's seed tags, refreshed with "now" at the data's last day
    let t = Instant::now();
    let seed = std::fs::read_to_string(root.join("generated").join("tags.toml"))
        .context("the generator's tags.toml")?;
    quiver_proto::v1::tag_service_client::TagServiceClient::new(channel.clone())
        .define(pb::DefineTagsRequest {
            workspace: WORKSPACE.into(),
            text: seed,
            format: pb::DefinitionFormat::Toml as i32,
        })
        .await
        .map_err(status_error)?;
    let now_ms = gen_cfg
        .end_date
        .and_hms_opt(23, 59, 59)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default();
    let tags = client::tags::refresh(channel.clone(), WORKSPACE, now_ms, false, false).await?;
    steps.push(Step {
        name: "seed tags (define + refresh)",
        seconds: t.elapsed().as_secs_f64(),
        detail: format!(
            "{} tags over {} persons, index version {}, {:.1} MiB; now = {}",
            tags.tags.len(),
            tags.persons,
            tags.version,
            tags.index_bytes as f64 / (1 << 20) as f64,
            gen_cfg.end_date
        ),
    });

    // 7. audience questions from the seed tags, over the SegmentService
    let audiences = [
        (
            "lapsed VIP skincare lovers",
            "member_level = 'vip' AND skincare_lover AND NOT did(purchase) IN LAST 30 DAYS",
            "registered_channel",
        ),
        (
            "mini-program browsers of skincare who did not buy",
            "miniprogram_user AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS AND NOT did(purchase) IN LAST 14 DAYS",
            "member_level",
        ),
        (
            "active big spenders among gold and VIP",
            "(highly_active OR total_spend >= 1000) AND member_level IN ('gold', 'vip')",
            "city",
        ),
    ];
    let mut segment_client =
        quiver_proto::v1::segment_service_client::SegmentServiceClient::new(channel.clone());
    let mut audience_answers = Vec::new();
    for (title, expr, by) in audiences {
        let t = Instant::now();
        let r = segment_client
            .breakdown(pb::BreakdownRequest {
                workspace: WORKSPACE.into(),
                audience: Some(pb::Audience {
                    expression: expr.into(),
                    now_unix_ms: now_ms,
                    ..Default::default()
                }),
                by: by.into(),
                edges: Vec::new(),
            })
            .await
            .map_err(status_error)
            .with_context(|| format!("audience `{title}`"))?
            .into_inner();
        audience_answers.push((title, expr, by, t.elapsed().as_secs_f64(), r));
    }

    // 8. questions
    let questions = [
        (
            "events by channel",
            "SELECT channel, count(*) AS events, count(DISTINCT event_type) AS types FROM events GROUP BY channel ORDER BY events DESC",
        ),
        (
            "events by type",
            "SELECT event_type, count(*) AS events, sum(amount) AS amount FROM events GROUP BY event_type ORDER BY events DESC",
        ),
        (
            "persons by number of identifiers",
            "SELECT identifiers, count(*) AS persons FROM persons WHERE merged_into IS NULL GROUP BY identifiers ORDER BY identifiers LIMIT 10",
        ),
        (
            "identifiers by kind",
            "SELECT i.kind AS kind, count(*) AS occurrences, count(DISTINCT i.value) AS distinct_values FROM (SELECT unnest(identifiers) AS i FROM events) GROUP BY i.kind ORDER BY occurrences DESC",
        ),
    ];
    let mut answers = Vec::new();
    for (title, q) in questions {
        let t = Instant::now();
        let batches = client::sql(channel.clone(), WORKSPACE, q)
            .await
            .with_context(|| format!("query `{title}`"))?;
        let secs = t.elapsed().as_secs_f64();
        answers.push((title, secs, output::format_batches(&batches, false)?));
    }
    let _ = stop_tx.send(());
    server.await??;
    engine.flush_all().await?;

    println!();
    println!("== timings ==");
    for s in &steps {
        println!("{:<30} {:>8.2}s  {}", s.name, s.seconds, s.detail);
    }
    if !s.dropped_identifiers.is_empty() {
        let d: Vec<String> = s
            .dropped_identifiers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("junk identifiers dropped: {}", d.join(", "));
    }
    for r in s.first_rejections.iter().take(3) {
        println!(
            "e.g. rejected: row {}, field `{}`, value `{}`: {}",
            r.row, r.field, r.value, r.reason
        );
    }
    for (title, secs, table) in answers {
        println!();
        println!("== {title} ({:.1} ms) ==", secs * 1000.0);
        println!("{table}");
    }
    println!();
    println!("== identity accuracy against truth.parquet ==");
    println!("{accuracy}");
    println!();
    println!("== seed tags: coverage and build time ==");
    client::tags::print_refresh(&tags, false);
    for (title, expr, by, secs, r) in audience_answers {
        let persons = r.evaluated.as_ref().map_or(0, |e| e.persons);
        let server_ms = r
            .evaluated
            .as_ref()
            .map_or(0.0, |e| e.micros as f64 / 1000.0);
        println!();
        println!("== audience: {title} ==");
        println!("{expr}");
        println!(
            "{} of {persons} persons; {server_ms:.2} ms in the engine, {:.1} ms round trip over gRPC",
            r.count,
            secs * 1000.0
        );
        let mut t = comfy_table::Table::new();
        t.set_header([by, "persons"]);
        for row in r.rows.iter().take(8) {
            t.add_row([row.value.clone(), row.count.to_string()]);
        }
        if r.rows.len() > 8 {
            let rest: u64 = r.rows[8..].iter().map(|x| x.count).sum();
            t.add_row([format!("({} more)", r.rows.len() - 8), rest.to_string()]);
        }
        println!("{t}");
    }
    println!();
    println!("demo finished in {:.1}s", total.elapsed().as_secs_f64());
    Ok(())
}
