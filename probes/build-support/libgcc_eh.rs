// Shared by the build scripts of the probes the kernel or a script starts
// once per event (crashprobe, hprobe, telem-record-gen), through
// `include!`: links libgcc's unwinder (`libgcc_eh.a`) into the binary
// instead of loading `libgcc_s.so.1` at run time, as `gcc -static-libgcc`
// does (glibc stays shared). A process started per event pays for every
// library the dynamic loader maps and binds, and libgcc_s's constructor
// (`__cpu_indicator_init`) runs CPUID, which traps to the hypervisor in a
// VM: ~0.1 ms of CPU per start, measured (`docs/BENCHMARKS.md`, #16 and
// #12). When the compiler has no `libgcc_eh.a`, the binary links
// libgcc_s as usual.

/// Links `libgcc_eh.a` into the package's binaries when the compiler has it.
fn link_libgcc_eh() {
    use std::path::PathBuf;
    use std::process::Command;
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-support/libgcc_eh.rs");
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
        None => println!("cargo:warning=libgcc_eh.a not found with {cc}: libgcc_s.so.1 is loaded at run time"),
    }
}
