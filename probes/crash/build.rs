//! Links libgcc's unwinder (`libgcc_eh.a`) into crashprobe instead of
//! loading `libgcc_s.so.1` at run time. crashprobe is started once per
//! crash by the kernel, so its start is on the crash path: libgcc_s costs
//! the dynamic loader a library to map and bind, and its constructor
//! (`__cpu_indicator_init`) runs CPUID, which traps to the hypervisor in a
//! VM (~0.1 ms of CPU per crash, measured; `docs/BENCHMARKS.md`, #16). This
//! is what `gcc -static-libgcc` does; glibc stays shared. When the compiler
//! has no `libgcc_eh.a`, crashprobe links libgcc_s as usual.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let found = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        // A compiler without the file prints its bare name back.
        .filter(|p| p.is_absolute() && p.is_file());
    match found.as_deref().and_then(|p| p.parent()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=gcc_eh");
        }
        None => println!("cargo:warning=libgcc_eh.a not found with {cc}: crashprobe loads libgcc_s.so.1 at run time"),
    }
}
