//! Arbitrary bytes as a legacy record (what a C probe writes): errors,
//! never panics; what decodes re-encodes byte-exact.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telemetry::wire::legacy;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = legacy::decode(data) {
        let again = legacy::encode(&d.record, d.config_path.as_deref()).expect("re-encode");
        let back = legacy::decode(&again).expect("decode again");
        assert_eq!(back.record, d.record);
    }
});
