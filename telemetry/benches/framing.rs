//! Framing benchmarks (issue: record library).
//!
//! Targets, one core: native frame encode + decode of a record with a 1 KiB
//! payload >= 1,000,000 records/s; legacy decode >= 500,000 records/s.
//! Criterion measures; a summary at the end prints records/s and the ratio
//! to each target from the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use telemetry::wire::{legacy, native};
use telemetry::{Classification, Payload, Record, Severity};

fn record() -> Record {
    Record::builder(
        Classification::parse("org.clearlinux/crash/clr").expect("class"),
        Severity::High,
        Payload::text("x".repeat(1024)),
    )
    .build()
}

fn native_round(r: &native::ClientFrame, buf: &mut Vec<u8>) -> native::ClientFrame {
    buf.clear();
    native::encode_into(r, buf).expect("encode");
    let (body, _) = native::split_frame(buf, 1 << 20).expect("split").expect("whole");
    native::decode_body(body).expect("decode")
}

/// As [`native_round`], decoding with the collector's zero-copy decoder.
fn native_round_shared(r: &native::ClientFrame, buf: &mut Vec<u8>, hosts: &mut native::HostCache) -> Record {
    buf.clear();
    native::encode_into(r, buf).expect("encode");
    let (body, _) = native::split_frame(buf, 1 << 20).expect("split").expect("whole");
    native::decode_record(body, hosts).expect("decode")
}

fn benches(c: &mut Criterion) {
    let frame = native::ClientFrame::Record(record());
    let legacy_bytes = legacy::encode(&record(), None).expect("legacy");
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(4096);
    g.bench_function("native encode+decode (1 KiB payload)", |b| {
        b.iter(|| black_box(native_round(black_box(&frame), &mut buf)))
    });
    let mut hosts = native::HostCache::default();
    g.bench_function("native encode+decode_record (1 KiB payload, shared host facts)", |b| {
        b.iter(|| black_box(native_round_shared(black_box(&frame), &mut buf, &mut hosts)))
    });
    g.bench_function("legacy decode (1 KiB payload)", |b| {
        b.iter(|| black_box(legacy::decode(black_box(&legacy_bytes))))
    });
    g.bench_function("legacy encode (1 KiB payload)", |b| {
        b.iter(|| {
            buf.clear();
            legacy::encode_into(black_box(record_ref()), None, &mut buf).expect("encode");
        })
    });
    g.finish();
}

fn record_ref() -> &'static Record {
    static R: std::sync::OnceLock<Record> = std::sync::OnceLock::new();
    R.get_or_init(record)
}

/// Runs `f` for about `d` and returns calls per second.
fn rate(d: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        for _ in 0..1000 {
            f();
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn summary() {
    let frame = native::ClientFrame::Record(record());
    let legacy_bytes = legacy::encode(&record(), None).expect("legacy");
    let mut buf = Vec::with_capacity(4096);
    let d = Duration::from_secs(2);
    let native = rate(d, || {
        black_box(native_round(black_box(&frame), &mut buf));
    });
    let mut hosts = native::HostCache::default();
    let shared = rate(d, || {
        black_box(native_round_shared(black_box(&frame), &mut buf, &mut hosts));
    });
    let leg = rate(d, || {
        let _ = black_box(legacy::decode(black_box(&legacy_bytes)));
    });
    println!("\nsummary (one core, same run):");
    println!(
        "  native encode+decode, 1 KiB payload: {:>10.0} records/s  target 1,000,000/s  ratio {:.2}x",
        native,
        native / 1e6
    );
    println!(
        "  native encode+decode_record (the collector's zero-copy decoder): {:>10.0} records/s  ratio {:.2}x to target, {:.2}x the derived decoder",
        shared,
        shared / 1e6,
        shared / native
    );
    println!(
        "  legacy decode,        1 KiB payload: {:>10.0} records/s  target   500,000/s  ratio {:.2}x",
        leg,
        leg / 5e5
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(3));
    benches(&mut c);
    c.final_summary();
    // `cargo test --benches` runs this binary with --bench absent: skip the summary there.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
