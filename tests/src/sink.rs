//! A small, real HTTP/1.1 server on 127.0.0.1 standing in for the telemetry
//! backend in collector tests: keep-alive, Content-Length bodies, a thread
//! per connection. It decodes every post with `telemetry::posting`
//! (`v2_decode` for headers, `v3_decode` for `/v3/collector`) and answers as
//! told: a status, a hang, or a dropped connection; it can also stop
//! listening and start again on the same port. Pipelined requests are
//! served in order (and counted), and, like nginx's `keepalive_requests`,
//! it can end each connection after a number of requests with
//! `Connection: close`.
//!
//! For delivery-retry tests it can refuse only "poison" records (posts
//! whose payload starts with a prefix) while taking every other post
//! ([`Mode::Poison`]), answer 429/503 with a `Retry-After` in seconds or as
//! an HTTP-date ([`Mode::RetryAfter`], [`http_date`]), answer the next few
//! posts differently from the rest ([`Sink::answer_next`]), and it keeps
//! each post's arrival time ([`Post::at`]). For load tests a lean sink
//! ([`Sink::set_lean`]) keeps only each post's body.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use telemetry::{MachineId, Record};

use crate::http::{self, read_request, Request};

/// How the sink answers posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Answer this status (201 = the backend's success) with this body.
    Status(u16, String),
    /// Answer 429 with `Retry-After: N`.
    TooMany(u64),
    /// Read the request and never answer (until the mode changes).
    Hang,
    /// Close the connection without answering.
    Drop,
    /// Record the post at once, answer 201 after this many milliseconds.
    Slow(u64),
    /// Answer `status` with `body` to posts whose payload starts with
    /// `prefix` (poison records), 201 to every other post.
    Poison { prefix: String, status: u16, body: String },
    /// Answer `status` (429, 503, ...) with `Retry-After: value`, seconds
    /// (`"2"`) or an HTTP-date (see [`http_date`]).
    RetryAfter { status: u16, value: String },
}

/// The prefix of poison payloads in [`Mode::poison`].
pub const POISON_PREFIX: &str = "poison-";

impl Mode {
    /// 201 to every post.
    pub fn ok() -> Mode {
        Mode::Status(201, String::new())
    }

    /// 500 with the body `poison record refused` to posts whose payload
    /// starts with [`POISON_PREFIX`], 201 to the others.
    pub fn poison() -> Mode {
        Mode::Poison { prefix: POISON_PREFIX.into(), status: 500, body: "poison record refused".into() }
    }

    /// `status` with `Retry-After: <secs>`.
    pub fn retry_after_secs(status: u16, secs: u64) -> Mode {
        Mode::RetryAfter { status, value: secs.to_string() }
    }

    /// `status` with `Retry-After: <HTTP-date of now + secs>`.
    pub fn retry_after_date(status: u16, secs: u64) -> Mode {
        Mode::RetryAfter { status, value: http_date(SystemTime::now() + Duration::from_secs(secs)) }
    }
}

/// `t` as an HTTP-date (RFC 9110 §5.6.7 IMF-fixdate), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let wday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mon = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mon <= 2);
    let month =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(mon - 1) as usize];
    format!("{wday}, {d:02} {month} {y} {h:02}:{m:02}:{s:02} GMT")
}

/// One post as received.
#[derive(Debug, Clone)]
pub struct Post {
    /// The request method (`POST`).
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The record decoded from the post, or why it does not decode.
    pub decoded: Result<(Record, MachineId), String>,
    /// The status it was answered with (None: not answered).
    pub answered: Option<u16>,
    /// When the whole request had arrived.
    pub at: Instant,
}

impl Post {
    /// The value of header `name` (case-insensitive), if sent (a lean sink
    /// keeps no headers).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    /// The record's payload: the decoded record's, else the body (v2
    /// bodies are the payload; a lean sink does not decode).
    pub fn payload(&self) -> &[u8] {
        match &self.decoded {
            Ok((r, _)) => r.payload.as_bytes(),
            Err(_) => &self.body,
        }
    }

    /// Whether it was answered with a 2xx.
    pub fn ok(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Default)]
struct State {
    posts: Mutex<Vec<Post>>,
    cv: Condvar,
    connections: AtomicU64,
    /// Requests that were already in the buffer when the one before them
    /// was answered (sent pipelined).
    pipelined: AtomicU64,
    /// Requests served per connection before it is closed (0: no limit).
    keepalive_requests: AtomicU64,
    /// Modes for the next posts, one each, before `mode` applies again.
    next: Mutex<VecDeque<Mode>>,
    /// Keep only bodies: no headers, no decoding (load tests).
    lean: AtomicBool,
}

/// A running sink; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    state: Arc<State>,
    running: Arc<AtomicBool>,
}

impl Sink {
    /// Listens on a free port of 127.0.0.1, answering 201.
    pub fn start() -> Sink {
        Sink::start_on(0)
    }

    /// Listens on `port` (0 = any free one).
    pub fn start_on(port: u16) -> Sink {
        let mut s = Sink {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            mode: Arc::new(Mutex::new(Mode::Status(201, String::new()))),
            state: Arc::new(State::default()),
            running: Arc::new(AtomicBool::new(false)),
        };
        s.listen();
        s
    }

    fn listen(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("sink cannot listen on {}: {e}", self.addr),
            }
        };
        self.addr = listener.local_addr().expect("local addr");
        let running = Arc::new(AtomicBool::new(true));
        self.running = running.clone();
        let (mode, state) = (self.mode.clone(), self.state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let (mode, state, running) = (mode.clone(), state.clone(), running.clone());
                std::thread::spawn(move || serve(conn, &mode, &state, &running));
            }
        });
    }

    /// Stops listening (connections are refused) and closes open ones
    /// at their next request.
    pub fn stop(&self) {
        self.running.store(false, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        self.listen();
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// The mode in force for posts (not counting [`answer_next`](Self::answer_next)).
    pub fn mode(&self) -> Mode {
        self.mode.lock().unwrap().clone()
    }

    /// Answers the next posts with these modes, one post each, in order;
    /// then the mode set by [`set_mode`](Self::set_mode) applies again.
    pub fn answer_next(&self, modes: impl IntoIterator<Item = Mode>) {
        self.state.next.lock().unwrap().extend(modes);
    }

    /// Lean: keep only each post's body, path and status (no headers, no
    /// decoding), for tests that post tens of thousands of records.
    pub fn set_lean(&self, lean: bool) {
        self.state.lean.store(lean, Ordering::SeqCst);
    }

    /// Number of posts received so far.
    pub fn count(&self) -> usize {
        self.state.posts.lock().unwrap().len()
    }

    /// Runs `f` over the posts without copying them (large runs). It holds
    /// the sink's lock, as a [`wait_for`](Self::wait_for) predicate does:
    /// not from inside one.
    pub fn with_posts<T>(&self, f: impl FnOnce(&[Post]) -> T) -> T {
        f(&self.state.posts.lock().unwrap())
    }

    /// The URL of the sink's root.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn posts(&self) -> Vec<Post> {
        self.state.posts.lock().unwrap().clone()
    }

    /// Ends each connection after `n` requests (0: never), announcing it
    /// with `Connection: close` on the last answer, as nginx's
    /// `keepalive_requests` does.
    pub fn set_keepalive_requests(&self, n: u64) {
        self.state.keepalive_requests.store(n, Ordering::SeqCst);
    }

    /// Requests that arrived pipelined (behind an unanswered one).
    pub fn pipelined(&self) -> u64 {
        self.state.pipelined.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Posts answered with a 2xx.
    pub fn delivered(&self) -> Vec<Post> {
        self.posts().into_iter().filter(|p| p.answered.is_some_and(|s| (200..300).contains(&s))).collect()
    }

    /// Number of posts answered with a 2xx.
    pub fn delivered_count(&self) -> usize {
        self.state.posts.lock().unwrap().iter().filter(|p| p.ok()).count()
    }

    /// Waits until `pred` holds over the posts, or `timeout`. `pred` runs
    /// under the sink's lock: it must not call the sink's other methods.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Post]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.state.posts.lock().unwrap();
        loop {
            if pred(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.state.cv.wait_timeout(g, (deadline - now).min(Duration::from_millis(100))).unwrap().0;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: TcpStream, mode: &Mutex<Mode>, state: &State, running: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    let Ok(wr) = conn.try_clone() else { return };
    let mut wr = wr;
    let mut rd = BufReader::new(conn);
    let mut served = 0u64;
    loop {
        let Some(Request { method, path, headers, body }) = read_request(&mut rd) else { return };
        if !running.load(Ordering::SeqCst) {
            return;
        }
        let at = Instant::now();
        let lean = state.lean.load(Ordering::Relaxed);
        let decoded = if lean {
            Err("not decoded (lean sink)".to_string())
        } else if path.ends_with(telemetry::posting::V3_PATH) {
            telemetry::posting::v3_decode(&body).map_err(|e| e.to_string())
        } else {
            telemetry::posting::v2_decode(|n: &str| http::header(&headers, n), &body).map_err(|e| e.to_string())
        };
        let headers = if lean { Vec::new() } else { headers };
        let next = state.next.lock().unwrap().pop_front();
        let m = next.unwrap_or_else(|| mode.lock().unwrap().clone());
        let (status, extra, text) = match m {
            Mode::Status(s, t) => (s, String::new(), t),
            Mode::TooMany(secs) => (429, format!("Retry-After: {secs}\r\n"), String::new()),
            Mode::RetryAfter { status, value } => (status, format!("Retry-After: {value}\r\n"), String::new()),
            Mode::Poison { prefix, status, body: text } => {
                let payload = match &decoded {
                    Ok((r, _)) => r.payload.as_bytes(),
                    Err(_) => &body[..],
                };
                if payload.starts_with(prefix.as_bytes()) {
                    (status, String::new(), text)
                } else {
                    (201, String::new(), String::new())
                }
            }
            Mode::Hang => {
                keep(state, method, path, headers, body, decoded, None, at);
                // Hold the connection until the mode changes or the peer goes.
                let start = Instant::now();
                while *mode.lock().unwrap() == Mode::Hang && start.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Mode::Drop => {
                keep(state, method, path, headers, body, decoded, None, at);
                return;
            }
            Mode::Slow(ms) => {
                keep(state, method, path, headers, body, decoded, Some(201), at);
                std::thread::sleep(Duration::from_millis(ms));
                let resp = "HTTP/1.1 201 X\r\nContent-Length: 0\r\n\r\n";
                if wr.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        };
        keep(state, method, path, headers, body, decoded, Some(status), at);
        if !rd.buffer().is_empty() {
            state.pipelined.fetch_add(1, Ordering::SeqCst);
        }
        served += 1;
        let limit = state.keepalive_requests.load(Ordering::SeqCst);
        let last = limit > 0 && served >= limit;
        let close = if last { "Connection: close\r\n" } else { "" };
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{close}{extra}\r\n{text}", text.len());
        if wr.write_all(resp.as_bytes()).is_err() || last {
            // Requests behind the last one are not read: not processed.
            let _ = wr.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// Keeps one post and wakes those waiting for posts.
#[allow(clippy::too_many_arguments)]
fn keep(
    state: &State,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    decoded: Result<(Record, MachineId), String>,
    answered: Option<u16>,
    at: Instant,
) {
    state.posts.lock().unwrap().push(Post { method, path, headers, body, decoded, answered, at });
    state.cv.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(http_date(SystemTime::UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }
}
