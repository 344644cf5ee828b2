//! Segments end to end: gen → ingest → resolve → seed tags → `quiver count /
//! breakdown / export / segments ...` and the SegmentService over gRPC, each
//! answer checked against sets rebuilt here from exported tag bitmaps,
//! `quiver sql` rows, or another call; exported audiences read by pyroaring.

use std::collections::{BTreeMap, BTreeSet};

use quiver_proto::v1 as pb;
use quiver_proto::v1::segment_service_client::SegmentServiceClient;
use quiver_tests::RoaringBitmap;
use serde_json::Value;

use crate::tags::{
    LEVELS, NOW, NOW_MS, Shop, count, per_value, pyroaring_read, read_bitmap, require_pyroaring,
};

/// A shop with the seed tags refreshed as of `NOW`.
fn shop(persons: u64) -> Shop {
    let shop = Shop::start(persons, &[], true);
    shop.define_seed();
    shop.refresh();
    shop
}

/// `quiver count EXPR --now NOW --json`.
fn count_of(shop: &Shop, expr: &str) -> u64 {
    let r = shop.json(&["count", expr, "--now", NOW]);
    r["count"].as_u64().unwrap_or_else(|| panic!("{expr}: {r}"))
}

/// A tag's (or enum value's) members, exported.
fn members(shop: &Shop, name: &str, value: Option<&str>) -> RoaringBitmap {
    read_bitmap(&shop.export(name, value).1)
}

/// `quiver export EXPR -o FILE --now NOW` as a bitmap.
fn exported(shop: &Shop, expr: &str, file: &str) -> RoaringBitmap {
    let path = shop.path(file);
    let out = path.display().to_string();
    let r = shop.json(&["export", expr, "--now", NOW, "-o", &out]);
    let b = read_bitmap(&path);
    assert_eq!(r["count"].as_u64(), Some(b.len()), "{r}");
    b
}

/// `quiver export EXPR --format ids --id-kind KIND [--hash sha256]`: the
/// lines written, and the JSON summary.
fn export_ids(shop: &Shop, expr: &str, kind: &str, sha256: bool) -> (BTreeSet<String>, Value) {
    let path = shop.path(&format!("ids-{}.txt", kind.replace(':', "_")));
    let out = path.display().to_string();
    let mut args = vec!["export", expr, "--format", "ids", "--id-kind", kind];
    if sha256 {
        args.extend(["--hash", "sha256"]);
    }
    args.extend(["--now", NOW, "-o", &out]);
    let r = shop.json(&args);
    let lines = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (lines, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_breakdowns_and_overlaps_equal_set_algebra_on_the_tags() {
    let shop = shop(400);
    let report = shop.json(&["tags", "list"]);
    let lovers = members(&shop, "skincare_lover", None);
    let mini = members(&shop, "miniprogram_user", None);
    let levels: BTreeMap<&str, RoaringBitmap> = LEVELS
        .iter()
        .map(|l| (*l, members(&shop, "member_level", Some(l))))
        .collect();
    assert!(lovers.len() > 5 && mini.len() > 5, "{report}");

    // Counts.
    let r = shop.json(&["count", "skincare_lover", "--now", NOW]);
    assert_eq!(r["count"].as_u64(), Some(count(&report, "skincare_lover")));
    assert_eq!(r["evaluated"]["index_version"], 1, "{r}");
    assert_eq!(r["evaluated"]["now_unix_ms"], NOW_MS + 999, "{r}");
    assert_eq!(
        count_of(&shop, "member_level = 'vip' AND NOT skincare_lover"),
        (&levels["vip"] - &lovers).len()
    );
    assert_eq!(
        count_of(&shop, "miniprogram_user OR member_level IN ('gold', 'vip')"),
        (&mini | &levels["gold"] | &levels["vip"]).len()
    );
    assert_eq!(
        count_of(&shop, "member_level != 'normal' AND NOT miniprogram_user"),
        ((&levels["silver"] | &levels["gold"] | &levels["vip"]) - &mini).len()
    );

    // Breakdown by an enumerated tag: one row per level, then the rest.
    let b = shop.json(&[
        "breakdown",
        "skincare_lover",
        "--by",
        "member_level",
        "--now",
        NOW,
    ]);
    let rows = per_value(&b["rows"]);
    let mut want = BTreeMap::new();
    let mut any = RoaringBitmap::new();
    for (l, m) in &levels {
        let n = (&lovers & m).len();
        if n > 0 {
            want.insert(l.to_string(), n);
        }
        any |= m;
    }
    let none = (&lovers - &any).len();
    if none > 0 {
        want.insert("(none)".to_string(), none);
    }
    assert_eq!(rows, want, "{b}");
    assert_eq!(b["count"].as_u64(), Some(lovers.len()));

    // By numeric buckets: they partition the members with a value.
    let b = shop.json(&[
        "breakdown",
        "member_level IN ('gold', 'vip')",
        "--by",
        "total_spend",
        "--edges",
        "0,100,1000",
        "--now",
        NOW,
    ]);
    let labels: Vec<&str> = b["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"[0.00, 100.00)") && labels.contains(&"[100.00, 1000.00)"),
        "{b}"
    );
    let sum: u64 = per_value(&b["rows"]).values().sum();
    assert_eq!(sum, (&levels["gold"] | &levels["vip"]).len(), "{b}");
    // Ten equal-width buckets without edges.
    let b = shop.json(&[
        "breakdown",
        "skincare_lover",
        "--by",
        "total_spend",
        "--now",
        NOW,
    ]);
    let sum: u64 = per_value(&b["rows"]).values().sum();
    assert_eq!(sum, lovers.len(), "{b}");

    // Overlap: every intersection.
    let o = shop.json(&[
        "segments",
        "overlap",
        "skincare_lover",
        "miniprogram_user",
        "member_level = 'vip'",
        "--now",
        NOW,
    ]);
    let got: BTreeMap<String, u64> = o["intersections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["of"].to_string(), i["count"].as_u64().unwrap()))
        .collect();
    let sets = [&lovers, &mini, &levels["vip"]];
    for mask in 1..8u32 {
        let of: Vec<u32> = (0..3).filter(|i| mask & (1 << i) != 0).collect();
        let mut acc = sets[of[0] as usize].clone();
        for &i in &of[1..] {
            acc &= sets[i as usize];
        }
        assert_eq!(
            got.get(&serde_json::json!(of).to_string()),
            Some(&acc.len()),
            "{of:?} in {o}"
        );
    }

    // The JSON form over gRPC gives the same answer as the text.
    let mut client = SegmentServiceClient::new(shop.server.channel().await);
    let text = "member_level = 'vip' AND NOT skincare_lover";
    let tree = quiver_engine::segment::parse(text).unwrap();
    let r = client
        .count(pb::CountRequest {
            workspace: "shop".into(),
            audience: Some(pb::Audience {
                expression_json: serde_json::to_string(&tree).unwrap(),
                now_unix_ms: NOW_MS,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, (&levels["vip"] - &lovers).len());
    let ev = r.evaluated.unwrap();
    assert_eq!(ev.expression, text);
    assert_eq!(ev.persons, report["tags"][0]["persons"].as_u64().unwrap());

    // Errors name what is wrong, with a caret for syntax.
    let err = shop.fails(&["count", "skincare_lover AND (member_level = 'vip'"]);
    assert!(err.contains("line 1, column") && err.contains('^'), "{err}");
    let err = shop.fails(&["count", "skincare_lovr"]);
    assert!(err.contains("did you mean skincare_lover"), "{err}");
    let err = shop.fails(&["breakdown", "skincare_lover", "--by", "member_levle"]);
    assert!(err.contains("did you mean member_level"), "{err}");
    let status = client
        .count(pb::CountRequest {
            workspace: "shop".into(),
            audience: Some(pb::Audience {
                expression: "did(purchse)".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("did you mean purchase"),
        "{status:?}"
    );
    let status = client
        .count(pb::CountRequest {
            workspace: "nope".into(),
            audience: Some(pb::Audience {
                expression: "skincare_lover".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_segments_snapshots_and_diffs() {
    let shop = shop(300);
    let vip_lovers = "skincare_lover AND member_level = 'vip'";
    shop.json(&["segments", "save", "lovers", "skincare_lover"]);
    shop.json(&[
        "segments",
        "save",
        "vip_lovers",
        "segment('lovers') AND member_level = 'vip'",
        "--description",
        "VIPs who love skincare",
    ]);
    let list = shop.json(&["segments", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lovers", "vip_lovers"], "{list}");
    let got = shop.json(&["segments", "get", "vip_lovers"]);
    assert_eq!(got["description"], "VIPs who love skincare");
    assert_eq!(
        count_of(&shop, "segment('vip_lovers')"),
        count_of(&shop, vip_lovers)
    );
    // A reference keeps what it refers to; cycles and unknown names are refused.
    let err = shop.fails(&["segments", "delete", "lovers"]);
    assert!(err.contains("vip_lovers"), "{err}");
    let err = shop.fails(&["segments", "save", "lovers", "segment('vip_lovers')"]);
    assert!(err.contains("cycle"), "{err}");
    let err = shop.fails(&["segments", "save", "x", "segment('lover')"]);
    assert!(err.contains("did you mean lovers"), "{err}");
    assert_eq!(
        count_of(&shop, "segment('lovers')"),
        count_of(&shop, "skincare_lover")
    );

    // Snapshots a month apart of a windowed segment, and their diff.
    let recent = "did(page_view) IN LAST 30 DAYS";
    shop.json(&["segments", "save", "recent_viewers", recent]);
    let earlier = "2026-09-30";
    let s1 = shop.json(&["segments", "snapshot", "recent_viewers", "--now", earlier]);
    let s2 = shop.json(&["segments", "snapshot", "recent_viewers", "--now", NOW]);
    let (id1, id2) = (s1["id"].as_u64().unwrap(), s2["id"].as_u64().unwrap());
    assert!(id2 > id1);
    let a = {
        let path = shop.path("a.roaring");
        let out = path.display().to_string();
        shop.json(&["export", recent, "--now", earlier, "-o", &out]);
        read_bitmap(&path)
    };
    let b = exported(&shop, recent, "b.roaring");
    assert_eq!(s1["count"].as_u64(), Some(a.len()));
    assert_eq!(s2["count"].as_u64(), Some(b.len()));
    let dir = shop.path("diff");
    let d = shop.json(&[
        "segments",
        "diff",
        &id1.to_string(),
        &id2.to_string(),
        "--out-dir",
        &dir.display().to_string(),
    ]);
    assert_eq!(d["entered"].as_u64(), Some((&b - &a).len()), "{d}");
    assert_eq!(d["left"].as_u64(), Some((&a - &b).len()), "{d}");
    assert_eq!(d["stayed"].as_u64(), Some((&a & &b).len()), "{d}");
    assert!(
        d["entered"].as_u64().unwrap() + d["left"].as_u64().unwrap() > 0,
        "{d}"
    );
    assert_eq!(read_bitmap(&dir.join("entered.roaring")), &b - &a);
    assert_eq!(read_bitmap(&dir.join("left.roaring")), &a - &b);
    assert_eq!(read_bitmap(&dir.join("stayed.roaring")), &a & &b);
    let snaps = shop.json(&["segments", "snapshots", "recent_viewers"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    // A snapshot stays as taken when its segment changes.
    shop.json(&[
        "segments",
        "save",
        "recent_viewers",
        "did(page_view) IN LAST 7 DAYS",
    ]);
    let d2 = shop.json(&["segments", "diff", &id1.to_string(), &id2.to_string()]);
    assert_eq!(d2["stayed"], d["stayed"]);
    shop.json(&["segments", "delete", "vip_lovers"]);
    shop.json(&["segments", "delete", "lovers"]);
    let err = shop.fails(&["segments", "get", "lovers"]);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_are_stable_and_exports_load_in_pyroaring() {
    require_pyroaring();
    let shop = shop(400);
    let all = "member_level IN ('normal', 'silver', 'gold', 'vip')";
    let split = |expr: &str, salt: &str, dir: &str| -> (Value, BTreeMap<String, RoaringBitmap>) {
        let out = shop.path(dir);
        let r = shop.json(&[
            "segments",
            "split",
            expr,
            "--salt",
            salt,
            "--weights",
            "90,10",
            "--names",
            "target,holdout",
            "--now",
            NOW,
            "--out-dir",
            &out.display().to_string(),
        ]);
        let groups = ["target", "holdout"]
            .iter()
            .map(|g| {
                (
                    g.to_string(),
                    read_bitmap(&out.join(format!("{g}.roaring"))),
                )
            })
            .collect();
        (r, groups)
    };
    let audience = exported(&shop, all, "all.roaring");
    let (r1, g1) = split(all, "spring-sale", "s1");
    let (_, g1_again) = split(all, "spring-sale", "s1b");
    assert_eq!(g1, g1_again, "the same salt gives the same groups");
    let (t, h) = (&g1["target"], &g1["holdout"]);
    assert!(t.is_disjoint(h));
    assert_eq!(t | h, audience);
    assert_eq!(r1["count"].as_u64(), Some(audience.len()));
    let share = h.len() as f64 / audience.len() as f64;
    assert!((0.03..0.2).contains(&share), "holdout share {share}: {r1}");
    // A narrower audience keeps everyone's group.
    let (_, vip) = split("member_level = 'vip'", "spring-sale", "s2");
    assert!(vip["target"].is_subset(t) && vip["holdout"].is_subset(h));
    // Another salt deals again.
    let (_, other) = split(all, "summer-sale", "s3");
    assert_ne!(other["holdout"], *h);

    // Export: the bitmap, as pyroaring reads it.
    let expr = "skincare_lover OR member_level = 'vip'";
    let b = exported(&shop, expr, "aud.roaring");
    let py = pyroaring_read(shop.tmp.path(), &[shop.path("aud.roaring")]);
    let p = &py[&shop.path("aud.roaring").display().to_string()];
    assert_eq!(p["cardinality"].as_u64(), Some(b.len()));
    let py_members: Vec<u32> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(py_members, b.iter().collect::<Vec<_>>());

    // Identifiers: person ids, hashed phones, one app's openids.
    let ordinals: BTreeSet<u64> = b.iter().map(u64::from).collect();
    let (got, r) = export_ids(&shop, expr, "person_id", false);
    let want: BTreeSet<String> = shop
        .sql("SELECT person_id, ordinal FROM persons WHERE merged_into IS NULL")
        .into_iter()
        .filter(|row| ordinals.contains(&row["ordinal"].as_u64().unwrap()))
        .map(|row| row["person_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want, "{r}");
    assert_eq!(r["identifiers"].as_u64(), Some(b.len()));

    let (got, _) = export_ids(&shop, expr, "phone", true);
    let want: BTreeSet<String> = shop
        .sql("SELECT encode(sha256(value), 'hex') AS h, ordinal FROM identifiers WHERE kind = 'phone'")
        .into_iter()
        .filter(|row| ordinals.contains(&row["ordinal"].as_u64().unwrap()))
        .map(|row| row["h"].as_str().unwrap().to_string())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    assert!(got.iter().all(|h| h.len() == 64));

    let openid =
        shop.sql("SELECT value FROM identifiers WHERE kind = 'openid' ORDER BY value LIMIT 1");
    let app = openid[0]["value"]
        .as_str()
        .unwrap()
        .split_once(':')
        .unwrap()
        .0
        .to_string();
    let (got, _) = export_ids(&shop, expr, &format!("openid:{app}"), false);
    let want: BTreeSet<String> = shop
        .sql("SELECT value, ordinal FROM identifiers WHERE kind = 'openid'")
        .into_iter()
        .filter(|row| ordinals.contains(&row["ordinal"].as_u64().unwrap()))
        .filter_map(|row| {
            let v = row["value"].as_str().unwrap();
            v.strip_prefix(&format!("{app}:")).map(str::to_string)
        })
        .collect();
    assert_eq!(got, want);
    let err = shop.fails(&[
        "export",
        expr,
        "--format",
        "ids",
        "--id-kind",
        "phon",
        "-o",
        "/dev/null",
    ]);
    assert!(err.contains("did you mean phone"), "{err}");
}
