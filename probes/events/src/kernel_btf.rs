//! Member offsets of kernel structs, read from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so the kernel side can read
//! `task_struct.group_leader`, `task_struct.start_boottime`,
//! `task_struct.thread.cr2` (and, for the black box, the parent, the
//! controlling tty, the argument area and the exit code) without CO-RE
//! relocations (aya-ebpf has none).
//!
//! Only the parts of the BTF format needed to walk struct members are
//! parsed; every read is bounds-checked.

use std::collections::HashMap;

use event_types::{BlackboxOffsets, VmaOffsets};

use thiserror::Error;

/// Why offsets could not be found.
#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF {path}: {source} (kernel built without CONFIG_DEBUG_INFO_BTF?)")]
    Read { path: String, source: std::io::Error },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no member {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// size or referenced type.
    size_type: u32,
    members: Vec<Member>,
}

/// The parsed type table.
pub struct KernelBtf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl KernelBtf {
    /// Reads `/sys/kernel/btf/vmlinux`.
    pub fn load() -> Result<KernelBtf, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.into(), source })?;
        KernelBtf::parse(&data)
    }

    /// Parses raw BTF (little-endian).
    pub fn parse(data: &[u8]) -> Result<KernelBtf, BtfError> {
        if data.get(..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let tstart = hdr_len.checked_add(type_off).ok_or(BtfError::Malformed("offsets"))?;
        let tsec = data.get(tstart..tstart + type_len).ok_or(BtfError::Malformed("type section"))?;
        let sstart = hdr_len + str_off;
        let strings = data.get(sstart..sstart + str_len).ok_or(BtfError::Malformed("string section"))?.to_vec();
        // Type id 0 is void.
        let mut types = vec![Type { name: 0, kind: 0, size_type: 0, members: Vec::new() }];
        let mut pos = 0usize;
        while pos < tsec.len() {
            let name = u32_at(tsec, pos)?;
            let info = u32_at(tsec, pos + 4)?;
            let size_type = u32_at(tsec, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let raw = u32_at(tsec, m + 8)?;
                        members.push(Member {
                            name: u32_at(tsec, m)?,
                            ty: u32_at(tsec, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_TYPE_TAG | 2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            pos += extra;
            types.push(Type { name, kind, size_type, members });
        }
        let mut btf = KernelBtf { types, strings, structs_by_name: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let n = btf.name(t.name).to_string();
                btf.structs_by_name.entry(n).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(t.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) =>
                {
                    id = t.size_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset and type id of `member` in the struct/union `id`,
    /// looking into anonymous struct and union members.
    fn find(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        let t = self.types.get(self.strip(id) as usize)?;
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.name(m.name);
            if name == member {
                return Some((m.bit_offset / 8, m.ty));
            }
            if name.is_empty() {
                let inner = self.types.get(self.strip(m.ty) as usize)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some((off, ty)) = self.find(m.ty, member, depth + 1) {
                        return Some((m.bit_offset / 8 + off, ty));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of a dotted member path in `struct name`, e.g.
    /// `member_offset("task_struct", "thread.cr2")`.
    pub fn member_offset(&self, name: &str, path: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("{name}.{path}"));
        let mut id = *self.structs_by_name.get(name).ok_or_else(missing)?;
        let mut total = 0u32;
        for part in path.split('.') {
            let (off, ty) = self.find(id, part, 0).ok_or_else(missing)?;
            total += off;
            id = ty;
        }
        Ok(total)
    }
}

/// The offsets the kernel side needs (0 where unknown: that item is then
/// not reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub group_leader: u32,
    pub start_boottime: u32,
    pub thread_cr2: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.flags` (the dumpable state is in its low bits).
    pub mm_flags: u32,
    /// What naming the file behind a code address takes.
    pub vma: VmaOffsets,
    /// `mm_struct.exe_file`.
    pub mm_exe_file: u32,
    /// `task_struct.sas_ss_sp` and `.sas_ss_size` (the alternate signal
    /// stack).
    pub sas_ss_sp: u32,
    pub sas_ss_size: u32,
    /// What the black box's exec and exit programs read
    /// (`tp_exit_group_dead` is filled by the loader from tracefs).
    pub bb: BlackboxOffsets,
}

impl TaskOffsets {
    pub fn from_btf(btf: &KernelBtf) -> TaskOffsets {
        let get = |p: &str| match btf.member_offset("task_struct", p) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{e}: that field will not be reported");
                0
            }
        };
        TaskOffsets {
            group_leader: get("group_leader"),
            start_boottime: get("start_boottime"),
            thread_cr2: if cfg!(target_arch = "x86_64") { get("thread.cr2") } else { 0 },
            task_mm: get("mm"),
            vma: vma_offsets(btf),
            mm_exe_file: btf.member_offset("mm_struct", "exe_file").unwrap_or(0),
            sas_ss_sp: get("sas_ss_sp"),
            sas_ss_size: get("sas_ss_size"),
            bb: blackbox_offsets(btf),
            mm_flags: match btf.member_offset("mm_struct", "flags") {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(
                        "{e}: the dumpable state is unknown, so no stack or registers beyond ip/sp are copied"
                    );
                    0
                }
            },
        }
    }
}

/// The offsets of [`VmaOffsets`], or all zero (`ok` = 0) when one is
/// missing: modules are then not recorded at the signal.
pub fn vma_offsets(btf: &KernelBtf) -> VmaOffsets {
    let get = |s: &str, p: &str| btf.member_offset(s, p);
    let all = (|| -> Result<VmaOffsets, BtfError> {
        Ok(VmaOffsets {
            ok: 1,
            vma_start: get("vm_area_struct", "vm_start")?,
            vma_end: get("vm_area_struct", "vm_end")?,
            vma_pgoff: get("vm_area_struct", "vm_pgoff")?,
            vma_file: get("vm_area_struct", "vm_file")?,
            vma_flags: get("vm_area_struct", "vm_flags")?,
            file_inode: get("file", "f_inode")?,
            file_dentry: get("file", "f_path.dentry")?,
            inode_ino: get("inode", "i_ino")?,
            inode_sb: get("inode", "i_sb")?,
            sb_dev: get("super_block", "s_dev")?,
            dentry_parent: get("dentry", "d_parent")?,
            dentry_name: get("dentry", "d_name.name")?,
        })
    })();
    match all {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("{e}: code addresses are not named by the kernel; a process gone before /proc/PID/maps is read gets unsymbolized frames");
            VmaOffsets::default()
        }
    }
}

/// The offsets of [`BlackboxOffsets`], or all zero (`ok` = 0) when one is
/// missing: the black box then gets no exec or exit events.
pub fn blackbox_offsets(btf: &KernelBtf) -> BlackboxOffsets {
    let get = |s: &str, p: &str| btf.member_offset(s, p);
    let all = (|| -> Result<BlackboxOffsets, BtfError> {
        Ok(BlackboxOffsets {
            ok: 1,
            task_real_parent: get("task_struct", "real_parent")?,
            task_tgid: get("task_struct", "tgid")?,
            task_signal: get("task_struct", "signal")?,
            task_comm: get("task_struct", "comm")?,
            task_exit_code: get("task_struct", "exit_code")?,
            signal_tty: get("signal_struct", "tty")?,
            signal_flags: get("signal_struct", "flags")?,
            signal_group_exit_code: get("signal_struct", "group_exit_code")?,
            signal_live: get("signal_struct", "live")?,
            tty_name: get("tty_struct", "name")?,
            mm_arg_start: get("mm_struct", "arg_start")?,
            mm_arg_end: get("mm_struct", "arg_end")?,
            tp_exit_group_dead: 0,
            task_flags: get("task_struct", "flags")?,
            _pad: 0,
        })
    })();
    match all {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("{e}: the black box gets no exec or exit events from this kernel");
            BlackboxOffsets::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(KernelBtf::parse(b"nope"), Err(BtfError::Malformed(_))));
        assert!(KernelBtf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0]).is_err());
    }

    #[test]
    fn finds_task_struct_members_on_this_kernel() {
        let Ok(btf) = KernelBtf::load() else {
            eprintln!("no kernel BTF readable here; skipping");
            return;
        };
        let o = TaskOffsets::from_btf(&btf);
        assert!(o.group_leader > 0 && o.start_boottime > 0, "{o:?}");
        assert!(o.task_mm > 0 && o.mm_flags > 0, "{o:?}");
        assert!(o.sas_ss_sp > 0 && o.sas_ss_size == o.sas_ss_sp + 8, "{o:?}");
        assert_eq!(o.vma.ok, 1, "{o:?}");
        assert_ne!(o.vma.vma_start, o.vma.vma_end);
        assert_ne!(o.group_leader, o.start_boottime);
        let b = o.bb;
        assert_eq!(b.ok, 1, "{b:?}");
        assert!(b.mm_arg_end == b.mm_arg_start + 8, "{b:?}");
        assert!(b.task_tgid > 0 && b.task_real_parent > 0 && b.tty_name > 0, "{b:?}");
    }
}
