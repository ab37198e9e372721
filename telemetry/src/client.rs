//! The probe side of the socket: finds the collector, sends records, waits
//! for their acknowledgements.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::config::{ConfigError, Settings, DEFAULT_SOCKET};
use crate::wire::legacy;
use crate::wire::native::{self, Ack, ClientFrame, FrameError, Hello, ServerFrame};
use crate::{PayloadError, Record, RecordId};

/// The environment variable that names the collector's socket.
pub const SOCKET_ENV: &str = "TELEM_SOCKET";
/// How long a connect, a write or an acknowledgement may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the collector listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPath {
    /// The socket's path.
    pub path: PathBuf,
    /// Which rule chose it: `--socket`, `TELEM_SOCKET`, the config file, or
    /// the default.
    pub source: SocketSource,
}

/// Which rule chose the socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// The `--socket` argument.
    Argument,
    /// The `TELEM_SOCKET` environment variable.
    Environment,
    /// `socket_path` of this configuration file.
    Config(PathBuf),
    /// [`DEFAULT_SOCKET`].
    Default,
}

impl SocketPath {
    /// `--socket` > env `TELEM_SOCKET` > config `socket_path` > `/run/telem-0`.
    pub fn resolve(argument: Option<&Path>) -> Result<SocketPath, ConfigError> {
        Self::resolve_with(argument, std::env::var_os(SOCKET_ENV).map(PathBuf::from), None)
    }

    /// As [`resolve`](Self::resolve), with the environment value and the
    /// configuration file given (for tests, and for `-f FILE`).
    pub fn resolve_with(
        argument: Option<&Path>,
        env: Option<PathBuf>,
        config: Option<&Path>,
    ) -> Result<SocketPath, ConfigError> {
        if let Some(p) = argument {
            return Ok(SocketPath { path: p.into(), source: SocketSource::Argument });
        }
        if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
            return Ok(SocketPath { path: p, source: SocketSource::Environment });
        }
        let settings = Settings::load(config)?;
        if let (Some(v), Some(file)) = (settings.get("socket_path"), settings.path.as_ref()) {
            return Ok(SocketPath { path: v.into(), source: SocketSource::Config(file.clone()) });
        }
        Ok(SocketPath { path: DEFAULT_SOCKET.into(), source: SocketSource::Default })
    }
}

/// Why sending failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens on the socket (it is missing, or refuses).
    #[error("no collector is listening on {path} ({reason}); start one with `telemctl start`, or name another socket with --socket or TELEM_SOCKET")]
    NoCollector {
        /// The socket tried.
        path: PathBuf,
        /// What connect(2) said.
        reason: String,
    },
    /// Connecting failed otherwise (permissions, ...).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// What connect(2) said.
        source: io::Error,
    },
    /// The collector did not answer in time.
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection ended before the acknowledgement.
    #[error("the collector closed the connection before acknowledging the record")]
    Closed,
    /// The collector refused the record.
    #[error("the collector rejected the record: {reason}")]
    Rejected {
        /// The collector's reason.
        reason: String,
    },
    /// The collector sent something the protocol does not allow.
    #[error("protocol error talking to the collector: {0}")]
    Protocol(String),
    /// The record's payload is over the collector's limit.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Reading or writing the socket failed.
    #[error("i/o error talking to the collector: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

fn map_frame_err(e: FrameError, timeout: Duration) -> ClientError {
    match e {
        FrameError::Truncated => ClientError::Closed,
        FrameError::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            ClientError::Timeout(timeout)
        }
        FrameError::Io(io) if matches!(io.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
            ClientError::Closed
        }
        FrameError::Io(io) => ClientError::Io(io),
        other => ClientError::Protocol(other.to_string()),
    }
}

fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let s = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NoCollector { path: path.into(), reason: source.to_string() }
        }
        _ => ClientError::Connect { path: path.into(), source },
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// The id the collector gave an accepted record, as 32 hex characters
/// (`RecordId::from_bytes(*id).to_string()`).
pub fn record_id_hex(id: &[u8; 16]) -> String {
    RecordId::from_bytes(*id).to_string()
}

/// A native-framing connection to the collector.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    hello: Hello,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Client {
    /// Connects with the default timeout.
    pub fn connect(socket: &SocketPath) -> Result<Client, ClientError> {
        Client::connect_path(&socket.path, DEFAULT_TIMEOUT)
    }

    /// Connects to `path`, sends the prefix and reads the collector's hello.
    pub fn connect_path(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let mut stream = connect(path, timeout)?;
        stream.write_all(&native::PREFIX).map_err(|e| map_frame_err(e.into(), timeout))?;
        let mut buf = Vec::new();
        if !native::read_frame(&mut stream, native::MAX_SERVER_FRAME, &mut buf)
            .map_err(|e| map_frame_err(e, timeout))?
        {
            return Err(ClientError::Closed);
        }
        let hello = match native::decode_body::<ServerFrame>(&buf).map_err(|e| map_frame_err(e, timeout))? {
            ServerFrame::Hello(h) => h,
            ServerFrame::Ack(Ack::Rejected { reason }) => return Err(ClientError::Rejected { reason }),
            other => return Err(ClientError::Protocol(format!("expected a hello, got {other:?}"))),
        };
        Ok(Client { stream, hello, timeout, buf })
    }

    /// What the collector announced.
    pub fn hello(&self) -> Hello {
        self.hello
    }

    /// Sends one record and waits for its acknowledgement; returns the
    /// record id the collector gave it.
    pub fn send(&mut self, record: &Record) -> Result<RecordId, ClientError> {
        let mut acks = self.send_many(std::slice::from_ref(record))?;
        acks.pop().unwrap_or(Err(ClientError::Closed))
    }

    /// Sends records (pipelined) and waits for every acknowledgement. The
    /// outer error is a failure of the connection; the inner results say,
    /// per record, whether it was accepted.
    pub fn send_many(&mut self, records: &[Record]) -> Result<Vec<Result<RecordId, ClientError>>, ClientError> {
        let limit = self.hello.max_payload as usize;
        let mut out = Vec::with_capacity(records.len());
        let mut batch = Vec::new();
        let mut sent = Vec::with_capacity(records.len());
        for r in records {
            match r.payload.check_limit(limit) {
                Ok(()) => {
                    native::encode_into(&ClientFrame::Record(r.clone()), &mut batch)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    sent.push(true);
                }
                Err(_) => sent.push(false),
            }
        }
        self.stream.write_all(&batch).map_err(|e| map_frame_err(e.into(), self.timeout))?;
        for (r, was_sent) in records.iter().zip(sent) {
            if !was_sent {
                out.push(Err(ClientError::Payload(PayloadError::TooLarge { size: r.payload.len(), limit })));
                continue;
            }
            out.push(self.read_ack()?);
        }
        Ok(out)
    }

    fn read_ack(&mut self) -> Result<Result<RecordId, ClientError>, ClientError> {
        if !native::read_frame(&mut self.stream, native::MAX_SERVER_FRAME, &mut self.buf)
            .map_err(|e| map_frame_err(e, self.timeout))?
        {
            return Err(ClientError::Closed);
        }
        match native::decode_body::<ServerFrame>(&self.buf).map_err(|e| map_frame_err(e, self.timeout))? {
            ServerFrame::Ack(Ack::Accepted { record_id }) => Ok(Ok(RecordId::from_bytes(record_id))),
            ServerFrame::Ack(Ack::Rejected { reason }) => Ok(Err(ClientError::Rejected { reason })),
            other => Err(ClientError::Protocol(format!("expected an acknowledgement, got {other:?}"))),
        }
    }
}

/// Sends one record on a connection of its own and returns the record id
/// the collector gave it, in one round trip: the prefix and the record go
/// in one write and the writing side is shut (no more records follow, so
/// the collector can answer straight from its accept loop); then the
/// collector's hello and the record's acknowledgement are read. The
/// collector's payload limit is not known beforehand: a record over it is
/// refused by the collector, with the reason ([`ClientError::Rejected`]).
///
/// ```no_run
/// # use telemetry::{client, Classification, Payload, Record, Severity};
/// let record = Record::builder(Classification::parse("org.example/hello/world")?, Severity::Low, Payload::text("hi")).build();
/// let id = client::send_once(std::path::Path::new("/run/telem/telem.sock"), &record, client::DEFAULT_TIMEOUT)?;
/// println!("accepted as {id}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn send_once(path: &Path, record: &Record, timeout: Duration) -> Result<RecordId, ClientError> {
    let mut bytes = native::PREFIX.to_vec();
    native::encode_into(&ClientFrame::Record(record.clone()), &mut bytes)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut stream = connect(path, timeout)?;
    stream.write_all(&bytes).map_err(|e| map_frame_err(e.into(), timeout))?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut buf = Vec::new();
    if !native::read_frame(&mut stream, native::MAX_SERVER_FRAME, &mut buf).map_err(|e| map_frame_err(e, timeout))? {
        return Err(ClientError::Closed);
    }
    let hello = match native::decode_body::<ServerFrame>(&buf).map_err(|e| map_frame_err(e, timeout))? {
        ServerFrame::Hello(h) => h,
        ServerFrame::Ack(Ack::Rejected { reason }) => return Err(ClientError::Rejected { reason }),
        other => return Err(ClientError::Protocol(format!("expected a hello, got {other:?}"))),
    };
    let mut c = Client { stream, hello, timeout, buf };
    c.read_ack()?
}

/// Sends one record in the legacy framing (one connection per record, no
/// acknowledgement: the old daemon sends nothing back). Waits, up to the
/// timeout, for the daemon to close the connection, which it does once it
/// has read the record.
pub fn send_legacy(
    path: &Path,
    record: &Record,
    config_path: Option<&str>,
    timeout: Duration,
) -> Result<(), ClientError> {
    let bytes = legacy::encode(record, config_path)?;
    let mut s = connect(path, timeout)?;
    s.write_all(&bytes).map_err(|e| map_frame_err(e.into(), timeout))?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut sink = [0u8; 256];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout(timeout))
            }
            // A reset after the bytes were written still delivered them.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("t.conf");
        std::fs::write(&conf, "[settings]\nsocket_path=/tmp/from-config\n").unwrap();
        let arg = Path::new("/tmp/from-arg");
        let env = Some(PathBuf::from("/tmp/from-env"));
        let r = SocketPath::resolve_with(Some(arg), env.clone(), Some(&conf)).unwrap();
        assert_eq!((r.path.as_path(), r.source), (arg, SocketSource::Argument));
        let r = SocketPath::resolve_with(None, env, Some(&conf)).unwrap();
        assert_eq!((r.path.to_str().unwrap(), r.source), ("/tmp/from-env", SocketSource::Environment));
        let r = SocketPath::resolve_with(None, None, Some(&conf)).unwrap();
        assert_eq!(r.path.to_str().unwrap(), "/tmp/from-config");
        let empty = dir.path().join("e.conf");
        std::fs::write(&empty, "[settings]\n").unwrap();
        let r = SocketPath::resolve_with(None, None, Some(&empty)).unwrap();
        assert_eq!((r.path.to_str().unwrap(), r.source), (DEFAULT_SOCKET, SocketSource::Default));
    }

    #[test]
    fn no_collector_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Client::connect_path(&dir.path().join("none.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NoCollector { .. }));
        assert!(e.to_string().contains("no collector is listening"), "{e}");
    }
}
