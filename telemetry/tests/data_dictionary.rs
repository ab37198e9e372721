//! The data dictionary covers every field a record carries, and
//! docs/DATA.md is generated from it.

use telemetry::fields::{self, Scope};
use telemetry::posting;
use telemetry::{Classification, MachineId, Payload, Record, Severity};

#[test]
fn every_posted_field_is_in_the_dictionary() {
    let r = Record::builder(Classification::parse("a/b/c").unwrap(), Severity::Low, Payload::text("x")).build();
    let body = posting::v3_body(&r, &MachineId::unset()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for key in v.as_object().unwrap().keys() {
        let f = fields::field(key)
            .unwrap_or_else(|| panic!("field {key} is posted but missing from telemetry::fields::FIELDS"));
        assert_eq!(f.scope, Scope::Sent, "{key} is posted but marked local");
    }
    // And every field the record type has, as serde sees it.
    let rv = serde_json::to_value(&r).unwrap();
    let host = rv["host"].as_object().unwrap().keys().cloned();
    let top = rv.as_object().unwrap().keys().filter(|k| *k != "host").cloned();
    for key in top.chain(host) {
        assert!(fields::field(&key).is_some(), "Record field {key} is missing from telemetry::fields::FIELDS");
    }
}

#[test]
fn docs_data_md_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DATA.md");
    let want = fields::markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "docs/DATA.md is stale: run `UPDATE_DOCS=1 cargo test -p telemetry --test data_dictionary`");
}

#[test]
fn every_blackbox_event_field_is_in_the_dictionary() {
    use telemetry::blackbox::{Entry, Event, TopProcess};
    let events = [
        Event::Exec {
            pid: 1,
            ppid: 1,
            uid: 0,
            tty: Some("pts/0".into()),
            exe: "/bin/x".into(),
            argv: vec![],
            cgroup: Some("/x".into()),
            unit: Some("x.service".into()),
            operator: true,
        },
        Event::Exit {
            pid: 1,
            ppid: 1,
            comm: "x".into(),
            status: Some(0),
            signal: Some(9),
            core_dumped: false,
            run_ms: 1,
        },
        Event::FatalSignal { pid: 1, tid: 1, comm: "x".into(), signal: 11 },
        Event::Oom { pid: 1, comm: "x".into(), anon_rss_kb: 1 },
        Event::Record {
            record_id: "r".into(),
            event_id: "e".into(),
            classification: "a/b/c".into(),
            severity: 1,
            pid: Some(1),
            payload: "p".into(),
        },
        Event::Reading {
            load1: 0.0,
            load5: 0.0,
            load15: 0.0,
            mem_total_kb: 0,
            mem_available_kb: 0,
            swap_total_kb: 0,
            swap_free_kb: 0,
            disk_used_bytes: 0,
            disk_total_bytes: 0,
            top: vec![TopProcess { pid: 1, comm: "x".into(), cpu_pct: 1.0 }],
        },
        Event::Gap { lost: 1, reason: "r".into() },
        Event::Truncated { segments: 1, entries: 1, until_wall_ns: 1 },
        Event::Marker { text: "m".into() },
    ];
    let mut seen = std::collections::BTreeSet::new();
    for event in events {
        let v = serde_json::to_value(Entry { mono_ns: 1, wall_ns: 1, event }).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        for key in v.as_object().unwrap().keys() {
            seen.insert((kind.clone(), key.clone()));
            let f = fields::BLACKBOX_FIELDS
                .iter()
                .find(|f| f.name == key && (f.kinds == "*" || f.kinds.split(", ").any(|k| k == kind)))
                .unwrap_or_else(|| {
                    panic!("black-box field {key} of {kind} is missing from telemetry::fields::BLACKBOX_FIELDS")
                });
            assert!(!f.meaning.is_empty());
        }
    }
    // And the table names no field the types lack.
    for f in fields::BLACKBOX_FIELDS {
        for kind in f.kinds.split(", ") {
            assert!(
                seen.iter().any(|(k, n)| n == f.name && (kind == "*" || k == kind)),
                "BLACKBOX_FIELDS lists {} for {kind}, which has no such field",
                f.name
            );
        }
    }
}
