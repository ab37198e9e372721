//! Loading `probe-ebpf` with aya: the embedded object, the filter maps, the
//! tracepoint attachments, the loss counters and the run-time statistics;
//! the switch that turns the black box's events on and off at run time.

use std::os::fd::OwnedFd;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader, Pod};
use event_types::{
    Config, COMM_LEN, FLAG_BLACKBOX, KIND_EXEC, KIND_EXEC_BLACKBOX, KIND_EXIT, KIND_FATAL_SIGNAL, KIND_MODULES,
    KIND_OOM, KIND_OOM_STACK, KIND_PROCESS_EXIT, MAP_COMM_ALLOW, MAP_COMM_DENY, MAP_CONFIG, MAP_EVENTS, MAP_LOST,
    PROG_EXIT, PROG_OOM, PROG_PROCESS_EXEC, PROG_PROCESS_EXIT, PROG_SIGNAL,
};
use thiserror::Error;

use crate::filters::Filters;
use crate::kernel_btf::{KernelBtf, TaskOffsets};

/// The kernel-side object, embedded at build time (see build.rs). Empty
/// when `cargo xtask build-ebpf` had not been run before eventprobe was
/// built.
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));

/// Why the probes could not be set up.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this eventprobe was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild eventprobe (or pass --object PATH)")]
    NoObject,
    #[error("cannot read eBPF object {path}: {source}")]
    ReadObject { path: String, source: std::io::Error },
    #[error("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {0} (eventprobe needs root)")]
    Tracefs(std::io::Error),
    #[error("loading the eBPF object failed: {0} (needs root or CAP_BPF+CAP_PERFMON)")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {what} {name}: kernel side and eventprobe are out of step; rebuild both")]
    Missing { what: &'static str, name: &'static str },
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingSize(u32),
    #[error("cannot enable BPF run-time statistics: {0}")]
    Stats(String),
}

#[derive(Clone, Copy)]
#[repr(transparent)]
struct PodConfig(Config);
// SAFETY: Config is #[repr(C)] of integers with explicit padding fields.
unsafe impl Pod for PodConfig {}

/// The attached probes. Dropping it detaches everything.
pub struct Probes {
    bpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    _stats: Option<OwnedFd>,
    /// The configuration written at load (the switch starts from it).
    config: Config,
}

/// Sets and clears [`FLAG_BLACKBOX`] in the kernel side's `CONFIG` while
/// the programs run (the black box's feed owns it).
pub struct BlackboxSwitch {
    map: Array<MapData, PodConfig>,
    config: Config,
}

impl BlackboxSwitch {
    /// Turns the black box's exec and exit events on or off.
    pub fn set(&mut self, on: bool) -> Result<(), LoadError> {
        if on {
            self.config.flags |= FLAG_BLACKBOX;
        } else {
            self.config.flags &= !FLAG_BLACKBOX;
        }
        self.map.set(0, PodConfig(self.config), 0).map_err(|source| LoadError::Map { name: MAP_CONFIG, source })
    }
}

/// Kernel-side losses (ring buffer full), per kind, since loading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lost {
    pub fatal: u64,
    pub exit: u64,
    pub oom: u64,
    /// Module names of a fatal signal (the record then has none).
    pub modules: u64,
    /// An OOM victim's stack (its record then has none).
    pub oom_stack: u64,
    /// An exec's executable identity (not held open then).
    pub exec: u64,
    /// The black box's execs and process exits.
    pub bb_exec: u64,
    pub bb_exit: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.fatal + self.exit + self.oom + self.modules + self.oom_stack + self.exec + self.bb_exec + self.bb_exit
    }
}

/// Run-time statistics of one program (kernel.bpf_stats_enabled).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStats {
    pub runs: u64,
    pub run_time_ns: u64,
}

fn ensure_tracefs() -> Result<(), LoadError> {
    if crate::tp_format::ROOTS.iter().any(|r| Path::new(r).join("events").is_dir()) {
        return Ok(());
    }
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let r = unsafe {
        libc::mount(c"nodev".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if r != 0 {
        return Err(LoadError::Tracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

/// The object bytes: `--object PATH` if given, else the embedded one.
pub fn object_bytes(path: Option<&Path>) -> Result<std::borrow::Cow<'static, [u8]>, LoadError> {
    match path {
        Some(p) => std::fs::read(p)
            .map(std::borrow::Cow::Owned)
            .map_err(|source| LoadError::ReadObject { path: p.display().to_string(), source }),
        None if EMBEDDED.is_empty() => Err(LoadError::NoObject),
        None => Ok(std::borrow::Cow::Borrowed(EMBEDDED)),
    }
}

/// Whether the binary carries its eBPF object.
pub fn has_embedded_object() -> bool {
    !EMBEDDED.is_empty()
}

impl Probes {
    /// Loads, configures and attaches the probes (with `blackbox`, also
    /// the exec and exit programs the black box needs, idle until its
    /// flag is set).
    pub fn load(
        object: &[u8],
        filters: &Filters,
        ring_bytes: u32,
        bpf_stats: bool,
        blackbox: bool,
    ) -> Result<Probes, LoadError> {
        if ring_bytes < 4096 || !ring_bytes.is_power_of_two() {
            return Err(LoadError::RingSize(ring_bytes));
        }
        ensure_tracefs()?;
        let mut offsets = match KernelBtf::load() {
            Ok(btf) => TaskOffsets::from_btf(&btf),
            Err(e) => {
                tracing::warn!("{e}: fault addresses and process start times come from /proc instead");
                TaskOffsets::default()
            }
        };
        offsets.bb.tp_exit_group_dead =
            crate::tp_format::tracepoint_field("sched", "sched_process_exit", "group_dead").unwrap_or(0);
        let stats = if bpf_stats {
            Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| LoadError::Stats(e.to_string()))?)
        } else {
            None
        };
        let mut bpf = EbpfLoader::new().map_max_entries(MAP_EVENTS, ring_bytes).load(object)?;

        let config = filters.to_config(offsets);
        {
            let map = bpf.map_mut(MAP_CONFIG).ok_or(LoadError::Missing { what: "map", name: MAP_CONFIG })?;
            let mut arr: Array<_, PodConfig> =
                Array::try_from(map).map_err(|source| LoadError::Map { name: MAP_CONFIG, source })?;
            arr.set(0, PodConfig(config), 0).map_err(|source| LoadError::Map { name: MAP_CONFIG, source })?;
        }
        for (name, list) in [(MAP_COMM_ALLOW, &filters.comm_allow), (MAP_COMM_DENY, &filters.comm_deny)] {
            let map = bpf.map_mut(name).ok_or(LoadError::Missing { what: "map", name })?;
            let mut h: HashMap<_, [u8; COMM_LEN], u8> =
                HashMap::try_from(map).map_err(|source| LoadError::Map { name, source })?;
            for comm in list {
                h.insert(comm, 1, 0).map_err(|source| LoadError::Map { name, source })?;
            }
        }
        let lost_map = bpf.take_map(MAP_LOST).ok_or(LoadError::Missing { what: "map", name: MAP_LOST })?;
        let lost = PerCpuArray::try_from(lost_map).map_err(|source| LoadError::Map { name: MAP_LOST, source })?;

        for (name, category, tp, wanted) in [
            (PROG_SIGNAL, "signal", "signal_deliver", !filters.signals.is_empty()),
            (PROG_EXIT, "syscalls", "sys_enter_exit_group", filters.exits),
            (PROG_OOM, "oom", "mark_victim", filters.oom),
            (PROG_PROCESS_EXIT, "sched", "sched_process_exit", !filters.signals.is_empty() || filters.oom || blackbox),
            (PROG_PROCESS_EXEC, "sched", "sched_process_exec", !filters.signals.is_empty() || blackbox),
        ] {
            if !wanted {
                continue;
            }
            let prog: &mut TracePoint = bpf
                .program_mut(name)
                .ok_or(LoadError::Missing { what: "program", name })?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.load().map_err(|source| LoadError::Program { name, source })?;
            prog.attach(category, tp).map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(Probes { bpf, lost, _stats: stats, config })
    }

    /// Whether the kernel side can send the black box's events (every
    /// offset they need was found).
    pub fn blackbox_supported(&self) -> bool {
        self.config.bb.ok == 1
    }

    /// Takes the `CONFIG` map as the black box's switch (once).
    pub fn take_blackbox_switch(&mut self) -> Result<BlackboxSwitch, LoadError> {
        let map = self.bpf.take_map(MAP_CONFIG).ok_or(LoadError::Missing { what: "map", name: MAP_CONFIG })?;
        let map = Array::try_from(map).map_err(|source| LoadError::Map { name: MAP_CONFIG, source })?;
        Ok(BlackboxSwitch { map, config: self.config })
    }

    /// Takes the ring buffer (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self.bpf.take_map(MAP_EVENTS).ok_or(LoadError::Missing { what: "map", name: MAP_EVENTS })?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map { name: MAP_EVENTS, source })
    }

    /// Reservation failures so far, summed over CPUs.
    pub fn lost(&self) -> Result<Lost, LoadError> {
        let get = |k: u32| -> Result<u64, LoadError> {
            let v = self.lost.get(&k, 0).map_err(|source| LoadError::Map { name: MAP_LOST, source })?;
            Ok(v.iter().sum())
        };
        Ok(Lost {
            fatal: get(KIND_FATAL_SIGNAL)?,
            exit: get(KIND_EXIT)?,
            oom: get(KIND_OOM)?,
            modules: get(KIND_MODULES)?,
            oom_stack: get(KIND_OOM_STACK)?,
            exec: get(KIND_EXEC)?,
            bb_exec: get(KIND_EXEC_BLACKBOX)?,
            bb_exit: get(KIND_PROCESS_EXIT)?,
        })
    }

    /// Run-time statistics per attached program (zero unless loaded with
    /// `bpf_stats`).
    pub fn prog_stats(&self) -> Vec<(&'static str, ProgStats)> {
        let mut out = Vec::new();
        for name in [PROG_SIGNAL, PROG_EXIT, PROG_OOM, PROG_PROCESS_EXIT, PROG_PROCESS_EXEC] {
            let Some(p) = self.bpf.program(name) else { continue };
            if let Ok(info) = p.info() {
                out.push((name, ProgStats { runs: info.run_count(), run_time_ns: info.run_time().as_nanos() as u64 }));
            }
        }
        out
    }
}
