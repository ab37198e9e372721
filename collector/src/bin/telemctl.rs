//! telemctl: controls the collector and reads its journal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telem_collector::journal::{self, Filter, Merged};
use telem_collector::{consent, control, service, Config};

/// Controls the telemetrics collector and reads its journal.
///
/// Reads the same configuration as telem-collector: -f FILE, else
/// /etc/telemetrics/telemetrics.conf, else
/// /usr/share/defaults/telemetrics/telemetrics.conf, else built-in defaults.
#[derive(Parser, Debug)]
#[command(name = "telemctl", version)]
struct Args {
    /// Use this configuration file instead of the lookup order.
    #[arg(short = 'f', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Allow records accepted from now on to leave this machine (creates
    /// etc_dir/opt-in, then tells the running collector, and returns once it
    /// applies it). Records already journaled stay local; DO_NOT_TRACK,
    /// airgap and debug still keep everything local.
    OptIn,
    /// Keep every record on this machine (removes etc_dir/opt-in, then tells
    /// the running collector, and returns once it applies it: no post
    /// starts after that; spooled records wait for a later opt-in).
    OptOut,
    /// Show which mode is in force (upload or local only, and why), the
    /// privacy level, the daemon's counters since it started (records
    /// refused, in total and per reason), the last delivery error, and each
    /// destination (server, otlp): delivered, refused, failures, state.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon to retry delivery of the spool now.
    Flush,
    /// Ask the daemon to reload its configuration (as SIGHUP does); returns
    /// once the new configuration is in force, or fails saying why it was
    /// refused.
    Reload,
    /// List journaled records (one line each: record id, time, classification,
    /// event id, boot id, fate).
    Journal(JournalArgs),
    /// Start the daemon (systemd units when systemd runs, else directly with a pid file).
    Start,
    /// Stop the daemon.
    Stop,
    /// Stop, then start the daemon.
    Restart,
    /// Print `active` (exit 0) or `inactive` (exit 3).
    IsActive,
    /// Install or remove crashprobe as the kernel's core handler (runs
    /// `crashprobe --install`, `--uninstall` or `--status`).
    Crash(CrashArgs),
    /// Show, for records in the journal, exactly the HTTP request the
    /// collector would send (method, URL, headers, body), without sending;
    /// with otlp_endpoint set, also the OTLP export request (JSON form).
    /// Bodies need the payload in the journal (kept unless
    /// record_retention_enabled=false).
    Preview(PreviewArgs),
    /// The black box: a start/stop flight recorder of this host (process
    /// execs and exits from eventprobe, every record accepted, instrument
    /// readings every 10 s), kept locally under state_dir/blackbox, never
    /// sent anywhere; exported as JSON lines (or an HTML timeline). Root only.
    Blackbox(BlackboxArgs),
    /// Print the data dictionary: every field collected, its source, an
    /// example and why (docs/DATA.md is generated from the same table).
    Fields {
        /// Print it as Markdown (the text of docs/DATA.md).
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(clap::Args, Debug)]
struct BlackboxArgs {
    #[command(subcommand)]
    cmd: BlackboxCmd,
}

#[derive(Subcommand, Debug)]
enum BlackboxCmd {
    /// Start a recording (one at a time). It continues across collector
    /// restarts and reboots until `blackbox stop` or --max-age.
    Start {
        /// A label for the recording (shown by status, list and the export).
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
        /// Stop by itself after this long: 90s, 30m, 12h, 7d, 2w.
        #[arg(long = "max-age", value_name = "DURATION")]
        max_age: Option<String>,
        /// Keep at most this much on disk (512K, 64M, 2G; at least 64K):
        /// the oldest segments go first, and a `truncated` entry says what went.
        #[arg(long = "max-size", value_name = "SIZE")]
        max_size: Option<String>,
    },
    /// Stop the recording.
    Stop,
    /// Whether a recording runs: its id, label, since when, events, bytes,
    /// and the gaps (events the kernel side or eventprobe had to drop).
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The recordings: id, label, start, stop, events, bytes.
    List {
        /// One JSON object per recording.
        #[arg(long)]
        json: bool,
    },
    /// Write a recording to a file (created 0600), its events in time order:
    /// --json FILE (JSON lines) and/or --html FILE (a timeline page).
    #[command(group = clap::ArgGroup::new("format").required(true).multiple(true))]
    Export {
        /// The recording's id (see `blackbox list`).
        id: String,
        /// JSON lines, one event per line.
        #[arg(long, value_name = "FILE", group = "format")]
        json: Option<PathBuf>,
        /// One self-contained HTML timeline page.
        #[arg(long, value_name = "FILE", group = "format")]
        html: Option<PathBuf>,
    },
    /// Delete a stopped recording.
    Delete {
        /// The recording's id.
        id: String,
    },
}

#[derive(clap::Args, Debug)]
struct PreviewArgs {
    /// Only the record with this record id.
    #[arg(short = 'r', long = "record-id", value_name = "ID")]
    record_id: Option<String>,
    /// One JSON object per record (method, url, headers, body).
    #[arg(long)]
    json: bool,
    /// After the journal, keep previewing records as they arrive (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
}

#[derive(clap::Args, Debug)]
struct CrashArgs {
    /// The crashprobe executable (default: beside telemctl, else the first
    /// on PATH).
    #[arg(long, value_name = "PATH", global = true)]
    exe: Option<PathBuf>,
    #[command(subcommand)]
    cmd: CrashCmd,
}

#[derive(Subcommand, Debug)]
enum CrashCmd {
    /// Make crashprobe the core_pattern handler (pipe mode, or socket mode
    /// with --crash-socket), saving the previous core_pattern and
    /// core_pipe_limit. In pipe mode the pattern names the configuration
    /// file given with -f, so the handler finds the collector.
    Install {
        /// Socket mode: core_pattern `@@SOCKET` (kernel 6.17+; `@SOCKET` on 6.16),
        /// served by `crashprobe --serve SOCKET`, which must already run (else this
        /// refuses). Without a value: /run/telemetrics/crash.sock.
        #[arg(long = "crash-socket", alias = "socket", value_name = "SOCKET", num_args = 0..=1)]
        crash_socket: Option<Option<PathBuf>>,
    },
    /// Restore the core_pattern and core_pipe_limit saved by `crash install`.
    Uninstall,
    /// Show the current core_pattern and whether crashprobe installed it.
    Status,
}

#[derive(clap::Args, Debug)]
struct JournalArgs {
    /// Only the record with this record id.
    #[arg(short = 'r', long = "record-id", value_name = "ID")]
    record_id: Option<String>,
    /// Only records with this event id.
    #[arg(short = 'e', long = "event-id", value_name = "ID")]
    event_id: Option<String>,
    /// Only this classification; a trailing `/*` matches a prefix (org.x/crash/*).
    #[arg(short = 'c', long = "classification", value_name = "CLASS")]
    classification: Option<String>,
    /// Only records of this boot id.
    #[arg(short = 'b', long = "boot-id", value_name = "ID")]
    boot_id: Option<String>,
    /// Include the payload (kept unless record_retention_enabled=false).
    #[arg(short = 'i', long = "include-payload")]
    include_payload: bool,
    /// Only crash records of this crash signature (exactly as shown by -V:
    /// crashprobe's `Signature:` line or `signature` field of the payload).
    #[arg(long = "signature", value_name = "SIG")]
    signature: Option<String>,
    /// Verbose: a column header, each crash record's signature under it,
    /// and the total count.
    #[arg(short = 'V', long = "verbose")]
    verbose: bool,
    /// One JSON object per record.
    #[arg(long)]
    json: bool,
    /// After listing, keep printing entries as they are journaled (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
}

fn crash_cmd(c: CrashArgs, config: Option<&std::path::Path>) -> ExitCode {
    use telem_collector::crash::{self, Action};
    let action = match c.cmd {
        CrashCmd::Install { crash_socket } => Action::Install { crash_socket, config: config.map(Into::into) },
        CrashCmd::Uninstall => Action::Uninstall,
        CrashCmd::Status => Action::Status,
    };
    let exe = match crash::find(c.exe.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match crash::run(&exe, &action) {
        // crashprobe said what happened (on stdout, or why not on stderr).
        Ok(st) if st.success() => ExitCode::SUCCESS,
        Ok(st) => ExitCode::from(st.code().and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0).unwrap_or(1)),
        Err(e) => fail(e),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("telemctl: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telemctl: {e}");
            return ExitCode::from(2);
        }
    };
    match args.cmd {
        Cmd::Crash(c) => crash_cmd(c, args.config.as_deref()),
        Cmd::Preview(p) => preview_cmd(&cfg, &p),
        Cmd::Blackbox(b) => blackbox_cmd(&cfg, b.cmd),
        Cmd::Fields { markdown } => {
            if markdown {
                print!("{}", telemetry::fields::markdown());
            } else {
                print_fields();
            }
            ExitCode::SUCCESS
        }
        Cmd::OptIn => match consent::opt_in(&cfg) {
            Ok(()) => {
                println!("opted in: records may now be sent to the server ({})", cfg.opt_in_file().display());
                tell_consent(&cfg, true)
            }
            Err(e) => fail(format!("cannot create {}: {e}", cfg.opt_in_file().display())),
        },
        Cmd::OptOut => match consent::opt_out(&cfg) {
            Ok(()) => {
                println!("opted out: records stay on this machine");
                tell_consent(&cfg, false)
            }
            Err(e) => fail(format!("cannot remove {}: {e}", cfg.opt_in_file().display())),
        },
        Cmd::Status { json } => match control::request(&cfg.control_socket(), "status") {
            Ok(line) if json => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Ok(line) => match serde_json::from_str::<telem_collector::stats::Status>(&line) {
                Ok(s) => {
                    print_status(&s);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("unexpected answer from the collector: {e}: {line}")),
            },
            Err(e) => fail(e),
        },
        Cmd::Flush | Cmd::Reload => {
            let c = if matches!(args.cmd, Cmd::Flush) { "flush" } else { "reload" };
            match control::command(&cfg.control_socket(), c) {
                Ok(_) => {
                    println!("{c}: done");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Journal(j) => journal_cmd(&cfg, &j),
        Cmd::Start => service::start(&cfg).map(|()| ExitCode::SUCCESS).unwrap_or_else(fail),
        Cmd::Stop => service::stop(&cfg).map(|()| ExitCode::SUCCESS).unwrap_or_else(fail),
        Cmd::Restart => service::restart(&cfg).map(|()| ExitCode::SUCCESS).unwrap_or_else(fail),
        Cmd::IsActive => match service::is_active(&cfg) {
            Ok(true) => {
                println!("active");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("inactive");
                ExitCode::from(3)
            }
            Err(e) => fail(e),
        },
    }
}

/// Tells the running collector that the opt-in file changed, and waits
/// until it applied it; without a running collector the file alone says it
/// (read at start).
fn tell_consent(cfg: &Config, opted_in: bool) -> ExitCode {
    match control::command(&cfg.control_socket(), "consent") {
        Ok(answer) => {
            let consent = answer.get("consent").and_then(|v| v.as_str()).unwrap_or_default();
            let mode = answer.get("mode").and_then(|v| v.as_str()).unwrap_or_default();
            if opted_in && consent != "deliver" {
                // Opted in, but something else keeps records local.
                println!("the running collector still sends nothing: {mode}");
            } else if !opted_in && consent == "deliver" {
                // The file came back between our change and the daemon's look.
                return fail(format!("the running collector still sends records: {mode}"));
            }
            ExitCode::SUCCESS
        }
        Err(control::ControlError::NotRunning { .. }) => {
            println!("(the collector is not running; it reads this when it starts)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!(
            "{e}; {} was changed, but the running collector did not confirm it applied the change",
            cfg.opt_in_file().display()
        )),
    }
}

fn print_fields() {
    use std::io::Write;
    use telemetry::fields::{Scope, FIELDS};
    let mut out = std::io::stdout().lock();
    for f in FIELDS {
        let scope = match f.scope {
            Scope::Sent => "sent (only when opted in)",
            Scope::Local => "local (never sent)",
        };
        let text = format!(
            "{}\n  scope:     {scope}\n  source:    {}\n  example:   {}\n  why:       {}\n  anonymous: {}\n\n",
            f.name, f.source, f.example, f.why, f.anonymous
        );
        // A closed pipe (`| head`) ends the listing quietly.
        if out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn preview_cmd(cfg: &Config, p: &PreviewArgs) -> ExitCode {
    use telem_collector::{otlp::OtlpPrepared, preview, request::Prepared};
    if cfg.server.is_none() && cfg.otlp.is_none() {
        return fail(
            "no server (nor otlp_endpoint) is configured, so nothing would ever be sent (set `server` or `otlp_endpoint` to preview requests)",
        );
    }
    let prep = Prepared::new(cfg);
    let oprep = OtlpPrepared::new(cfg);
    let (mid, note) = preview::machine_id(cfg);
    if let Some(n) = &note {
        eprintln!("note: {n}");
    }
    let show = |e: &journal::Entry| {
        if p.record_id.as_ref().is_some_and(|r| *r != e.id) {
            return;
        }
        let (pv, desc) = preview::preview(&prep, oprep.as_ref(), &mid, e);
        if p.json {
            println!("{}", serde_json::to_string(&pv).unwrap_or_default());
        } else {
            println!("{}", preview::render(&pv, desc.as_ref()));
        }
    };
    match preview::journal_records(&cfg.journal_dir) {
        Ok(all) => all.iter().for_each(show),
        Err(e) => return fail(e),
    }
    if p.follow {
        preview::follow(&cfg.journal_dir, |e| {
            show(&e);
            true
        });
    }
    ExitCode::SUCCESS
}

fn print_status(s: &telem_collector::stats::Status) {
    println!("telem-collector (pid {}) running since {} UTC", s.pid, journal::format_time(s.since));
    if let Some(w) = &s.host_went_down {
        println!("  warning:             {w}");
    }
    if !s.mode.is_empty() {
        println!("  mode:                {}", s.mode);
        println!("  privacy level:       {}", s.privacy_level);
        println!("  payload scrubbing:   {}", if s.scrubbing { "on" } else { "off (opt-in-no-privacy-filters)" });
    }
    println!("  server:              {}", s.server.as_deref().unwrap_or("(none)"));
    println!("  consent:             {}", s.consent);
    println!("  received:            {}", s.received);
    println!("  accepted:            {}", s.accepted);
    println!("  rejected:            {}", s.rejected);
    for (why, n) in s.rejected_by_reason.iter().filter(|(_, n)| **n > 0) {
        println!("    {:<18} {n}", format!("{why}:"));
    }
    println!("  delivered:           {}", s.delivered);
    println!("  spooled:             {} ({} bytes)", s.spooled, s.spool_bytes);
    println!("  rate-limited:        {}", s.rate_limited);
    println!("  dropped:             {} ({} expired)", s.dropped, s.expired);
    println!("  rejected by server:  {}", s.rejected_by_server);
    println!("  local only:          {}", s.local_only);
    println!("  delivery failures:   {}", s.delivery_failures);
    println!("  last delivery error: {}", s.last_delivery_error.as_deref().unwrap_or("(none)"));
    if let Some(r) = s.retry_in_secs {
        println!("  next retry in:       {r:.1} s");
    }
    if !s.destinations.is_empty() {
        println!("  destinations:");
    }
    for d in &s.destinations {
        println!("    {} {}", d.name, d.url);
        println!("      delivered:         {}", d.delivered);
        println!("      rejected:          {}", d.rejected);
        if d.partial_rejected > 0 {
            println!("      partial success:   {} log records rejected by the receiver", d.partial_rejected);
        }
        println!("      failures:          {}", d.failures);
        println!("      state:             {}", d.held.as_deref().unwrap_or("taking records"));
        println!("      last error:        {}", d.last_error.as_deref().unwrap_or("(none)"));
    }
}

/// The crash signature of a journaled record, derived from its payload when
/// read (the journal's format has no field for it): crashprobe's
/// `Signature:` line (payload format 1, and `crash/repeated` records) or the
/// `signature` field (format 2). `None` without a kept payload.
fn signature(e: &journal::Entry) -> Option<String> {
    let p = e.payload.as_deref()?;
    if p.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(p).ok()?;
        return v.get("signature")?.as_str().map(String::from);
    }
    // In the header lines, before the first blank line.
    p.lines().take_while(|l| !l.is_empty()).find_map(|l| l.strip_prefix("Signature: ")).map(|s| s.trim().to_string())
}

/// `filter`, and the signature (when one is asked for).
fn matches(filter: &Filter, want: Option<&str>, m: &Merged) -> bool {
    filter.matches(m) && want.is_none_or(|w| signature(&m.entry).as_deref() == Some(w))
}

/// One record as `--json` prints it: the entry, with its derived
/// `signature` when it has one.
fn json_line(m: &Merged, payload: bool) -> String {
    let sig = signature(&m.entry);
    let mut m = m.clone();
    if !payload {
        m.entry.payload = None;
    }
    let mut v = serde_json::to_value(&m).unwrap_or_default();
    if let (Some(sig), Some(o)) = (sig, v.as_object_mut()) {
        o.insert("signature".into(), sig.into());
    }
    v.to_string()
}

fn line(m: &Merged, payload: bool, verbose: bool) -> String {
    let e = &m.entry;
    let mut s = format!(
        "{} {} {} {} {} {}",
        e.id,
        journal::format_time(e.time),
        e.class.as_deref().unwrap_or("-"),
        e.event.as_deref().unwrap_or("-"),
        e.boot.as_deref().unwrap_or("-"),
        e.fate
    );
    if verbose {
        if let Some(sig) = signature(e) {
            s.push_str("\n    signature: ");
            s.push_str(&sig);
        }
    }
    if payload {
        match &e.payload {
            Some(p) => {
                s.push('\n');
                s.push_str(p);
                if !p.ends_with('\n') {
                    s.push('\n');
                }
            }
            None => s.push_str("\n(payload not kept: record_retention_enabled=false when it was journaled)\n"),
        }
    }
    s
}

fn journal_cmd(cfg: &Config, j: &JournalArgs) -> ExitCode {
    let filter = Filter {
        record_id: j.record_id.clone(),
        event_id: j.event_id.clone(),
        classification: j.classification.clone(),
        boot_id: j.boot_id.clone(),
    };
    let all = match journal::read(&cfg.journal_dir) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if j.verbose && !j.json {
        println!("Record ID, Time (UTC), Classification, Event ID, Boot ID, Fate (and a crash's signature)");
    }
    let mut n = 0usize;
    for m in all.iter().filter(|m| matches(&filter, j.signature.as_deref(), m)) {
        n += 1;
        if j.json {
            println!("{}", json_line(m, j.include_payload));
        } else {
            println!("{}", line(m, j.include_payload, j.verbose));
        }
    }
    if j.verbose && !j.json {
        println!("Total records: {n}");
    }
    if j.follow {
        follow(cfg, &filter, j);
    }
    ExitCode::SUCCESS
}

/// Prints entries appended after the listing, as they are journaled.
fn follow(cfg: &Config, filter: &Filter, j: &JournalArgs) {
    journal::follow(&cfg.journal_dir, |e| {
        let m = Merged { fate_time: e.time, entry: e };
        if m.entry.class.is_some() {
            if matches(filter, j.signature.as_deref(), &m) {
                if j.json {
                    println!("{}", json_line(&m, j.include_payload));
                } else {
                    println!("{}", line(&m, j.include_payload, j.verbose));
                }
            }
        } else if filter.record_id.as_ref().is_none_or(|r| *r == m.entry.id)
            && filter.classification.is_none()
            && j.signature.is_none()
        {
            // A later fate of a record.
            if j.json {
                println!("{}", serde_json::to_string(&m).unwrap_or_default());
            } else {
                println!("{} {} -> {}", m.entry.id, journal::format_time(m.entry.time), m.entry.fate);
            }
        }
        true
    })
}

/// `telemctl blackbox ...`.
fn blackbox_cmd(cfg: &Config, cmd: BlackboxCmd) -> ExitCode {
    use telem_collector::blackbox::{self, export, StartOptions};
    let sock = cfg.control_socket();
    let root = cfg.state_dir.join(blackbox::DIR_NAME);
    match cmd {
        BlackboxCmd::Start { label, max_age, max_size } => {
            let max_age_secs = match max_age.as_deref().map(blackbox::parse_duration).transpose() {
                Ok(d) => d.map(|d| d.as_secs()),
                Err(e) => return fail(format!("--max-age {e}")),
            };
            let max_size_bytes = match max_size.as_deref().map(blackbox::parse_size).transpose() {
                Ok(s) => s,
                Err(e) => return fail(format!("--max-size {e}")),
            };
            let opts = StartOptions { label, max_age_secs, max_size_bytes };
            let json = serde_json::to_string(&opts).unwrap_or_default();
            match control::command(&sock, &format!("blackbox start {json}")) {
                Ok(v) => {
                    println!("recording {}", v["id"].as_str().unwrap_or("?"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BlackboxCmd::Stop => match control::command(&sock, "blackbox stop") {
            Ok(v) => {
                println!("stopped recording {}", v["id"].as_str().unwrap_or("?"));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        BlackboxCmd::Status { json } => match control::command(&sock, "blackbox status") {
            Ok(v) => {
                let st: blackbox::Status = match serde_json::from_value(v["status"].clone()) {
                    Ok(s) => s,
                    Err(e) => return fail(format!("unexpected answer from the collector: {e}: {v}")),
                };
                if json {
                    println!("{}", serde_json::to_string(&st).unwrap_or_default());
                } else if !st.recording {
                    println!("not recording");
                } else {
                    println!("recording {}", st.id.as_deref().unwrap_or("?"));
                    if let Some(l) = &st.label {
                        println!("  label:     {l}");
                    }
                    println!("  since:     {}", st.since_wall_ns.map(blackbox::format_wall).unwrap_or_default());
                    println!("  events:    {}", st.events);
                    println!("  bytes:     {}", st.bytes);
                    println!("  gaps:      {} ({} events lost)", st.gaps, st.lost);
                    if st.feeds == 0 {
                        println!(
                            "  feeds:     none: no eventprobe is connected, so execs and exits are not being \
                             recorded (start eventprobe; see README)"
                        );
                    } else {
                        println!("  feeds:     {} connected (eventprobe)", st.feeds);
                    }
                    if st.truncated_segments > 0 {
                        println!(
                            "  truncated: {} oldest segment(s), {} events (--max-size)",
                            st.truncated_segments, st.truncated_entries
                        );
                    }
                    if let Some(a) = st.max_age_secs {
                        println!("  max age:   {a} s");
                    }
                    if let Some(m) = st.max_size_bytes {
                        println!("  max size:  {m} bytes");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        BlackboxCmd::List { json } => {
            let list: Vec<blackbox::Summary> = match control::command(&sock, "blackbox list") {
                Ok(v) => match serde_json::from_value(v["recordings"].clone()) {
                    Ok(l) => l,
                    Err(e) => return fail(format!("unexpected answer from the collector: {e}: {v}")),
                },
                // Without a running collector: from the files.
                Err(control::ControlError::NotRunning { .. }) => match blackbox::list_metas(&root) {
                    Ok(m) => m.iter().map(blackbox::Summary::from_files).collect(),
                    Err(e) => return fail(e),
                },
                Err(e) => return fail(e),
            };
            for s in &list {
                if json {
                    println!("{}", serde_json::to_string(s).unwrap_or_default());
                } else {
                    let stop = match (s.recording, s.stopped_wall_ns) {
                        (true, _) => "recording".to_string(),
                        (false, Some(t)) => blackbox::format_wall(t),
                        (false, None) => "(not stopped)".to_string(),
                    };
                    println!(
                        "{}  {}  {}  {} events  {} bytes{}",
                        s.id,
                        blackbox::format_wall(s.started_wall_ns),
                        stop,
                        s.events,
                        s.bytes,
                        s.label.as_deref().map(|l| format!("  {l}")).unwrap_or_default()
                    );
                }
            }
            if list.is_empty() && !json {
                println!("no recordings");
            }
            ExitCode::SUCCESS
        }
        BlackboxCmd::Export { id, json, html } => {
            if let Some(out) = json {
                match export::export_json(&root, &id, &out) {
                    Ok(x) => println!("{}: {} events ({} bytes) as JSON lines", out.display(), x.entries, x.bytes),
                    Err(e) => return fail(e),
                }
            }
            if let Some(out) = html {
                match export::export_html(&root, &id, &out) {
                    Ok(x) => println!("{}: {} events as an HTML timeline", out.display(), x.entries),
                    Err(e) => return fail(e),
                }
            }
            ExitCode::SUCCESS
        }
        BlackboxCmd::Delete { id } => match control::command(&sock, &format!("blackbox delete {id}")) {
            Ok(_) => {
                println!("deleted recording {id}");
                ExitCode::SUCCESS
            }
            // Without a running collector nothing is recording: delete the files.
            Err(control::ControlError::NotRunning { .. }) => match blackbox::delete(&root, &id) {
                Ok(()) => {
                    println!("deleted recording {id}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Err(e) => fail(e),
        },
    }
}
