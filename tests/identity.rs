//! OneID end to end: gen → ingest → `quiver resolve` → person / explain /
//! dry-run over gRPC, checked against the generator's truth.

use quiver_tests::Server;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_person_explain_and_dry_run_over_grpc() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let gen_dir = tmp.path().join("gen");
    let files = crate::ingest::generate_files(&gen_dir, 400, "parquet");
    let server = Server::start(&tmp.path().join("data"), &[]).unwrap();
    assert!(
        server
            .cli(&["workspace", "create", "shop"])
            .status
            .success()
    );
    let mut args = vec!["--workspace", "shop", "--json", "ingest", "--quiet"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    json(&server.cli(&args));

    // First run: every person is new.
    let r = json(&server.cli(&["--workspace", "shop", "--json", "resolve"]));
    let persons = r["persons"].as_u64().unwrap();
    assert_eq!(r["run"], 1);
    assert!(persons >= 400, "{r}");
    assert_eq!(r["new_persons"].as_u64().unwrap(), persons);
    let live = json(&server.cli(&[
        "--workspace",
        "shop",
        "--json",
        "sql",
        "SELECT count(*) AS n FROM persons WHERE merged_into IS NULL",
    ]));
    assert_eq!(live[0]["n"].as_u64().unwrap(), persons);

    // Accuracy against truth, through SQL like any client.
    let truth = quiver_data::read_truth(&gen_dir.join("truth.parquet")).unwrap();
    let ids = json(&server.cli(&[
        "--workspace",
        "shop",
        "--json",
        "sql",
        "SELECT kind, value, person_id FROM identifiers",
    ]));
    let predicted = ids.as_array().unwrap().iter().map(|r| {
        (
            r["kind"].as_str().unwrap().to_string(),
            r["value"].as_str().unwrap().to_string(),
            r["person_id"].as_str().unwrap().to_string(),
        )
    });
    let acc = quiver_data::pairwise(&truth, predicted);
    assert!(
        acc.precision >= 0.99 && acc.linked_recall >= 0.98,
        "{acc:?}"
    );

    // A person by a phone written the way a cashier would type it.
    let phone = truth
        .iter()
        .filter(|t| t.kind == "phone")
        .find(|t| {
            truth
                .iter()
                .filter(|u| u.true_person == t.true_person)
                .count()
                >= 3
        })
        .unwrap();
    let digits = phone.value.trim_start_matches("+86");
    let typed = format!(
        "phone:+86 {}-{}-{}",
        &digits[..3],
        &digits[3..7],
        &digits[7..]
    );
    let p = json(&server.cli(&["--workspace", "shop", "--json", "person", &typed]));
    let idents = p["identifiers"].as_array().unwrap();
    assert!(
        idents.iter().any(|i| i["value"] == phone.value.as_str()),
        "{p}"
    );
    assert!(!p["latest_events"].as_array().unwrap().is_empty());
    let person_id = p["person_id"].as_str().unwrap().to_string();
    let by_id = json(&server.cli(&["--workspace", "shop", "--json", "person", &person_id]));
    assert_eq!(by_id["identifiers"], p["identifiers"]);

    // Explain: a chain with events behind every link.
    if let Some(other) = idents.iter().find(|i| i["value"] != phone.value.as_str()) {
        let b = format!(
            "{}:{}",
            other["kind"].as_str().unwrap(),
            other["value"].as_str().unwrap()
        );
        let e = json(&server.cli(&["--workspace", "shop", "--json", "explain", &typed, &b]));
        assert_eq!(e["same_person"], true, "{e}");
        let chain = e["chain"].as_array().unwrap();
        assert!(!chain.is_empty());
        for link in chain {
            assert!(link["events"].as_u64().unwrap() >= 1);
            assert!(!link["evidence"].as_array().unwrap().is_empty(), "{link}");
        }
    }

    // Dry run of a rule change: reported, not written, rules not saved.
    let rules = tmp.path().join("rules.toml");
    std::fs::write(
        &rules,
        "max_persons_per_value = 1000000\n[kinds.device]\npriority = 10\n",
    )
    .unwrap();
    let dry = json(&server.cli(&[
        "--workspace",
        "shop",
        "--json",
        "resolve",
        "--dry-run",
        "--rules",
        rules.to_str().unwrap(),
    ]));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["run"], 2);
    let rules_now = server.cli(&["--workspace", "shop", "rules"]);
    assert!(String::from_utf8_lossy(&rules_now.stdout).contains("[kinds.member]"));

    // A second real run on the same events keeps every id.
    let again = json(&server.cli(&["--workspace", "shop", "--json", "resolve"]));
    assert_eq!(again["run"], 2);
    assert_eq!(again["kept"].as_u64().unwrap(), persons, "{again}");
    assert_eq!(again["merges"], 0);
    // Nothing was ingested since run 1: an incremental run with nothing to do.
    assert_eq!(again["incremental"], true, "{again}");
    assert_eq!(again["events"], 0);
    let full = json(&server.cli(&["--workspace", "shop", "--json", "resolve", "--full"]));
    assert_eq!(full["incremental"], false);
    assert_eq!(full["kept"].as_u64().unwrap(), persons, "{full}");
    let by_id2 = json(&server.cli(&["--workspace", "shop", "--json", "person", &person_id]));
    assert_eq!(by_id2["ordinal"], p["ordinal"]);

    // Errors name what is wrong.
    std::fs::write(&rules, "[kinds.phone]\nprority = 1\n").unwrap();
    let bad = server.cli(&[
        "--workspace",
        "shop",
        "resolve",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("prority"));
    let missing = server.cli(&["--workspace", "nope", "resolve"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    let unknown = server.cli(&["--workspace", "shop", "person", "email:nobody@example.cn"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody@example.cn"));
}
