//! Arbitrary bytes as a v3 JSON body: errors, never panics; what decodes
//! re-encodes to an equal record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telemetry::posting;

fuzz_target!(|data: &[u8]| {
    if let Ok((record, mid)) = posting::v3_decode(data) {
        let body = posting::v3_body(&record, &mid).expect("re-encode");
        assert_eq!(posting::v3_decode(&body).expect("decode again"), (record, mid));
    }
});
