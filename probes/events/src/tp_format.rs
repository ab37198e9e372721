//! Field offsets of tracepoint records, from their tracefs `format` files
//! (`events/<category>/<event>/format`), for fields that not every kernel
//! has: the loader hands them to the kernel side in `CONFIG` (0: absent).
//!
//! ```text
//!  tracefs .../sched/sched_process_exit/format ─▶ field_offset("group_dead") ─▶ Config.bb.tp_exit_group_dead
//! ```

/// Where tracefs may be mounted (the first is where eventprobe mounts it).
pub(crate) const ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The byte offset of `field` in a tracepoint's `format` text (lines like
/// `\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;`).
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|l| {
        let l = l.trim();
        let decl = l.strip_prefix("field:")?.split(';').next()?;
        // `type name` or `type name[16]`: the name is the last word.
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        l.split(';').find_map(|part| part.trim().strip_prefix("offset:")?.trim().parse().ok())
    })
}

/// The offset of `field` in the record of `category:event` on this
/// machine, or None (no such tracepoint or field, tracefs unreadable).
pub fn tracepoint_field(category: &str, event: &str, field: &str) -> Option<u32> {
    ROOTS.iter().find_map(|root| {
        let text = std::fs::read_to_string(format!("{root}/events/{category}/{event}/format")).ok()?;
        field_offset(&text, field)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sched_process_exit\nID: 369\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n\n\
        print fmt: \"comm=%s pid=%d\", REC->comm, REC->pid\n";

    #[test]
    fn finds_fields_by_name() {
        assert_eq!(field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(field_offset(EXIT, "comm"), Some(8));
        assert_eq!(field_offset(EXIT, "pid"), Some(24));
        assert_eq!(field_offset(EXIT, "common_pid"), Some(4));
        assert_eq!(field_offset(EXIT, "prio"), None);
        assert_eq!(field_offset("", "pid"), None);
    }
}
