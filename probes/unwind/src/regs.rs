//! Register sets, keyed by DWARF register number.

use serde::{Deserialize, Serialize};

/// The architectures the unwinder knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this crate was built for.
    pub const fn native() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }
    /// DWARF number of the stack pointer.
    pub const fn sp(self) -> u16 {
        match self {
            Arch::X86_64 => 7,
            Arch::Aarch64 => 31,
        }
    }
    /// DWARF number of the frame pointer.
    pub const fn fp(self) -> u16 {
        match self {
            Arch::X86_64 => 6,
            Arch::Aarch64 => 29,
        }
    }
    /// DWARF number of the return-address column (x86_64: 16 = rip;
    /// aarch64: 30 = lr).
    pub const fn ra(self) -> u16 {
        match self {
            Arch::X86_64 => 16,
            Arch::Aarch64 => 30,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// Number of DWARF registers tracked (x86_64 uses 0..=16, aarch64 0..=31
/// plus the pc, kept at [`PC_SLOT`]).
pub const NREGS: usize = 33;
/// Where the program counter is kept (for x86_64 it is also DWARF 16).
pub const PC_SLOT: usize = 32;

/// The registers of one frame. A register that is unknown (not saved by a
/// callee, or not captured) is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers {
    pub arch: Arch,
    regs: [Option<u64>; NREGS],
}

impl Registers {
    /// An empty set (every register unknown).
    pub fn new(arch: Arch) -> Registers {
        Registers { arch, regs: [None; NREGS] }
    }

    /// The minimal x86_64 set an eBPF probe captures.
    pub fn x86_64(rip: u64, rsp: u64, rbp: u64) -> Registers {
        let mut r = Registers::new(Arch::X86_64);
        r.set_pc(rip);
        r.set(7, rsp);
        r.set(6, rbp);
        r
    }

    /// From a Linux x86_64 `user_regs_struct` (27 words, as in `NT_PRSTATUS`
    /// and `PTRACE_GETREGS`): r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx
    /// rdx rsi rdi orig_rax rip cs eflags rsp ...
    pub fn from_x86_64_user_regs(w: &[u64; 27]) -> Registers {
        let mut r = Registers::new(Arch::X86_64);
        // DWARF: 0 rax 1 rdx 2 rcx 3 rbx 4 rsi 5 rdi 6 rbp 7 rsp 8..15 r8..r15
        let map: [(u16, usize); 16] = [
            (0, 10),
            (1, 12),
            (2, 11),
            (3, 5),
            (4, 13),
            (5, 14),
            (6, 4),
            (7, 19),
            (8, 9),
            (9, 8),
            (10, 7),
            (11, 6),
            (12, 3),
            (13, 2),
            (14, 1),
            (15, 0),
        ];
        for (dw, idx) in map {
            r.set(dw, w[idx]);
        }
        r.set_pc(w[16]);
        r
    }

    /// From a Linux aarch64 `user_pt_regs` (x0..x30, sp, pc, pstate).
    pub fn from_aarch64_user_regs(w: &[u64; 34]) -> Registers {
        let mut r = Registers::new(Arch::Aarch64);
        for (i, v) in w.iter().take(32).enumerate() {
            r.set(i as u16, *v);
        }
        r.set_pc(w[32]);
        r
    }

    pub fn get(&self, dwarf: u16) -> Option<u64> {
        self.regs.get(dwarf as usize).copied().flatten()
    }
    pub fn set(&mut self, dwarf: u16, v: u64) {
        if let Some(slot) = self.regs.get_mut(dwarf as usize) {
            *slot = Some(v);
        }
    }
    pub fn clear(&mut self, dwarf: u16) {
        if let Some(slot) = self.regs.get_mut(dwarf as usize) {
            *slot = None;
        }
    }
    pub fn pc(&self) -> Option<u64> {
        self.regs[PC_SLOT]
    }
    pub fn set_pc(&mut self, v: u64) {
        self.regs[PC_SLOT] = Some(v);
        if self.arch == Arch::X86_64 {
            self.regs[16] = Some(v);
        }
    }
    pub fn sp(&self) -> Option<u64> {
        self.get(self.arch.sp())
    }
    pub fn fp(&self) -> Option<u64> {
        self.get(self.arch.fp())
    }
}
