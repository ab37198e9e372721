//! Arbitrary bytes as a native stream: prefix check, frame splitting and
//! record decoding must return errors, never panic or over-allocate; a
//! decoded record must re-encode to a frame that decodes to itself; the
//! zero-copy decoder (`decode_record`) must agree with the derived one.
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
        let derived = native::decode_body::<ClientFrame>(body);
        // The collector's zero-copy decoder accepts exactly the same frames.
        let shared = native::decode_record(body, &mut native::HostCache::default());
        match (&derived, &shared) {
            (Ok(ClientFrame::Record(a)), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!("decoders disagree: {derived:?} vs {shared:?}"),
        }
        if let Ok(frame) = derived {
            let again = native::encode(&frame).expect("re-encode");
            assert_eq!(native::decode_body::<ClientFrame>(&again[4..]).expect("decode again"), frame);
        }
        let _ = native::decode_body::<ServerFrame>(body);
        buf = &buf[used..];
    }
});
