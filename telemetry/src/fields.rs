//! The data dictionary: every field the suite collects, where it comes
//! from, an example, and why it is collected. `telemctl fields` prints it
//! and `docs/DATA.md` is generated from it; tests fail when a record field
//! exists that this table lacks, or when the document is stale.

/// Where a field goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In every record; leaves the machine only when it is opted in.
    Sent,
    /// Kept in the local journal only; never sent.
    Local,
}

/// One collected field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The field's name (as in the record, the journal and docs/DATA.md).
    pub name: &'static str,
    /// Whether it is sent or kept locally.
    pub scope: Scope,
    /// Where its value comes from.
    pub source: &'static str,
    /// An example value.
    pub example: &'static str,
    /// Why it is collected.
    pub why: &'static str,
    /// What the `anonymous` privacy level sends instead.
    pub anonymous: &'static str,
}

const SAME: &str = "same";
const DMI_PLACEHOLDER: &str = "`anonymous` (placeholder)";

/// Every field, record fields first (in wire order), then the journal's.
/// The journal also keeps, per record, the sent fields it needs for
/// `telemctl preview` (`severity`, `creation_timestamp`,
/// `payload_format_version`, the host facts, and `payload` unless
/// `record_retention_enabled = false`), under their names above.
pub const FIELDS: &[Field] = &[
    Field { name: "record_format_version", scope: Scope::Sent, source: "constant", example: "4", why: "lets the backend parse the record", anonymous: SAME },
    Field { name: "classification", scope: Scope::Sent, source: "the probe", example: "org.clearlinux/crash/clr", why: "says what kind of event this is; the backend groups and purges by it", anonymous: SAME },
    Field { name: "severity", scope: Scope::Sent, source: "the probe", example: "3", why: "ranks events (1 low .. 4 critical)", anonymous: SAME },
    Field { name: "machine_id", scope: Scope::Sent, source: "the collector: random, rotated every 3 days (standard), the static id file (static), or random per collector start (anonymous)", example: "5f2c0a9be1d84c7a9e0b3f6d2a1c8e47", why: "counts how many machines see a problem without identifying any for long", anonymous: "a random id per collector start, never written to disk" },
    Field { name: "creation_timestamp", scope: Scope::Sent, source: "the probe's clock, unix seconds (pstoreprobe: when the kernel saved the dump, when its backend says)", example: "1700000000", why: "orders events and lets old ones expire", anonymous: SAME },
    Field { name: "arch", scope: Scope::Sent, source: "uname(2) machine", example: "x86_64", why: "crashes differ by architecture", anonymous: SAME },
    Field { name: "host_type", scope: Scope::Sent, source: "/sys/class/dmi/id sys_vendor|product_name|product_version", example: "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-9.0", why: "hardware-specific failures", anonymous: DMI_PLACEHOLDER },
    Field { name: "build", scope: Scope::Sent, source: "VERSION_ID of /etc/os-release (or /usr/lib/os-release)", example: "41230", why: "which OS release a problem appears in", anonymous: SAME },
    Field { name: "kernel_version", scope: Scope::Sent, source: "uname(2) release", example: "6.18.44-fc-v769", why: "kernel-specific failures", anonymous: SAME },
    Field { name: "payload_format_version", scope: Scope::Sent, source: "the probe", example: "1", why: "lets the backend parse the payload", anonymous: SAME },
    Field { name: "system_name", scope: Scope::Sent, source: "ID of /etc/os-release", example: "clear-linux-os", why: "which distribution a problem appears in", anonymous: SAME },
    Field { name: "board_name", scope: Scope::Sent, source: "/sys/class/dmi/id board_name|board_vendor", example: "no_bn_file|no_bv_file", why: "hardware-specific failures", anonymous: DMI_PLACEHOLDER },
    Field { name: "cpu_model", scope: Scope::Sent, source: "first `model name` of /proc/cpuinfo", example: "Intel(R) Xeon(R) CPU @ 2.20GHz", why: "CPU-specific failures", anonymous: DMI_PLACEHOLDER },
    Field { name: "bios_version", scope: Scope::Sent, source: "/sys/class/dmi/id bios_version", example: "1.16.3", why: "firmware-specific failures", anonymous: DMI_PLACEHOLDER },
    Field { name: "event_id", scope: Scope::Sent, source: "random, or derived by crashprobe/eventprobe from (boot id, pid, process start time), by klogscanner from (boot id, the report's first /dev/kmsg sequence number)", example: "0123456789abcdef0123456789abcdef", why: "groups the records of one occurrence", anonymous: SAME },
    Field { name: "payload", scope: Scope::Sent, source: "the probe (crash backtraces, kernel reports, failed units' messages; see the table below); scrubbed of user names, host name, addresses and e-mail by default", example: "Process: /usr/bin/segv ...", why: "what happened", anonymous: SAME },
    Field { name: "signature", scope: Scope::Sent, source: "crashprobe, inside crash payloads (a `Signature:` line in format 1, the `signature` field in format 2; `telemctl journal -V` and `--json` show it, derived from the journaled payload): module and function of the top 3 meaningful frames of the crashing thread (crash plumbing such as signal trampolines, abort, raise, assert and panic runtimes skipped), module+offset where unsymbolized, then the first one's module+offset", example: "segv!level3 | segv!level2 | segv!level1 @ segv+0x1139", why: "groups the crashes of one bug whatever the pid, address layout or restarts (`telemctl journal --signature`); crashprobe's crash-loop governor counts by it", anonymous: SAME },
    Field { name: "payload: Registers (signal/fatal)", scope: Scope::Sent, source: "eventprobe: the crashing thread's user registers at the fatal signal. ip, sp and bp always; ax bx cx dx si di r8-r15 only with `event_registers = true` (default false) and never at `privacy_level = anonymous`; for a process that is not dumpable only ip and sp, and no stack copy (`memory withheld: the process is not dumpable`)", example: "Registers: ip=0x55d0c0001139 sp=0x7ffc0e2f1a08 bp=0x1", why: "ip and sp locate the crash and start the unwinding; the other registers are program data (they may hold secrets), sent only when asked for", anonymous: "ip, sp and bp only" },
    Field { name: "id", scope: Scope::Local, source: "the collector: a random per-start prefix and a counter", example: "9a0b1c2d3e4f50610000000000000001", why: "names the record in `telemctl journal` and `telemctl preview`", anonymous: SAME },
    Field { name: "time", scope: Scope::Local, source: "the collector's clock, unix seconds", example: "1763797200", why: "when the record arrived; local retention prunes by it", anonymous: SAME },
    Field { name: "class", scope: Scope::Local, source: "the record's classification", example: "org.clearlinux/crash/clr", why: "filter the journal (`telemctl journal -c`)", anonymous: SAME },
    Field { name: "event", scope: Scope::Local, source: "the record's event_id", example: "0123456789abcdef0123456789abcdef", why: "filter the journal (`telemctl journal -e`)", anonymous: SAME },
    Field { name: "boot", scope: Scope::Local, source: "/proc/sys/kernel/random/boot_id", example: "4f1e2d3c4b5a69788796a5b4c3d2e1f0", why: "filter the journal by boot (`telemctl journal -b`)", anonymous: SAME },
    Field { name: "uid", scope: Scope::Local, source: "SO_PEERCRED of the probe's connection", example: "0", why: "who sent the record, for local auditing", anonymous: SAME },
    Field { name: "pid", scope: Scope::Local, source: "SO_PEERCRED of the probe's connection", example: "1234", why: "which process sent the record, for local auditing", anonymous: SAME },
    Field { name: "fate", scope: Scope::Local, source: "the collector", example: "delivered / delivered (otlp) / spooled / local-only: not opted in", why: "what happened to the record, and why (one line per destination: the OTLP endpoint's fates say `(otlp)`)", anonymous: SAME },
    Field { name: "fate_time", scope: Scope::Local, source: "the collector's clock, unix seconds (`telemctl journal --json` only)", example: "1763797201", why: "when the last fate was decided", anonymous: SAME },
];

/// What one probe sends: its classifications and what its payloads hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePayload {
    /// The probe.
    pub probe: &'static str,
    /// Its classifications (and severities).
    pub classifications: &'static str,
    /// What its payload holds.
    pub payload: &'static str,
}

/// The payloads of the suite's probes (the table under the fields in
/// docs/DATA.md).
pub const PROBE_PAYLOADS: &[ProbePayload] = &[
    ProbePayload { probe: "hprobe", classifications: "`org.clearlinux/hello/world` (1), `org.clearlinux/heartbeat/ping` (1)", payload: "`hello` and a newline" },
    ProbePayload { probe: "crashprobe", classifications: "`org.clearlinux/crash/clr` (3), `.../crash/error` (4), `.../crash/clr-build` (2), `.../crash/unknown` (2)", payload: "process path, pid, signal, each thread's backtrace (function, module, file:line); third-party binaries: `Crash from third party` only, by default" },
    ProbePayload { probe: "eventprobe", classifications: "`org.clearlinux/signal/fatal` (3), `org.clearlinux/oom/kill` (3), `org.clearlinux/exit/abnormal` (2)", payload: "the process, its signal or exit status, the crashing thread's frames (function, module, file:line; Go programs through Go's signal handling); OOM kills: the victim's RSS, its cgroup and memory cgroup, the OOM constraint (from the kernel's oom-kill summary line, `unknown` when the kernel rate-limited that line) and the victim's frames at the kill" },
    ProbePayload { probe: "klogscanner", classifications: "`org.clearlinux/kernel/warning` (2), `.../kernel/bug` (4 or 2), `.../kernel/panic` (4), `.../kernel/stackoverflow` (4), `org.clearlinux/bert/debug` (2), `.../kernel/overrun` (2)", payload: "the kernel report's first line, kernel version, taint flags, loaded modules, call-trace function and module names, registers as `Zero`/`Non-zero` (their values only with `opt-in-no-privacy-filters`); BERT: the `[Hardware Error]` lines; overrun: how many kernel log messages were lost; a storm's count record adds how many identical reports were held back" },
    ProbePayload { probe: "pstoreprobe", classifications: "as klogscanner (`.../kernel/panic` when the dump holds a panic)", payload: "as klogscanner for the dump's first report, `Panic :` the panic line, `Boot : previous`, the pstore backend and file names, and the end (16 KiB at most) of the previous boot's console and pmsg logs when pstore kept them" },
    ProbePayload { probe: "journalprobe", classifications: "`org.clearlinux/journal/error` (2)", payload: "the journal entry's `MESSAGE` (failed units; entries of priority 0-3 only with `opt-in-no-privacy-filters`)" },
    ProbePayload { probe: "telem-record-gen", classifications: "any (`-c`)", payload: "what it is given" },
];

/// Where a field goes in the OpenTelemetry log record the collector sends
/// to `otlp_endpoint` (docs/WIRE.md has the wire rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpField {
    /// The OTLP field or attribute (`resource:` for resource attributes).
    pub name: &'static str,
    /// What it holds, from which record field.
    pub from: &'static str,
    /// At `privacy_level = anonymous`.
    pub anonymous: &'static str,
}

/// The OTLP form of a record, field by field (the collector's
/// `otlp::log_record` and `otlp::resource` build exactly these; a test
/// checks they agree).
pub const OTLP_FIELDS: &[OtlpField] = &[
    OtlpField { name: "timeUnixNano", from: "`creation_timestamp` in nanoseconds", anonymous: SAME },
    OtlpField { name: "observedTimeUnixNano", from: "the collector's accept time (`time`) in nanoseconds", anonymous: SAME },
    OtlpField { name: "severityNumber / severityText", from: "`severity` 1-4 as INFO (9), WARN (13), ERROR (17), FATAL (21)", anonymous: SAME },
    OtlpField { name: "body", from: "`payload` (a string; bytes payloads as bytes), scrubbed as for the backend", anonymous: SAME },
    OtlpField { name: "eventName", from: "`classification`", anonymous: SAME },
    OtlpField { name: "telemetry.classification", from: "`classification`", anonymous: SAME },
    OtlpField { name: "telemetry.event_id", from: "`event_id`", anonymous: SAME },
    OtlpField { name: "telemetry.record_id", from: "`id` (the collector's record id: the same record sent again has the same one, so receivers can drop duplicates)", anonymous: SAME },
    OtlpField { name: "telemetry.record_format_version", from: "`record_format_version`", anonymous: SAME },
    OtlpField { name: "telemetry.payload_format_version", from: "`payload_format_version`", anonymous: SAME },
    OtlpField { name: "telemetry.kernel_version", from: "`kernel_version`", anonymous: SAME },
    OtlpField { name: "telemetry.host_type", from: "`host_type`", anonymous: DMI_PLACEHOLDER },
    OtlpField { name: "telemetry.board_name", from: "`board_name`", anonymous: DMI_PLACEHOLDER },
    OtlpField { name: "telemetry.cpu_model", from: "`cpu_model`", anonymous: DMI_PLACEHOLDER },
    OtlpField { name: "telemetry.bios_version", from: "`bios_version`", anonymous: DMI_PLACEHOLDER },
    OtlpField { name: "exception.type", from: "crash and fatal-signal records: the signal's name (`SIGSEGV`) from the payload's `Signal:` line (format 2: `signal`)", anonymous: SAME },
    OtlpField { name: "exception.message", from: "crash and fatal-signal records: signal name and number, the executable, the crash signature when there is one", anonymous: SAME },
    OtlpField { name: "exception.stacktrace", from: "crash and fatal-signal records: the payload's backtrace text (format 2: its frames as text)", anonymous: SAME },
    OtlpField { name: "process.pid", from: "crash and fatal-signal records: the payload's `PID:` (format 2: `pid`)", anonymous: SAME },
    OtlpField { name: "process.executable.name / .path", from: "crash and fatal-signal records: the payload's `Process:` path (scrubbed as the payload is) and its last part", anonymous: SAME },
    OtlpField { name: "process.executable.build_id.gnu", from: "crash records of payload format 2: the build id of the executable's frames", anonymous: SAME },
    OtlpField { name: "resource: service.name", from: "the probe that sends the classification (`crashprobe`, `eventprobe`, `klogscanner`, `journalprobe`, `hprobe`; others `telemetrics/<second segment>`)", anonymous: SAME },
    OtlpField { name: "resource: host.arch", from: "`arch` as the semantic conventions spell it (`amd64`, `arm64`, ...)", anonymous: SAME },
    OtlpField { name: "resource: os.type / os.name / os.version", from: "`linux`, `system_name`, `build`", anonymous: SAME },
    OtlpField { name: "resource: host.id", from: "`machine_id` (rotated every 3 days at standard, the static id at static)", anonymous: "absent" },
    OtlpField { name: "resource: session.id", from: "anonymous only: the per-start session id (`machine_id` at that level)", anonymous: "the session id" },
];

/// One field of a black-box recording's entries
/// ([`crate::blackbox::Entry`]): kept on this machine only, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlackboxField {
    /// The entry kinds that have it (`*`: every entry).
    pub kinds: &'static str,
    /// The field's name in the JSON form.
    pub name: &'static str,
    /// Where its value comes from, and what it is.
    pub meaning: &'static str,
}

/// Every field of a black-box entry (docs/DATA.md lists them; a test
/// checks this table against the types).
pub const BLACKBOX_FIELDS: &[BlackboxField] = &[
    BlackboxField { kinds: "*", name: "mono_ns", meaning: "CLOCK_BOOTTIME, nanoseconds: orders events within one boot" },
    BlackboxField { kinds: "*", name: "wall_ns", meaning: "wall-clock time, nanoseconds since the Unix epoch (UTC)" },
    BlackboxField { kinds: "*", name: "kind", meaning: "`exec`, `exit`, `fatal_signal`, `oom`, `record`, `reading`, `gap`, `truncated` or `marker`" },
    BlackboxField { kinds: "exec, exit, fatal_signal, oom", name: "pid", meaning: "eventprobe: the process (thread group) id" },
    BlackboxField { kinds: "exec, exit", name: "ppid", meaning: "eventprobe: the parent's pid" },
    BlackboxField { kinds: "exec", name: "uid", meaning: "eventprobe: the user id that ran it" },
    BlackboxField { kinds: "exec", name: "tty", meaning: "eventprobe: the controlling terminal (`pts/3`), when there is one" },
    BlackboxField { kinds: "exec", name: "exe", meaning: "eventprobe: the executable's path (scrubbed by the collector)" },
    BlackboxField { kinds: "exec", name: "argv", meaning: "eventprobe: the arguments, argv[0] first, scrubbed by the collector as payloads are (unless `opt-in-no-privacy-filters`)" },
    BlackboxField { kinds: "exec", name: "cgroup", meaning: "eventprobe: the cgroup v2 path" },
    BlackboxField { kinds: "exec", name: "unit", meaning: "eventprobe: the systemd unit the cgroup names" },
    BlackboxField { kinds: "exec", name: "operator", meaning: "eventprobe: run from a terminal by a person (`tty` set)" },
    BlackboxField { kinds: "exit, fatal_signal, oom", name: "comm", meaning: "eventprobe: the process's command name (15 bytes)" },
    BlackboxField { kinds: "exit", name: "status", meaning: "eventprobe: the exit status, when it exited" },
    BlackboxField { kinds: "exit, fatal_signal", name: "signal", meaning: "eventprobe: the signal that killed it / was delivered" },
    BlackboxField { kinds: "exit", name: "core_dumped", meaning: "eventprobe: the kernel dumped (or piped) its core" },
    BlackboxField { kinds: "exit", name: "run_ms", meaning: "eventprobe: milliseconds from its start to its exit" },
    BlackboxField { kinds: "fatal_signal", name: "tid", meaning: "eventprobe: the thread the signal was delivered to" },
    BlackboxField { kinds: "oom", name: "anon_rss_kb", meaning: "eventprobe: the OOM victim's anonymous RSS, kB" },
    BlackboxField { kinds: "record", name: "record_id", meaning: "the collector: the record's id (`telemctl journal -r`)" },
    BlackboxField { kinds: "record", name: "event_id", meaning: "the record's event id" },
    BlackboxField { kinds: "record", name: "classification", meaning: "the record's classification" },
    BlackboxField { kinds: "record", name: "severity", meaning: "the record's severity (1-4)" },
    BlackboxField { kinds: "record", name: "payload", meaning: "the record's payload as journaled (scrubbed; with its `Recent activity:` when a crash), at most 64 KiB" },
    BlackboxField { kinds: "record", name: "pid", meaning: "the crashed or reporting process, from the payload's `PID:` line or `pid` field" },
    BlackboxField { kinds: "reading", name: "load1", meaning: "/proc/loadavg, 1 minute" },
    BlackboxField { kinds: "reading", name: "load5", meaning: "/proc/loadavg, 5 minutes" },
    BlackboxField { kinds: "reading", name: "load15", meaning: "/proc/loadavg, 15 minutes" },
    BlackboxField { kinds: "reading", name: "mem_total_kb", meaning: "/proc/meminfo MemTotal" },
    BlackboxField { kinds: "reading", name: "mem_available_kb", meaning: "/proc/meminfo MemAvailable" },
    BlackboxField { kinds: "reading", name: "swap_total_kb", meaning: "/proc/meminfo SwapTotal" },
    BlackboxField { kinds: "reading", name: "swap_free_kb", meaning: "/proc/meminfo SwapFree" },
    BlackboxField { kinds: "reading", name: "disk_used_bytes", meaning: "statvfs of `state_dir`: bytes used" },
    BlackboxField { kinds: "reading", name: "disk_total_bytes", meaning: "statvfs of `state_dir`: bytes in total" },
    BlackboxField { kinds: "reading", name: "top", meaning: "the 5 processes that used the most CPU since the last reading (/proc/*/stat): `pid`, `comm`, `cpu_pct` (percent of one CPU)" },
    BlackboxField { kinds: "gap", name: "lost", meaning: "events lost (kernel ring buffer full, eventprobe's bounded buffer)" },
    BlackboxField { kinds: "gap", name: "reason", meaning: "why they were lost" },
    BlackboxField { kinds: "truncated", name: "segments", meaning: "segments deleted to keep the recording under `--max-size`" },
    BlackboxField { kinds: "truncated", name: "entries", meaning: "entries those segments held" },
    BlackboxField { kinds: "truncated", name: "until_wall_ns", meaning: "wall-clock time of the newest entry deleted" },
    BlackboxField { kinds: "marker", name: "text", meaning: "the recorder's own events: started (label, boot id), stopped, collector started (boot id), max-age reached" },
];

/// Looks a field up by name.
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The dictionary as a Markdown document (`docs/DATA.md`).
pub fn markdown() -> String {
    let mut s = String::from(
        "# Data dictionary\n\nGenerated from `telemetry::fields::FIELDS` and `PROBE_PAYLOADS` (`telemctl fields` prints the fields; `telemctl fields --markdown`, this page). \
Do not edit by hand: run `UPDATE_DOCS=1 cargo test -p telemetry --test data_dictionary`.\n\n\
Nothing leaves the machine unless it is opted in. Fields marked *sent* are in every record posted \
to the backend; fields marked *local* stay in the local journal. The journal also keeps each \
record's sent fields as they would be sent, its `payload` included (unless `record_retention_enabled = false`), \
in files only root reads, so `telemctl journal -i` shows what was collected.\n\n\
| field | scope | source | example | why | anonymous level |\n|---|---|---|---|---|---|\n",
    );
    for f in FIELDS {
        let scope = match f.scope {
            Scope::Sent => "sent",
            Scope::Local => "local",
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | `{}` | {} | {} |\n",
            f.name,
            scope,
            f.source.replace('|', "\\|"),
            f.example.replace('|', "\\|"),
            f.why,
            f.anonymous
        ));
    }
    s.push_str(
        "\n## What each probe sends\n\nThe classification (severity in brackets) and what the payload holds; \
payloads are scrubbed by the collector unless `opt-in-no-privacy-filters` exists.\n\n\
| probe | classifications | payload |\n|---|---|---|\n",
    );
    for p in PROBE_PAYLOADS {
        s.push_str(&format!("| {} | {} | {} |\n", p.probe, p.classifications, p.payload));
    }
    s.push_str(
        "\n## The OpenTelemetry form (`otlp_endpoint`)\n\nWith `otlp_endpoint` set, each record also goes (or only goes) \
to an OpenTelemetry collector as one log record, under the same consent, privacy level and scrubbing. \
The same fields, named as OpenTelemetry names them (docs/WIRE.md has the wire format):\n\n\
| OTLP field or attribute | from | anonymous level |\n|---|---|---|\n",
    );
    for f in OTLP_FIELDS {
        s.push_str(&format!("| `{}` | {} | {} |\n", f.name, f.from, f.anonymous));
    }
    s.push_str(
        "\n## Black-box recordings (`telemctl blackbox`)\n\nA recording is kept on this machine only, \
under `state_dir/blackbox/<id>/` (readable by root only), and is never sent anywhere, opted in or not; \
`telemctl blackbox export` writes it to a file the operator names. Each entry is one JSON object \
(`kind` names it); its fields:\n\n| kinds | field | meaning |\n|---|---|---|\n",
    );
    for f in BLACKBOX_FIELDS {
        s.push_str(&format!("| {} | `{}` | {} |\n", f.kinds, f.name, f.meaning));
    }
    s
}
