//! The oops parser's rate on one core (`cargo xtask bench kernel` runs
//! it): modern WARNING reports with a call trace, fed line by line as
//! klogscanner feeds them, each turned into its payload and signature.

use std::time::Instant;

use kernel_probes::oops::Parser;

fn report(i: usize) -> Vec<String> {
    let mut v = vec![
        "------------[ cut here ]------------".to_string(),
        format!("WARNING: CPU: 1 PID: {i} at drivers/gpu/drm/thing.c:321 thing_probe+0x1c/0x40 [thing]"),
        "Modules linked in: thing(O+) xfs libcrc32c crc32c_generic".into(),
        format!(
            "CPU: 1 UID: 0 PID: {i} Comm: modprobe Tainted: G           O       6.12.9-amd64 #1 PREEMPT(voluntary)"
        ),
        "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3 04/01/2014".into(),
        "RIP: 0010:thing_probe+0x1c/0x40 [thing]".into(),
        "Code: 90 90 90 90 0f 0b c3 cc cc cc cc 66 0f 1f 84 00 00 00 00 00".into(),
        "RSP: 0018:ffffb4a1c06dfc38 EFLAGS: 00010246".into(),
        "RAX: 0000000000000000 RBX: ffff8a0e4258f3a0 RCX: 0000000000000000".into(),
        "RDX: 0000000000000000 RSI: ffffffff93d4e4f8 RDI: 00000000ffffffff".into(),
        "Call Trace:".into(),
        " <TASK>".into(),
        " ? __warn+0x7d/0x130".into(),
    ];
    for f in ["thing_probe+0x1c/0x40 [thing]", "do_one_initcall+0x5b/0x320", "do_init_module+0x60/0x240"] {
        v.push(format!(" {f}"));
    }
    v.extend([" </TASK>".to_string(), "---[ end trace 0000000000000000 ]---".into()]);
    v
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let lines: Vec<Vec<String>> = (0..64).map(report).collect();
    let mut p = Parser::new();
    let (mut reports, mut bytes) = (0usize, 0usize);
    let t0 = Instant::now();
    for i in 0..n {
        for (k, l) in lines[i % lines.len()].iter().enumerate() {
            if let Some(r) = p.push((i * 32 + k) as u64, l) {
                bytes += r.payload(false).len() + r.signature().len();
                reports += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "oops parser: {reports} reports of {} lines in {secs:.2} s: {:.0} reports/s on one core ({bytes} payload bytes)",
        lines[0].len(),
        reports as f64 / secs
    );
}
