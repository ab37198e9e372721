//! A small, real unix-socket receiver speaking the native and legacy
//! framings with the `telemetry` crate, for tests of probes that must not
//! depend on the whole collector. It accepts every valid record (or rejects
//! all with a fixed reason), and keeps what it received.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use telemetry::wire::native::{self, Ack, ClientFrame, Hello, ServerFrame};
use telemetry::wire::{self, legacy, Framing};
use telemetry::Record;

/// One record as received, with the framing it came in.
#[derive(Debug, Clone)]
pub struct Received {
    pub record: Record,
    pub legacy: bool,
    /// The `CFG:` path of a legacy record.
    pub config_path: Option<String>,
}

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<Received>>,
    errors: Mutex<Vec<String>>,
    cv: Condvar,
}

/// A listening receiver; stops accepting when dropped.
pub struct Receiver {
    pub path: PathBuf,
    shared: Arc<Shared>,
    _dir: Option<tempfile::TempDir>,
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub max_payload: u32,
    /// `Some(reason)`: reject every native record with this reason.
    pub reject: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { max_payload: telemetry::DEFAULT_MAX_PAYLOAD as u32, reject: None }
    }
}

impl Receiver {
    /// Listens on a fresh socket in a temporary directory.
    pub fn start(behaviour: Behaviour) -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("telem.sock");
        let mut r = Receiver::start_at(&path, behaviour);
        r._dir = Some(dir);
        r
    }

    /// Listens on `path`.
    pub fn start_at(path: &Path, behaviour: Behaviour) -> Receiver {
        let listener = UnixListener::bind(path).expect("bind receiver socket");
        let shared = Arc::new(Shared::default());
        let s2 = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let s3 = s2.clone();
                let b = behaviour.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &s3, &b) {
                        s3.errors.lock().unwrap().push(e.to_string());
                        s3.cv.notify_all();
                    }
                });
            }
        });
        Receiver { path: path.to_path_buf(), shared, _dir: None }
    }

    /// Waits until `n` records arrived (or the timeout passes) and returns
    /// all received so far.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.records.lock().unwrap();
        while g.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self.shared.cv.wait_timeout(g, left).unwrap().0;
        }
        g.clone()
    }

    /// Waits (up to 30 s) for a record for which `pred` holds and returns
    /// it; fails the test naming `what` and showing what arrived instead.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} record within 30 s; got {:#?}; errors {:?}",
                self.records(),
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Records received so far.
    pub fn records(&self) -> Vec<Received> {
        self.shared.records.lock().unwrap().clone()
    }

    /// Decoding errors seen so far (one per bad connection).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
}

/// Why a connection was not served to its end.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Legacy(#[from] legacy::LegacyError),
    #[error(transparent)]
    Frame(#[from] native::FrameError),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Io { what, source }
}

fn serve(mut conn: UnixStream, shared: &Shared, b: &Behaviour) -> Result<(), ServeError> {
    conn.set_read_timeout(Some(Duration::from_secs(30))).map_err(io("set a read timeout"))?;
    let mut first = [0u8; 4];
    conn.read_exact(&mut first).map_err(io("read first bytes"))?;
    match wire::sniff(first) {
        Framing::Legacy { total_size } => {
            let size = legacy::check_total_size(total_size, 16 << 20)?;
            let mut buf = vec![0u8; size];
            buf[..4].copy_from_slice(&first);
            conn.read_exact(&mut buf[4..]).map_err(io("read legacy record"))?;
            let d = legacy::decode(&buf)?;
            shared.records.lock().unwrap().push(Received {
                record: d.record,
                legacy: true,
                config_path: d.config_path,
            });
            shared.cv.notify_all();
            Ok(())
        }
        Framing::Native => {
            let mut rest = [0u8; 4];
            conn.read_exact(&mut rest).map_err(io("read the prefix"))?;
            let mut p = [0u8; 8];
            p[..4].copy_from_slice(&first);
            p[4..].copy_from_slice(&rest);
            native::check_prefix(p)?;
            native::write_frame(&mut conn, &ServerFrame::Hello(Hello { protocol: 1, max_payload: b.max_payload }))?;
            let limit = native::max_record_frame(b.max_payload as usize);
            let mut body = Vec::new();
            while native::read_frame(&mut conn, limit, &mut body)? {
                let ack = match native::decode_body::<ClientFrame>(&body) {
                    Err(e) => Ack::Rejected { reason: e.to_string() },
                    Ok(ClientFrame::Record(r)) => match (&b.reject, r.payload.check_limit(b.max_payload as usize)) {
                        (Some(reason), _) => Ack::Rejected { reason: reason.clone() },
                        (None, Err(e)) => Ack::Rejected { reason: e.to_string() },
                        (None, Ok(())) => {
                            shared.records.lock().unwrap().push(Received {
                                record: r,
                                legacy: false,
                                config_path: None,
                            });
                            shared.cv.notify_all();
                            Ack::Accepted { record_id: *telemetry::RecordId::random().as_bytes() }
                        }
                    },
                };
                native::write_frame(&mut conn, &ServerFrame::Ack(ack))?;
                conn.flush().map_err(io("flush"))?;
            }
            Ok(())
        }
    }
}
