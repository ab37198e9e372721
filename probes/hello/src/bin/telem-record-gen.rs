//! `telem-record-gen`: makes any record from the command line and sends it
//! to the collector.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hello_probes::{read_payload, send_and_report, ProbeError, SendOptions};
use telemetry::{Classification, EventId, Payload, Record, Severity};

/// Make a telemetry record and send it to the collector.
///
/// The payload comes from -p TEXT, from -P FILE, or else from standard
/// input. It is never truncated: a payload over the collector's limit is an
/// error. Exits 0 once the collector has accepted the record, non-zero with
/// a one-line reason otherwise.
#[derive(Parser, Debug)]
#[command(name = "telem-record-gen", version, disable_version_flag = true)]
struct Args {
    /// Print the version.
    #[arg(long, action = clap::ArgAction::Version)]
    version: (),
    /// Classification DOMAIN/PROBE/REST, e.g. org.example/myprobe/event.
    #[arg(short = 'c', long = "class", value_name = "CLASS")]
    class: String,
    /// Severity: 1 (low) .. 4 (critical).
    #[arg(short = 'n', long = "severity", value_name = "SEVERITY")]
    severity: String,
    /// Payload text.
    #[arg(short = 'p', long = "payload", value_name = "TEXT", conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the payload from FILE (`-` is standard input).
    #[arg(short = 'P', long = "payload-file", value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// Event id (32 lowercase hex) to group this record with others.
    #[arg(short = 'e', long = "event-id", value_name = "EVENT_ID")]
    event_id: Option<String>,
    /// Payload format version.
    #[arg(short = 'V', long = "payload-version", value_name = "PAYLOAD_VERSION", default_value_t = 1)]
    payload_version: u32,
    #[command(flatten)]
    send: SendOptions,
}

fn build(args: &Args) -> Result<Record, ProbeError> {
    let classification: Classification =
        args.class.parse().map_err(|e| ProbeError::Invalid(format!("-c {:?}: {e}", args.class)))?;
    let severity: Severity =
        args.severity.parse().map_err(|e| ProbeError::Invalid(format!("-n: {e}")))?;
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => Payload::text(text.clone()),
        (None, file) => Payload::from_vec(read_payload(file.as_deref())?),
    };
    let mut b = Record::builder(classification, severity, payload).payload_format_version(args.payload_version);
    if let Some(e) = &args.event_id {
        let id: EventId = e.parse().map_err(|err| ProbeError::Invalid(format!("-e {e:?}: {err}")))?;
        b = b.event_id(id);
    }
    Ok(b.build())
}

fn main() -> ExitCode {
    let args = Args::parse();
    send_and_report("telem-record-gen", build(&args), &args.send)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
