//! The filters the kernel side applies, parsed from the command line into
//! the shared [`event_types::Config`] and comm lists.

use event_types::{
    comm_key, Config, COMM_LEN, FLAG_COMM_ALLOW_LIST, FLAG_EXITS, FLAG_ONLY_DEFAULT_ACTION, FLAG_OOM, FLAG_SIGNALS,
};
use thiserror::Error;

use crate::kernel_btf::TaskOffsets;

/// Signals reported by default: the ones whose default action dumps core
/// because of a program error.
pub const DEFAULT_SIGNALS: &[i32] =
    &[libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT, libc::SIGTRAP, libc::SIGSYS];

const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("SYS", libc::SIGSYS),
];

/// `SIGSEGV` for 11, or the number.
pub fn signal_name(sig: i32) -> String {
    NAMES.iter().find(|(_, n)| *n == sig).map(|(s, _)| format!("SIG{s}")).unwrap_or_else(|| format!("signal {sig}"))
}

/// Why a filter argument is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    #[error("{0:?} is not a signal: give a name (SIGSEGV, SEGV) or a number 1..=63")]
    Signal(String),
    #[error("comm {0:?} is longer than {max} bytes; the kernel keeps only {max}", max = COMM_LEN - 1)]
    CommTooLong(String),
    #[error("comm must not be empty")]
    CommEmpty,
}

/// Parses `SIGSEGV`, `segv` or `11`.
pub fn parse_signal(s: &str) -> Result<i32, FilterError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=63).contains(&n) { Ok(n) } else { Err(FilterError::Signal(s.into())) };
    }
    let up = t.to_ascii_uppercase();
    let bare = up.strip_prefix("SIG").unwrap_or(&up);
    NAMES.iter().find(|(n, _)| *n == bare).map(|(_, v)| *v).ok_or_else(|| FilterError::Signal(s.into()))
}

/// A comm as the kernel stores it; longer names are refused rather than
/// silently truncated (they could never match).
pub fn parse_comm(s: &str) -> Result<[u8; COMM_LEN], FilterError> {
    if s.is_empty() {
        return Err(FilterError::CommEmpty);
    }
    if s.len() > COMM_LEN - 1 {
        return Err(FilterError::CommTooLong(s.into()));
    }
    Ok(comm_key(s))
}

/// Everything the kernel side filters on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    pub signals: Vec<i32>,
    /// Report a signal only when it kills (default action).
    pub only_default_action: bool,
    pub min_exit_code: u8,
    pub exits: bool,
    pub oom: bool,
    pub comm_allow: Vec<[u8; COMM_LEN]>,
    pub comm_deny: Vec<[u8; COMM_LEN]>,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            signals: DEFAULT_SIGNALS.to_vec(),
            only_default_action: true,
            min_exit_code: 1,
            exits: true,
            oom: true,
            comm_allow: Vec::new(),
            comm_deny: Vec::new(),
        }
    }
}

impl Filters {
    /// The kernel-side configuration (with the task offsets).
    pub fn to_config(&self, offsets: TaskOffsets) -> Config {
        let mut flags = 0;
        if !self.signals.is_empty() {
            flags |= FLAG_SIGNALS;
        }
        if self.only_default_action {
            flags |= FLAG_ONLY_DEFAULT_ACTION;
        }
        if self.exits {
            flags |= FLAG_EXITS;
        }
        if self.oom {
            flags |= FLAG_OOM;
        }
        if !self.comm_allow.is_empty() {
            flags |= FLAG_COMM_ALLOW_LIST;
        }
        Config {
            signal_mask: self.signals.iter().filter(|s| (1..=63).contains(*s)).fold(0u64, |m, s| m | 1 << s),
            min_exit_code: u32::from(self.min_exit_code.max(1)),
            flags,
            off_group_leader: offsets.group_leader,
            off_start_boottime: offsets.start_boottime,
            off_thread_cr2: offsets.thread_cr2,
            off_task_mm: offsets.task_mm,
            off_mm_flags: offsets.mm_flags,
            vma: offsets.vma,
            off_mm_exe_file: offsets.mm_exe_file,
            off_sas_ss_sp: offsets.sas_ss_sp,
            off_sas_ss_size: offsets.sas_ss_size,
            _pad: 0,
            // The exec program reads `task_struct.mm` and the exit program
            // the leader's start time through these too.
            bb: if offsets.task_mm != 0 && offsets.group_leader != 0 && offsets.start_boottime != 0 {
                offsets.bb
            } else {
                event_types::BlackboxOffsets::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGSEGV"), Ok(11));
        assert_eq!(parse_signal("abrt"), Ok(6));
        assert_eq!(parse_signal("7"), Ok(7));
        assert!(parse_signal("64").is_err());
        assert!(parse_signal("SIGFOO").is_err());
        assert_eq!(signal_name(11), "SIGSEGV");
    }

    #[test]
    fn config_bits() {
        let mut f = Filters::default();
        let c = f.to_config(TaskOffsets::default());
        assert_eq!(c.signal_mask & (1 << 11), 1 << 11);
        assert_eq!(c.signal_mask & (1 << 15), 0);
        assert_eq!(c.flags & FLAG_COMM_ALLOW_LIST, 0);
        assert_eq!(c.min_exit_code, 1);
        f.comm_allow.push(parse_comm("a").unwrap());
        f.min_exit_code = 0;
        f.signals.clear();
        let c = f.to_config(TaskOffsets::default());
        assert_ne!(c.flags & FLAG_COMM_ALLOW_LIST, 0);
        assert_eq!(c.flags & FLAG_SIGNALS, 0);
        assert_eq!(c.min_exit_code, 1, "exit code 0 is never abnormal");
    }

    #[test]
    fn the_black_box_needs_every_offset_it_reads() {
        let bb = event_types::BlackboxOffsets { ok: 1, task_tgid: 8, ..Default::default() };
        let full = TaskOffsets { task_mm: 1, group_leader: 2, start_boottime: 3, bb, ..TaskOffsets::default() };
        assert_eq!(Filters::default().to_config(full).bb, bb);
        let no_mm = TaskOffsets { task_mm: 0, ..full };
        assert_eq!(Filters::default().to_config(no_mm).bb.ok, 0);
        assert_eq!(Filters::default().to_config(TaskOffsets::default()).bb.ok, 0);
    }

    #[test]
    fn comm_limits() {
        assert!(parse_comm("0123456789abcde").is_ok());
        assert_eq!(parse_comm("0123456789abcdef"), Err(FilterError::CommTooLong("0123456789abcdef".into())));
        assert_eq!(parse_comm(""), Err(FilterError::CommEmpty));
    }
}
