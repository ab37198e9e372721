//! Writes seed inputs for the fuzz targets into telemetry/fuzz/seeds/.
//! Run: cargo run -p telemetry --example fuzz_seeds

use telemetry::wire::{legacy, native};
use telemetry::{posting, Classification, MachineId, Payload, Record, Severity};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let r = Record::builder(
        Classification::parse("org.clearlinux/hello/world").expect("class"),
        Severity::Low,
        Payload::text("hello\n"),
    )
    .build();
    let mut stream = native::PREFIX.to_vec();
    native::encode_into(&native::ClientFrame::Record(r.clone()), &mut stream).expect("encode");
    std::fs::write(dir.join("native_frame/record"), &stream[8..])?;
    std::fs::write(dir.join("legacy_record/record"), legacy::encode(&r, None).expect("legacy"))?;
    std::fs::write(dir.join("legacy_record/record_cfg"), legacy::encode(&r, Some("/etc/t.conf")).expect("legacy"))?;
    std::fs::write(dir.join("posting_v3/record"), posting::v3_body(&r, &MachineId::unset()).expect("v3"))?;
    Ok(())
}
