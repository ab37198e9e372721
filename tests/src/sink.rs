//! A small, real HTTP/1.1 server on 127.0.0.1 standing in for the telemetry
//! backend in collector tests: keep-alive, Content-Length bodies, a thread
//! per connection. It decodes every post with `telemetry::posting`
//! (`v2_decode` for headers, `v3_decode` for `/v3/collector`) and answers as
//! told: a status, a hang, or a dropped connection; it can also stop
//! listening and start again on the same port. Pipelined requests are
//! served in order (and counted), and, like nginx's `keepalive_requests`,
//! it can end each connection after a number of requests with
//! `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use telemetry::{MachineId, Record};

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
}

impl Post {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
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

    /// Waits until `pred` holds over the posts, or `timeout`.
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
        let mut request_line = String::new();
        match rd.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !running.load(Ordering::SeqCst) {
            return;
        }
        let method = request_line.split_whitespace().next().unwrap_or("").to_string();
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            if rd.read_line(&mut l).unwrap_or(0) == 0 {
                return;
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let decoded = if path.ends_with(telemetry::posting::V3_PATH) {
            telemetry::posting::v3_decode(&body)
        } else {
            let hs = headers.clone();
            telemetry::posting::v2_decode(
                |n: &str| hs.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str()),
                &body,
            )
        }
        .map_err(|e| e.to_string());
        let m = mode.lock().unwrap().clone();
        let (status, extra, text) = match m {
            Mode::Status(s, t) => (s, String::new(), t),
            Mode::TooMany(secs) => (429, format!("Retry-After: {secs}\r\n"), String::new()),
            Mode::Hang => {
                record(state, method.clone(), path, headers, body, decoded, None);
                // Hold the connection until the mode changes or the peer goes.
                let start = Instant::now();
                while *mode.lock().unwrap() == Mode::Hang && start.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Mode::Drop => {
                record(state, method.clone(), path, headers, body, decoded, None);
                return;
            }
            Mode::Slow(ms) => {
                record(state, method.clone(), path, headers, body, decoded, Some(201));
                std::thread::sleep(Duration::from_millis(ms));
                let resp = "HTTP/1.1 201 X\r\nContent-Length: 0\r\n\r\n";
                if wr.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        };
        record(state, method.clone(), path, headers, body, decoded, Some(status));
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

#[allow(clippy::too_many_arguments)]
fn record(
    state: &State,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    decoded: Result<(Record, MachineId), String>,
    answered: Option<u16>,
) {
    state.posts.lock().unwrap().push(Post { method, path, headers, body, decoded, answered });
    state.cv.notify_all();
}
