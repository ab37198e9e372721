use super::*;
use crate::config::{Config, Protocol};
use crate::transport::SendError;
use std::time::Duration;
use telemetry::MachineId;
use url::Url;

#[test]
fn status_classes() {
    assert_eq!(classify(201, String::new(), None), Outcome::Delivered);
    assert_eq!(classify(204, String::new(), None), Outcome::Delivered);
    for s in [429, 503] {
        assert!(matches!(classify(s, String::new(), None), Outcome::ServerBusy { .. }), "{s}");
    }
    for s in [408, 500, 502, 504, 599] {
        assert!(matches!(classify(s, String::new(), None), Outcome::Failed { status, .. } if status == s), "{s}");
    }
    assert_eq!(classify(400, "bad tid".into(), None), Outcome::Refused { status: 400, body: "bad tid".into() });
    assert!(matches!(classify(404, String::new(), None), Outcome::Refused { status: 404, .. }));
    assert!(matches!(classify(302, String::new(), None), Outcome::Refused { status: 302, .. }));
    // Transport failures pause the server and blame no record.
    assert!(matches!(outcome(Err(SendError::Connect("refused".into()))), Outcome::ServerBusy { .. }));
}

#[test]
fn answer_text_is_one_line_of_at_most_200_bytes() {
    let mut body = b"line one\nline\ttwo ".to_vec();
    body.extend(std::iter::repeat_n(b'x', 500));
    let t = answer_text(&body);
    assert!(t.starts_with("line one line two"), "{t}");
    assert!(t.len() <= 200);
    // A cut inside a multi-byte character stays valid text.
    let t = answer_text("é".repeat(150).as_bytes());
    assert!(t.chars().all(|c| c == 'é' || c == '\u{fffd}'));
}

#[test]
fn backoff_grows_with_jitter_and_cap() {
    let max = Duration::from_secs(60);
    assert_eq!(backoff(1, max, 1.0), BASE_BACKOFF);
    assert_eq!(backoff(1, max, 0.0), BASE_BACKOFF / 2);
    assert_eq!(backoff(3, max, 1.0), BASE_BACKOFF * 4);
    assert_eq!(backoff(30, max, 1.0), max);
    assert_eq!(backoff(30, max, 0.0), max / 2);
    let hour = Duration::from_secs(3600);
    assert_eq!(record_backoff(1, hour, 1.0), Duration::from_secs(1));
    assert_eq!(record_backoff(4, hour, 1.0), Duration::from_secs(8));
    assert_eq!(record_backoff(40, hour, 1.0), hour);
}

#[test]
fn the_wire_bytes_are_what_describe_shows() {
    use telemetry::{Classification, Payload, Record, Severity};
    let rec = {
        let mut host = telemetry::HostInfo::current().clone();
        host.cpu_model = telemetry::HeaderText::new("Intel(R) Xeon(R) CPU @ 2.10GHz – ünïcode").unwrap();
        Record::builder(Classification::parse("org.t/wire/x").unwrap(), Severity::Low, Payload::text("p\n"))
            .host(host)
            .build()
    };
    let mid = MachineId::random();
    for (server, proto) in [("http://127.0.0.1:9/a?b=c", Protocol::V2), ("https://h.example/", Protocol::V3)] {
        let cfg = Config { server: Some(server.parse().unwrap()), server_protocol: proto, ..Config::default() };
        let prep = Prepared::new(&cfg);
        let d = describe(&prep, &mid, &rec).unwrap();
        let wire = encode_request(&prep, &request_parts(&prep, &mid, &rec).unwrap());
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut hs);
        let head = match req.parse(&wire).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete request"),
        };
        assert_eq!(req.method, Some("POST"));
        let url: Url = d.url.parse().unwrap();
        let want_path = format!("{}{}", url.path(), url.query().map(|q| format!("?{q}")).unwrap_or_default());
        assert_eq!(req.path, Some(want_path.as_str()));
        let got: Vec<(String, String)> =
            req.headers.iter().map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).unwrap())).collect();
        assert_eq!(got, d.headers, "{server}");
        assert_eq!(&wire[head..], &d.body[..]);
        let len = d.headers.iter().find(|(k, _)| k == "Content-Length").unwrap();
        assert_eq!(len.1, d.body.len().to_string());
        if proto == Protocol::V2 {
            assert!(d.headers.iter().any(|(k, v)| k == "Cpu-Model" && v.ends_with("ünïcode")), "{:?}", d.headers);
            assert!(d.headers.iter().any(|(k, v)| k == "Host" && v == "127.0.0.1:9"));
        } else {
            assert!(d.headers.iter().any(|(k, v)| k == "Host" && v == "h.example"));
        }
    }
}

#[test]
fn v3_target() {
    let u: Url = "https://h.example/".parse().unwrap();
    assert_eq!(target(&u, Protocol::V3).as_str(), "https://h.example/v3/collector");
    assert_eq!(target(&u, Protocol::V2).as_str(), "https://h.example/");
    let u: Url = "https://h.example/v3/collector".parse().unwrap();
    assert_eq!(target(&u, Protocol::V3).as_str(), "https://h.example/v3/collector");
}

#[test]
fn otlp_status_classes() {
    use crate::config::OtlpEncoding;
    assert_eq!(classify_otlp(200, String::new(), None), Outcome::Delivered);
    for s in [429, 502, 503, 504] {
        let after = Some(Duration::from_secs(2));
        assert!(
            matches!(classify_otlp(s, String::new(), after), Outcome::ServerBusy { after: a, .. } if a == after),
            "{s}"
        );
    }
    // Every other status is final (the OTLP spec), 500 and 408 included.
    for s in [400, 401, 404, 408, 413, 500, 501] {
        assert!(matches!(classify_otlp(s, String::new(), None), Outcome::Refused { status, .. } if status == s), "{s}");
    }
    let ok = |body: &[u8]| {
        Ok(crate::transport::Answer { status: 200, retry_after: None, body: bytes::Bytes::copy_from_slice(body) })
    };
    assert_eq!(otlp_outcome(ok(b""), OtlpEncoding::Protobuf, 3), Outcome::Delivered);
    assert_eq!(
        otlp_outcome(
            ok(br#"{"partialSuccess":{"rejectedLogRecords":"1","errorMessage":"too\nold"}}"#),
            OtlpEncoding::Json,
            3
        ),
        Outcome::DeliveredPartly { rejected: 1, of: 3, why: "too old".into() }
    );
    assert!(matches!(
        otlp_outcome(Err(SendError::Connect("refused".into())), OtlpEncoding::Json, 1),
        Outcome::ServerBusy { .. }
    ));
    use crate::journal::Fate;
    use crate::spool::Dest;
    let at = |f: Fate| crate::store::settle::at(Dest::Otlp, f).to_string();
    assert_eq!(at(Fate::Delivered), "delivered (otlp)");
    assert_eq!(
        at(Fate::RejectedByServer { status: 400, body: "bad".into(), attempts: None }),
        "rejected-by-server (otlp): 400 bad"
    );
    assert_eq!(
        at(Fate::DeliveredPartly { rejected: 2, of: 5, why: "old".into() }),
        "delivered (otlp): partial success, 2 of 5 log records in its request rejected: old"
    );
    assert_eq!(crate::store::settle::at(Dest::Server, Fate::Delivered).to_string(), "delivered");
}
