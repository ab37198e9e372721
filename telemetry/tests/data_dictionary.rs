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
