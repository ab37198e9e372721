//! `hprobe`: sends a `hello/world` record (or a `heartbeat/ping`) to the
//! collector, to check that records flow.
//!
//! The original C program's command line works unchanged: `-H/--heartbeat`,
//! `-f/--config_file` (also `--config-file`, and `--config` as every program
//! of the suite spells it), `-V/--version`, `-h/--help`.

use std::process::ExitCode;

use clap::Parser;
use hello_probes::{parse_args, send_and_report, ProbeError, SendOptions};
use telemetry::{Classification, Payload, Record, Severity, DEFAULT_DOMAIN};

const PROGRAM: &str = "hprobe";

/// Send a hello record (org.clearlinux/hello/world, severity 1, payload
/// "hello") to the telemetrics collector.
///
/// Exits 0 once the collector has accepted the record, 1 with a one-line
/// reason otherwise.
#[derive(Parser, Debug)]
#[command(name = "hprobe", disable_version_flag = true, infer_long_args = true, args_override_self = true)]
struct Args {
    /// Create a "heartbeat" record (org.clearlinux/heartbeat/ping) instead.
    #[arg(short = 'H', long)]
    heartbeat: bool,
    /// Print the program version.
    #[arg(short = 'V', long = "version")]
    version: bool,
    #[command(flatten)]
    send: SendOptions,
}

fn record(args: &Args) -> Result<Record, ProbeError> {
    args.send.check_config()?;
    let class = format!("{DEFAULT_DOMAIN}/{}", if args.heartbeat { "heartbeat/ping" } else { "hello/world" });
    let classification =
        Classification::parse(&class).map_err(|source| ProbeError::Classification { value: class.clone(), source })?;
    Ok(Record::builder(classification, Severity::Low, Payload::text("hello\n")).build())
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
    send_and_report(PROGRAM, record(&args), &args.send)
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;
    use std::path::Path;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("hprobe").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn original_options() {
        assert!(parse(&["-H"]).heartbeat);
        assert!(parse(&["--heartbeat"]).heartbeat);
        assert!(!parse(&[]).heartbeat);
        assert!(parse(&["-V"]).version);
        assert!(parse(&["--version"]).version);
        for args in [
            &["-f", "/c"][..],
            &["--config_file", "/c"],
            &["--config-file", "/c"],
            &["--config", "/c"],
            &["-f/c"],
            &["--config_file=/c"],
        ] {
            assert_eq!(parse(args).send.config.as_deref(), Some(Path::new("/c")), "{args:?}");
        }
        let a = parse(&["-H", "-f", "/c"]);
        assert!(a.heartbeat);
        assert_eq!(a.send.config.as_deref(), Some(Path::new("/c")));
    }

    #[test]
    fn heartbeat_record() {
        let r = super::record(&parse(&["-H"])).unwrap();
        assert_eq!(r.classification.as_str(), "org.clearlinux/heartbeat/ping");
        let r = super::record(&parse(&[])).unwrap();
        assert_eq!(r.classification.as_str(), "org.clearlinux/hello/world");
        assert_eq!(r.severity, telemetry::Severity::Low);
    }

    #[test]
    fn unknown_options_are_errors() {
        for args in [&["-x"][..], &["--bogus"], &["-f"]] {
            assert!(Args::try_parse_from(std::iter::once("hprobe").chain(args.iter().copied())).is_err(), "{args:?}");
        }
    }
}
