//! Go's `.gopclntab` read from a real Go binary (built here with the Go
//! toolchain, which `cargo xtask setup` installs; without it the test is
//! skipped, except in CI where it fails).

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, ObjectSymbol};
use unwind::Module;

fn go_available() -> bool {
    Command::new("go").arg("version").output().is_ok_and(|o| o.status.success())
}

fn build(dir: &Path, ldflags: &str, out: &str) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let prog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tests/crash_programs/gonil.go");
    std::fs::copy(prog, src.join("main.go")).unwrap();
    std::fs::write(src.join("go.mod"), "module gonil\n\ngo 1.19\n").unwrap();
    let exe = dir.join(out);
    let st = Command::new("go")
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(&src)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("HOME", dir)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .status()
        .unwrap();
    assert!(st.success(), "go build");
    exe
}

#[test]
fn gopclntab_of_a_real_go_binary() {
    if !go_available() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "go is missing in CI (cargo xtask setup)");
        eprintln!("go not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "", "gonil");
    let bytes = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*bytes).unwrap();
    let addr = |name: &str| obj.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()).unwrap();
    let m = Module::from_file(&std::fs::File::open(&exe).unwrap(), Some(exe.clone())).unwrap();
    let pcln = m.go_pcln().expect("a Go binary has .gopclntab");
    assert!(pcln.len() > 100);
    for name in ["main.goCrash", "main.goMiddle", "main.main", "runtime.sigpanic"] {
        let a = addr(name);
        let f = pcln.func_for(a + 1).unwrap_or_else(|| panic!("{name} at {a:#x}"));
        assert_eq!((f.name.as_str(), f.entry), (name, a));
        assert_eq!(pcln.sp_delta(&f, a), Some(0), "{name}: nothing pushed at the entry");
    }
    // goMiddle calls goCrash with a frame of its own: at the return
    // address its sp delta is the frame size, whose top holds the return.
    let mid = pcln.func_for(addr("main.goMiddle")).unwrap();
    let deltas: Vec<u64> = (mid.entry..mid.end).filter_map(|pc| pcln.sp_delta(&mid, pc)).collect();
    assert!(deltas.iter().any(|&d| d >= 8), "{deltas:?}");
    // goexit ends goroutine stacks.
    let goexit = pcln.func_for(addr("runtime.goexit.abi0")).unwrap();
    assert_ne!(goexit.flag & unwind::gopclntab::FLAG_TOPFRAME, 0);

    // Stripped (no .symtab, no DWARF): names come from .gopclntab.
    let stripped = build(dir.path(), "-s -w", "gonil-stripped");
    let m = Module::from_file(&std::fs::File::open(&stripped).unwrap(), Some(stripped.clone())).unwrap();
    let pcln = m.go_pcln().expect(".gopclntab survives stripping");
    // Addresses may differ between the builds: walk the table for it.
    let opener = unwind::HostOpener;
    let mut found = false;
    let sbytes = std::fs::read(&stripped).unwrap();
    let sobj = object::File::parse(&*sbytes).unwrap();
    let text = sobj.section_by_name(".text").map(|s| (s.address(), s.size())).unwrap();
    let mut pc = text.0;
    while pc < text.0 + text.1 {
        let Some(f) = pcln.func_for(pc) else { break };
        if f.name == "main.goCrash" {
            let syms = m.symbolize(f.entry, &opener, false);
            assert_eq!(syms.last().and_then(|s| s.function.as_deref()), Some("main.goCrash"));
            found = true;
            break;
        }
        pc = f.end;
    }
    assert!(found, "main.goCrash not named in the stripped binary");
}
