//! `telemctl preview`: for records in the journal (and, with `--follow`,
//! records arriving live) the exact HTTP request the collector would post,
//! built by the same function delivery uses ([`request::describe`]),
//! without sending anything.
//!
//! The journal keeps, per record, every sent field (classification,
//! severity, event id, creation time, payload format version, the host
//! facts after the privacy level) and, when `record_retention_enabled`, the
//! payload after scrubbing. Without a retained payload the request cannot
//! be shown exactly, and the preview says so instead of guessing. The
//! machine id is the one the collector stamps now (standard, static); at
//! the anonymous level the collector's session id lives only in its
//! memory, so the preview shows [`MachineId::unset`] and says so.
//!
//! With `otlp_endpoint` set, each record's OTLP export request is shown
//! too, in the OTLP JSON form (whatever `otlp_encoding` sends: the same
//! message), built by [`otlp::export_request`] as delivery builds it.

use std::path::Path;
use std::str::FromStr;
use std::time::SystemTime;

use serde::Serialize;
use telemetry::{Classification, EventId, MachineId, Payload, Record, Severity};

use crate::config::Config;
use crate::identity;
use crate::journal::{self, Entry};
use crate::otlp::{self, OtlpPrepared};
use crate::request::{self, Prepared, RequestDesc};

/// One record's preview.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub record_id: String,
    pub classification: String,
    /// The record's fate in the journal (a `local-only` record is never
    /// sent, even after a later opt-in).
    pub fate: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestJson>,
    /// The record's OTLP export request (JSON form), with `otlp_endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpPreview>,
    /// Why no request can be shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A [`RequestDesc`] for JSON output (body as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestJson {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl From<&RequestDesc> for RequestJson {
    fn from(d: &RequestDesc) -> Self {
        RequestJson {
            method: d.method.into(),
            url: d.url.clone(),
            headers: d.headers.clone(),
            body: String::from_utf8_lossy(&d.body).into_owned(),
        }
    }
}

/// A record's OTLP export request: where it goes, its headers (as sent:
/// `Content-Type` and `Content-Encoding` say the encoding and compression)
/// and the request in the OTLP JSON form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtlpPreview {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub json: serde_json::Value,
}

/// The OTLP export request of the record `e` describes (its record id and
/// accept time from the journal).
pub fn otlp_preview(prep: &OtlpPrepared, mid: &MachineId, e: &Entry) -> Result<OtlpPreview, String> {
    let record = record_of(e).map_err(|e| e.to_string())?;
    let record_id = telemetry::RecordId::from_str(&e.id).map_err(|e| e.to_string())?;
    let src = otlp::Source { record: &record, record_id, accepted: e.time };
    let who = otlp::Identity { id: mid, privacy: prep.privacy };
    let req = otlp::export_request(std::slice::from_ref(&src), &who);
    let body = otlp::encode_body(&req, &prep.otlp).map_err(|e| e.to_string())?;
    let mut headers = otlp::headers(prep, body.len());
    headers.retain(|(k, _)| k != "Host");
    Ok(OtlpPreview {
        url: prep.otlp.url.to_string(),
        headers,
        json: serde_json::to_value(&req).map_err(|e| e.to_string())?,
    })
}

/// The machine id to stamp previews with, and a note when it is not the
/// one the collector will use.
pub fn machine_id(cfg: &Config) -> (MachineId, Option<String>) {
    match identity::peek(cfg, SystemTime::now()) {
        Some(id) => (id, None),
        None if cfg.privacy_level == crate::config::PrivacyLevel::Anonymous => (
            MachineId::unset(),
            Some(format!(
                "privacy_level = anonymous: the collector stamps its session id (random per start, never stored); shown as {}",
                MachineId::UNSET_STR
            )),
        ),
        None => (
            MachineId::unset(),
            Some(format!(
                "no current machine id in {} (the collector makes one when it starts); shown as {}",
                cfg.machine_id_file().display(),
                MachineId::UNSET_STR
            )),
        ),
    }
}

/// Why a journal entry does not give back its record.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// A fate line, not a record.
    #[error("not a record entry")]
    NotARecord,
    /// A field every record entry has is missing.
    #[error("no {0} in the journal entry")]
    Missing(&'static str),
    /// The host facts, which older collectors did not journal.
    #[error("the journal entry has no host facts (journaled by an older collector)")]
    NoHost,
    /// The creation time, which older collectors did not journal.
    #[error("no creation_timestamp in the journal entry (journaled by an older collector)")]
    NoTimestamp,
    /// The payload, not kept with `record_retention_enabled = false`.
    #[error("the payload was not kept (set record_retention_enabled = true to preview request bodies)")]
    NoPayload,
    /// The classification does not parse.
    #[error(transparent)]
    Classification(#[from] telemetry::ClassificationError),
    /// The severity is out of range.
    #[error(transparent)]
    Severity(#[from] telemetry::SeverityError),
    /// The event id does not parse.
    #[error(transparent)]
    EventId(#[from] telemetry::EventIdError),
}

/// Rebuilds the record a journal entry describes.
pub fn record_of(e: &Entry) -> Result<Record, EntryError> {
    let class = e.class.as_deref().ok_or(EntryError::NotARecord)?;
    let classification = Classification::parse(class)?;
    let severity = Severity::try_from(e.severity.ok_or(EntryError::Missing("severity"))?)?;
    let event_id = EventId::from_str(e.event.as_deref().ok_or(EntryError::Missing("event id"))?)?;
    let host = e.host.clone().ok_or(EntryError::NoHost)?;
    let ts = e.creation_timestamp.ok_or(EntryError::NoTimestamp)?;
    let payload = e.payload.clone().ok_or(EntryError::NoPayload)?;
    Ok(Record::builder(classification, severity, Payload::text(payload))
        .event_id(event_id)
        .creation_timestamp(ts)
        .payload_format_version(e.payload_format_version.unwrap_or(1))
        .host(host)
        .build())
}

/// The preview of one journal entry's record: the request to `server`
/// (when one is configured) and the OTLP export request (with `otlp`).
pub fn preview(
    prep: &Prepared,
    otlp: Option<&OtlpPrepared>,
    mid: &MachineId,
    e: &Entry,
) -> (Preview, Option<RequestDesc>) {
    let (request, mut error, desc) = match prep
        .url
        .is_some()
        .then(|| record_of(e).map_err(|e| e.to_string()).and_then(|r| request::describe(prep, mid, &r)))
    {
        Some(Ok(d)) => (Some(RequestJson::from(&d)), None, Some(d)),
        Some(Err(why)) => (None, Some(why), None),
        None => (None, None, None),
    };
    let otlp = match otlp.map(|o| otlp_preview(o, mid, e)) {
        Some(Ok(p)) => Some(p),
        Some(Err(why)) => {
            error.get_or_insert(why);
            None
        }
        None => None,
    };
    (
        Preview {
            record_id: e.id.clone(),
            classification: e.class.clone().unwrap_or_default(),
            fate: e.fate.clone(),
            request,
            otlp,
            error,
        },
        desc,
    )
}

/// Text form: a comment line naming the record and its fate, then the
/// request (or why none can be shown).
pub fn render(p: &Preview, desc: Option<&RequestDesc>) -> String {
    let mut s = format!("# record {} {} (fate: {})\n", p.record_id, p.classification, p.fate);
    if p.fate.starts_with("local-only") {
        s.push_str("# this record stays on this machine (consent is not retroactive); the request shows what such a record carries\n");
    }
    match (desc, &p.error) {
        (Some(d), _) => s.push_str(&d.render()),
        (None, Some(e)) => s.push_str(&format!("(no request: {e})\n")),
        (None, None) => {}
    }
    if let Some(o) = &p.otlp {
        if desc.is_some() {
            s.push('\n');
        }
        s.push_str(&format!("# OTLP export request (shown in its JSON form)\nPOST {}\n", o.url));
        for (k, v) in &o.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push('\n');
        s.push_str(&serde_json::to_string_pretty(&o.json).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// Journal records (first entries) for `telemctl preview`, oldest first.
pub fn journal_records(dir: &Path) -> Result<Vec<Entry>, journal::JournalError> {
    Ok(journal::read(dir)?.into_iter().map(|m| m.entry).collect())
}

/// Calls `f` with every record entry appended to the journal from now on
/// (see [`journal::follow`]). Returns when `f` returns false.
pub fn follow(dir: &Path, mut f: impl FnMut(Entry) -> bool) {
    journal::follow(dir, |e| e.class.is_none() || f(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Fate;

    fn entry(record: &Record, payload: Option<&str>) -> Entry {
        Entry {
            id: "a".repeat(32),
            time: 1,
            class: Some(record.classification.to_string()),
            event: Some(record.event_id.to_string()),
            boot: None,
            uid: Some(0),
            pid: Some(1),
            severity: Some(record.severity.as_u8()),
            fate: Fate::LocalOnly("not opted in".into()).to_string(),
            payload: payload.map(str::to_string),
            creation_timestamp: Some(record.creation_timestamp),
            payload_format_version: Some(record.payload_format_version),
            host: Some((*record.host).clone()),
        }
    }

    #[test]
    fn journal_entry_rebuilds_the_request_delivery_builds() {
        let r = Record::builder(
            Classification::parse("org.t/preview/x").unwrap(),
            Severity::High,
            Payload::text("hello\n"),
        )
        .creation_timestamp(1_700_000_000)
        .payload_format_version(2)
        .build();
        let mid = MachineId::random();
        for proto in ["v2", "v3"] {
            let cfg = Config::from_settings(
                &telemetry::config::Settings::parse(
                    &format!("[settings]\nserver=http://127.0.0.1:9/\nserver_protocol={proto}\n"),
                    None,
                )
                .unwrap(),
            )
            .unwrap();
            let prep = Prepared::new(&cfg);
            let (p, d) = preview(&prep, None, &mid, &entry(&r, Some("hello\n")));
            assert_eq!(d.unwrap(), request::describe(&prep, &mid, &r).unwrap(), "{proto}");
            let text = render(&p, request::describe(&prep, &mid, &r).ok().as_ref());
            assert!(text.contains("POST http://127.0.0.1:9/") && text.contains("stays on this machine"), "{text}");
            // Without the payload: said, not guessed.
            let (p, d) = preview(&prep, None, &mid, &entry(&r, None));
            assert!(d.is_none() && p.error.unwrap().contains("record_retention_enabled"));
        }
    }

    #[test]
    fn otlp_preview_is_the_json_form_delivery_sends() {
        let r =
            Record::builder(Classification::parse("org.t/preview/x").unwrap(), Severity::High, Payload::text("hi\n"))
                .creation_timestamp(1_700_000_000)
                .build();
        let cfg = Config::from_settings(
            &telemetry::config::Settings::parse("[settings]\notlp_endpoint=http://127.0.0.1:4318\n", None).unwrap(),
        )
        .unwrap();
        let prep = Prepared::new(&cfg);
        let oprep = OtlpPrepared::new(&cfg).unwrap();
        let mid = MachineId::random();
        let (p, d) = preview(&prep, Some(&oprep), &mid, &entry(&r, Some("hi\n")));
        assert!(d.is_none() && p.error.is_none(), "{p:?}");
        let o = p.otlp.clone().unwrap();
        assert_eq!(o.url, "http://127.0.0.1:4318/v1/logs");
        let lr = &o.json["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(lr["body"]["stringValue"], "hi\n");
        assert_eq!(lr["severityText"], "ERROR");
        let text = render(&p, None);
        assert!(text.contains("# OTLP export request") && text.contains("Content-Encoding: gzip"), "{text}");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["otlp"]["json"]["resourceLogs"][0]["resource"]["attributes"][0]["key"], "service.name");
    }
}
