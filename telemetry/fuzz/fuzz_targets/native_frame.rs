//! Arbitrary bytes as a native stream: prefix check, frame splitting and
//! record decoding must return errors, never panic or over-allocate; a
//! decoded record must re-encode to a frame that decodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telemetry::wire::native::{self, ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    if let Some(p) = data.get(..8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(p);
        let _ = native::check_prefix(a);
    }
    let mut buf = data;
    while let Ok(Some((body, used))) = native::split_frame(buf, native::max_record_frame(64 * 1024)) {
        if let Ok(frame) = native::decode_body::<ClientFrame>(body) {
            let again = native::encode(&frame).expect("re-encode");
            assert_eq!(native::decode_body::<ClientFrame>(&again[4..]).expect("decode again"), frame);
        }
        let _ = native::decode_body::<ServerFrame>(body);
        buf = &buf[used..];
    }
});
