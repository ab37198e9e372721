//! Property tests: every record survives both framings and both posting
//! forms unchanged, and no byte string makes a decoder panic.

use proptest::prelude::*;
use telemetry::posting::{self, TidHeader};
use telemetry::wire::{legacy, native};
use telemetry::{Classification, EventId, HeaderText, HostInfo, MachineId, Payload, Record, Severity};

fn segment() -> impl Strategy<Value = String> {
    // printable ASCII without '/' and whitespace, 1..=40 bytes
    proptest::collection::vec(prop_oneof![0x21u8..=0x2e, 0x30u8..=0x7e], 1..=40)
        .prop_map(|v| String::from_utf8(v).unwrap())
}

fn classification() -> impl Strategy<Value = Classification> {
    (segment(), segment(), segment()).prop_map(|(a, b, c)| Classification::parse(&format!("{a}/{b}/{c}")).unwrap())
}

fn header_text() -> impl Strategy<Value = HeaderText> {
    // Any non-control characters, spaces and non-ASCII included.
    "[^\\p{Cc}]{0,60}".prop_map(|s| HeaderText::new(&s).unwrap())
}

fn host() -> impl Strategy<Value = HostInfo> {
    (
        (header_text(), header_text(), header_text(), header_text()),
        (header_text(), header_text(), header_text(), header_text()),
    )
        .prop_map(
            |((arch, host_type, build, kernel_version), (system_name, board_name, cpu_model, bios_version))| HostInfo {
                arch,
                host_type,
                build,
                kernel_version,
                system_name,
                board_name,
                cpu_model,
                bios_version,
            },
        )
}

fn severity() -> impl Strategy<Value = Severity> {
    (1u8..=4).prop_map(|n| Severity::try_from(n).unwrap())
}

fn record_with(payload: impl Strategy<Value = Payload>) -> impl Strategy<Value = Record> {
    (classification(), severity(), any::<[u8; 16]>(), any::<u32>(), any::<u64>(), host(), payload).prop_map(
        |(classification, severity, id, payload_format_version, creation_timestamp, host, payload)| Record {
            classification,
            severity,
            event_id: EventId::from_bytes(id),
            payload_format_version,
            creation_timestamp,
            host: host.into(),
            payload,
        },
    )
}

fn any_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        ".{0,300}".prop_map(Payload::Text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Payload::Bytes),
    ]
}

fn nul_free_payload() -> impl Strategy<Value = Payload> {
    proptest::collection::vec(1u8..=255, 0..300).prop_map(Payload::from_vec)
}

fn text_payload() -> impl Strategy<Value = Payload> {
    ".{0,300}".prop_map(Payload::Text)
}

proptest! {
    #[test]
    fn native_round_trip(r in record_with(any_payload())) {
        let frame = native::ClientFrame::Record(r);
        let bytes = native::encode(&frame).unwrap();
        let (body, used) = native::split_frame(&bytes, native::max_record_frame(1 << 20)).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(native::decode_body::<native::ClientFrame>(body).unwrap(), frame);
    }

    #[test]
    fn shared_decode_agrees_with_the_derived_one(
        rs in proptest::collection::vec(record_with(any_payload()), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        // Records of one host and of several, some frames damaged.
        let mut hosts = native::HostCache::default();
        for (i, r) in rs.iter().enumerate() {
            for same_host in [false, true] {
                let mut r = r.clone();
                if same_host {
                    r.host = rs[0].host.clone();
                }
                let mut bytes = native::encode(&native::ClientFrame::Record(r.clone())).unwrap()[4..].to_vec();
                if i % 2 == 1 {
                    for (at, x) in &flips {
                        let at = at.index(bytes.len());
                        bytes[at] ^= x;
                    }
                }
                let derived = native::decode_body::<native::ClientFrame>(&bytes);
                let shared = native::decode_record(&bytes, &mut hosts);
                match (derived, shared) {
                    (Ok(native::ClientFrame::Record(a)), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    (a, b) => prop_assert!(false, "derived {:?} vs shared {:?}", a.map(|_| ()), b.map(|_| ())),
                }
            }
        }
    }

    #[test]
    fn legacy_round_trip(r in record_with(nul_free_payload()), cfg in proptest::option::of("/[a-z/]{0,30}")) {
        let bytes = legacy::encode(&r, cfg.as_deref()).unwrap();
        let d = legacy::decode(&bytes).unwrap();
        prop_assert_eq!(d.record, r);
        prop_assert_eq!(d.machine_id.as_str(), "FFFFFFFF");
        prop_assert_eq!(d.config_path, cfg);
    }

    #[test]
    fn v2_round_trip(r in record_with(any_payload()), mid in "[0-9a-f]{32}") {
        let mid = MachineId::parse(&mid).unwrap();
        let headers = posting::v2_headers(&r, &mid, &TidHeader::default());
        let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
        let (back, back_mid) = posting::v2_decode(get, r.payload.as_bytes()).unwrap();
        prop_assert_eq!(back_mid, mid);
        prop_assert_eq!(back.payload.as_bytes(), r.payload.as_bytes());
        let mut expect = r.clone();
        expect.payload = Payload::from_vec(r.payload.as_bytes().to_vec());
        prop_assert_eq!(back, expect);
    }

    #[test]
    fn v3_round_trip(r in record_with(text_payload())) {
        let mid = MachineId::random();
        let body = posting::v3_body(&r, &mid).unwrap();
        let (back, back_mid) = posting::v3_decode(&body).unwrap();
        prop_assert_eq!(back, r);
        prop_assert_eq!(back_mid, mid);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = native::decode_body::<native::ClientFrame>(&bytes);
        let _ = native::split_frame(&bytes, 1 << 16);
        let _ = legacy::decode(&bytes);
        let _ = posting::v3_decode(&bytes);
    }

    #[test]
    fn legacy_decoder_survives_mutations(r in record_with(nul_free_payload()), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = legacy::encode(&r, None).unwrap();
        let i = pos % bytes.len();
        bytes[i] = byte;
        let _ = legacy::decode(&bytes);
    }
}
