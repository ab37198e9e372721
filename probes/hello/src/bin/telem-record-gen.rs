//! `telem-record-gen`: makes any record from the command line and sends it
//! to the collector.
//!
//! The original C program's command line works unchanged: `-c/--class`,
//! `-s/--severity` (default 1), `-p/--payload`, `-P/--payload-file`,
//! `-R/--record-version` (the payload format version, default 1),
//! `-e/--event-id`, `-f/--config-file` (also `--config`), `-n/--no-post`, `-o/--echo`,
//! `-V/--version`, `-h/--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hello_probes::{parse_args, read_payload, report_error, send_and_report, write_echo, ProbeError, SendOptions};
use telemetry::{Classification, EventId, Payload, Record, Severity};

const PROGRAM: &str = "telem-record-gen";

/// Create a custom telemetry record and send it to the collector.
///
/// The payload comes from -P FILE, else from -p TEXT, else from standard
/// input (as the original, -P wins when both are given). It is never
/// truncated: a payload over the collector's limit is an error. Exits 0
/// once the collector has accepted the record (or, with -n, once it is
/// made), 1 with a one-line reason otherwise.
#[derive(Parser, Debug)]
#[command(name = "telem-record-gen", disable_version_flag = true, infer_long_args = true, args_override_self = true)]
struct Args {
    /// Print the program version.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Severity: 1 (low) .. 4 (critical).
    #[arg(short = 's', long = "severity", value_name = "SEVERITY", default_value = "1", allow_hyphen_values = true)]
    severity: String,
    /// Classification DOMAIN/PROBE/REST, e.g. org.example/myprobe/event (required).
    #[arg(short = 'c', long = "class", value_name = "CLASS", allow_hyphen_values = true)]
    class: Option<String>,
    /// Record body.
    #[arg(short = 'p', long = "payload", value_name = "TEXT", allow_hyphen_values = true)]
    payload: Option<String>,
    /// File to read the payload from (`-` is standard input).
    #[arg(short = 'P', long = "payload-file", value_name = "FILE", allow_hyphen_values = true)]
    payload_file: Option<PathBuf>,
    /// Version number for the format of the payload.
    #[arg(
        short = 'R',
        long = "record-version",
        visible_alias = "payload-version",
        value_name = "VERSION",
        default_value_t = 1
    )]
    payload_version: u32,
    /// Event id (32 lowercase hex) to group this record with others.
    #[arg(short = 'e', long = "event-id", value_name = "EVENT_ID", allow_hyphen_values = true)]
    event_id: Option<String>,
    /// Echo the record to stdout: its header lines, then the payload.
    #[arg(short = 'o', long = "echo")]
    echo: bool,
    /// Do not send the record (make it, and print it with -o).
    #[arg(short = 'n', long = "no-post")]
    no_post: bool,
    #[command(flatten)]
    send: SendOptions,
}

/// Makes the record. Every option is checked before the payload is read,
/// so a bad option does not consume standard input.
fn build(args: &Args) -> Result<Record, ProbeError> {
    args.send.check_config()?;
    let class = args.class.as_deref().ok_or(ProbeError::MissingClassification)?;
    let classification: Classification =
        class.parse().map_err(|source| ProbeError::Classification { value: class.to_string(), source })?;
    let severity: Severity =
        args.severity.parse().map_err(|source| ProbeError::Severity { value: args.severity.clone(), source })?;
    let event_id = args
        .event_id
        .as_deref()
        .map(|e| e.parse::<EventId>().map_err(|source| ProbeError::EventId { value: e.to_string(), source }))
        .transpose()?;
    let payload = match (&args.payload_file, &args.payload) {
        (Some(file), _) => Payload::from_vec(read_payload(Some(file))?),
        (None, Some(text)) => Payload::text(text.clone()),
        (None, None) => Payload::from_vec(read_payload(None)?),
    };
    let mut b = Record::builder(classification, severity, payload).payload_format_version(args.payload_version);
    if let Some(id) = event_id {
        b = b.event_id(id);
    }
    Ok(b.build())
}

fn run(args: &Args) -> ExitCode {
    let record = match build(args) {
        Ok(r) => r,
        Err(e) => return report_error(PROGRAM, &e),
    };
    if args.echo {
        if let Err(e) = write_echo(&record, &mut std::io::stdout().lock()) {
            return report_error(PROGRAM, &ProbeError::Echo(e));
        }
    }
    if args.no_post {
        return ExitCode::SUCCESS;
    }
    send_and_report(PROGRAM, Ok(record), &args.send)
}

fn main() -> ExitCode {
    let args: Args = match parse_args(PROGRAM) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.version {
        println!("{}", hello_probes::VERSION);
        return ExitCode::SUCCESS;
    }
    run(&args)
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("telem-record-gen").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn original_short_options() {
        let a = parse(&[
            "-c",
            "a/b/c",
            "-s",
            "3",
            "-p",
            "text",
            "-P",
            "file",
            "-R",
            "2",
            "-e",
            "0123456789abcdef0123456789abcdef",
            "-f",
            "/etc/t.conf",
            "-n",
            "-o",
        ]);
        assert_eq!(a.class.as_deref(), Some("a/b/c"));
        assert_eq!(a.severity, "3");
        assert_eq!(a.payload.as_deref(), Some("text"));
        assert_eq!(a.payload_file.as_deref(), Some(std::path::Path::new("file")));
        assert_eq!(a.payload_version, 2);
        assert_eq!(a.event_id.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(a.send.config.as_deref(), Some(std::path::Path::new("/etc/t.conf")));
        assert!(a.no_post && a.echo && !a.version);
    }

    #[test]
    fn original_long_options() {
        let a = parse(&[
            "--class",
            "a/b/c",
            "--severity",
            "4",
            "--payload",
            "t",
            "--payload-file",
            "f",
            "--record-version",
            "5",
            "--event-id",
            "0123456789abcdef0123456789abcdef",
            "--config-file",
            "c",
            "--no-post",
            "--echo",
        ]);
        assert_eq!((a.class.as_deref(), a.severity.as_str(), a.payload_version), (Some("a/b/c"), "4", 5));
        assert_eq!(a.send.config.as_deref(), Some(std::path::Path::new("c")));
        assert!(a.no_post && a.echo);
        // The original's help spells it --config_file.
        assert_eq!(parse(&["--config_file", "d"]).send.config.as_deref(), Some(std::path::Path::new("d")));
        // The suite's spelling.
        assert_eq!(parse(&["--config", "e"]).send.config.as_deref(), Some(std::path::Path::new("e")));
        assert!(parse(&["--version"]).version);
        assert!(parse(&["-V"]).version);
    }

    #[test]
    fn defaults_are_the_originals() {
        let a = parse(&["-c", "a/b/c"]);
        assert_eq!(a.severity, "1");
        assert_eq!(a.payload_version, 1);
        assert!(!a.no_post && !a.echo && a.payload.is_none() && a.payload_file.is_none());
    }

    #[test]
    fn getopt_forms() {
        // Bundled flags, attached values, values that start with '-',
        // unambiguous long prefixes: getopt_long accepts them all.
        let a = parse(&["-no", "-s2", "-ca/b/c", "-p", "-1 degrees", "--sev", "3"]);
        assert!(a.no_post && a.echo);
        assert_eq!(a.severity, "3");
        assert_eq!(a.class.as_deref(), Some("a/b/c"));
        assert_eq!(a.payload.as_deref(), Some("-1 degrees"));
    }

    #[test]
    fn a_repeated_option_takes_the_last_value() {
        let a = parse(&["-c", "a/b/c", "-c", "d/e/f", "-s", "2", "-s", "4"]);
        assert_eq!((a.class.as_deref(), a.severity.as_str()), (Some("d/e/f"), "4"));
    }

    #[test]
    fn payload_version_keeps_a_long_name() {
        assert_eq!(parse(&["--payload-version", "7"]).payload_version, 7);
    }

    #[test]
    fn our_additions_stay() {
        let a = parse(&["--socket", "/tmp/s", "--legacy", "--timeout", "3", "--print-id"]);
        assert_eq!(a.send.socket.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert!(a.send.legacy && a.send.print_id);
        assert_eq!(a.send.timeout, std::time::Duration::from_secs(3));
    }

    #[test]
    fn bad_command_lines_are_errors() {
        for args in [&["-R", "x"][..], &["-s"], &["--bogus"], &["-x"], &["--pay", "x"]] {
            let e = Args::try_parse_from(std::iter::once("telem-record-gen").chain(args.iter().copied()));
            assert!(e.is_err(), "{args:?}");
        }
    }

    #[test]
    fn bad_values_name_the_option() {
        use super::build;
        let cases: &[(&[&str], &str)] = &[
            (&["-p", "x"], "a classification is required"),
            (&["-c", "a/b", "-p", "x"], "-c \"a/b\""),
            (&["-c", "a/b/c", "-s", "0", "-p", "x"], "-s \"0\""),
            (&["-c", "a/b/c", "-s", "x", "-p", "x"], "-s \"x\""),
            (&["-c", "a/b/c", "-e", "XYZ", "-p", "x"], "-e \"XYZ\""),
            (&["-c", "a/b/c", "-p", "x", "-f", "/nonexistent/t.conf"], "/nonexistent/t.conf"),
        ];
        for (args, msg) in cases {
            let e = build(&parse(args)).unwrap_err().to_string();
            assert!(e.contains(msg), "{args:?}: {e}");
        }
    }
}
