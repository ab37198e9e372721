use super::*;
use crate::config::Config;
use bytes::{Bytes, BytesMut};
use hyper_util::client::proxy::matcher::Matcher;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[test]
fn retry_after_in_seconds_or_as_an_http_date() {
    let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
    assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
    assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now), Some(Duration::from_secs(3)));
    assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now), Some(Duration::ZERO), "a date past is no wait");
    assert_eq!(retry_after("soon", now), None);
    assert_eq!(retry_after("-5", now), None);
}

#[test]
fn tunnels_name_the_port() {
    assert_eq!(with_port("https://h.example/v3".parse().unwrap()).to_string(), "https://h.example:443/v3");
    assert_eq!(with_port("http://h.example/".parse().unwrap()).to_string(), "http://h.example:80/");
    assert_eq!(with_port("http://h.example:8080/".parse().unwrap()).to_string(), "http://h.example:8080/");
}

/// Reads one answer from `bytes` (the connection ends after them).
fn answer_of(bytes: &[u8]) -> (Result<(Answer, bool), ReadError>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut io = bytes;
    let mut rbuf = BytesMut::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = rt.block_on(read_answer(&mut io, &mut rbuf, deadline, Duration::from_secs(5)));
    (r, rbuf.len())
}

#[test]
fn answers_of_every_framing() {
    // Content-Length, keep-alive; what follows stays for the next answer.
    let (r, left) = answer_of(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201");
    let (a, reusable) = r.unwrap();
    assert_eq!((a.status, &a.body[..], reusable, left), (201, &b"ok"[..], true, 12));
    // Interim 100 Continue, then chunked with a trailer.
    let (r, _) = answer_of(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n4;x=y\r\n tid\r\n0\r\nX-T: 1\r\n\r\n");
    let (a, reusable) = r.unwrap();
    assert_eq!((a.status, &a.body[..], reusable), (400, &b"bad tid"[..], true));
    // Close-delimited (HTTP/1.0, no length): not reusable.
    let (r, _) = answer_of(b"HTTP/1.0 500 Oops\r\n\r\nall of it");
    let (a, reusable) = r.unwrap();
    assert_eq!((a.status, &a.body[..], reusable), (500, &b"all of it"[..], false));
    // Connection: close; Retry-After.
    let (r, _) =
        answer_of(b"HTTP/1.1 429 Slow down\r\nRetry-After: 7\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let (a, reusable) = r.unwrap();
    assert_eq!((a.status, a.retry_after, reusable), (429, Some(Duration::from_secs(7)), false));
    // HTTP/1.0 keep-alive is honoured; 204 has no body whatever it says.
    let (r, left) = answer_of(b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n");
    assert!(r.unwrap().1);
    assert_eq!(left, 0);
    // Nothing at all: closed cleanly. Half an answer, garbage, lies: errors.
    assert_eq!(answer_of(b"").0.unwrap_err(), ReadError::Closed);
    for bad in [
        &b"HTTP/1.1 201 Created\r\nContent-Le"[..],
        b"HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\nshort",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
    ] {
        assert!(
            matches!(answer_of(bad).0, Err(ReadError::Send(SendError::Failed(_)))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A long body is cut to MAX_ANSWER_BODY.
    let mut long = format!("HTTP/1.1 400 Bad\r\nContent-Length: {}\r\n\r\n", 100_000).into_bytes();
    long.extend(std::iter::repeat_n(b'x', 100_000));
    let (a, reusable) = answer_of(&long).0.unwrap();
    assert_eq!((a.body.len(), reusable), (MAX_ANSWER_BODY, true));
}

/// What a scripted server does with one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    /// Answer 201 with the request's number (over all connections) as body.
    Answer,
    /// Answer, with `Connection: close`, and close.
    AnswerAndClose,
    /// Close without answering (and without saying so before).
    Close,
    /// Never answer.
    Hang,
    /// Answer twice (a broken server).
    Twice,
}

/// A real HTTP/1.1 server on 127.0.0.1 that decides per request
/// (connection number, request number on it, requests already buffered
/// behind it); it records how many whole requests each read held.
struct Scripted {
    uri: http::Uri,
    reads: Arc<Mutex<Vec<(usize, usize)>>>,
    conns: Arc<std::sync::atomic::AtomicUsize>,
    closer: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Scripted {
    fn start(script: fn(usize, usize, usize) -> Act) -> Scripted {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: http::Uri = format!("http://{}/", l.local_addr().unwrap()).parse().unwrap();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closer = Arc::new(Mutex::new(Vec::new()));
        let numbered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r2, c2, cl2) = (reads.clone(), conns.clone(), closer.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let conn = c2.fetch_add(1, Ordering::SeqCst);
                cl2.lock().unwrap().push(s.try_clone().unwrap());
                let (reads, numbered) = (r2.clone(), numbered.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut on_conn = 0;
                    let mut tmp = [0u8; 65536];
                    loop {
                        let n = match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&tmp[..n]);
                        // Whole requests in the buffer.
                        let mut whole = Vec::new();
                        let mut at = 0;
                        loop {
                            let mut hs = [httparse::EMPTY_HEADER; 32];
                            let mut req = httparse::Request::new(&mut hs);
                            let Ok(httparse::Status::Complete(h)) = req.parse(&buf[at..]) else { break };
                            let len: usize = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                                .unwrap_or(0);
                            if buf.len() < at + h + len {
                                break;
                            }
                            at += h + len;
                            whole.push(());
                        }
                        buf.drain(..at);
                        reads.lock().unwrap().push((conn, whole.len()));
                        let total = whole.len();
                        for (k, ()) in whole.into_iter().enumerate() {
                            let behind = total - k - 1;
                            match script(conn, on_conn, behind) {
                                Act::Hang => loop {
                                    std::thread::sleep(Duration::from_secs(1));
                                },
                                Act::Close => {
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                act => {
                                    let answer = |numbered: &std::sync::atomic::AtomicUsize| {
                                        let i = numbered.fetch_add(1, Ordering::SeqCst).to_string();
                                        let close =
                                            if act == Act::AnswerAndClose { "Connection: close\r\n" } else { "" };
                                        format!("HTTP/1.1 201 Created\r\n{close}Content-Length: {}\r\n\r\n{i}", i.len())
                                    };
                                    let mut a = answer(&numbered);
                                    if act == Act::Twice {
                                        a.push_str(&answer(&numbered));
                                    }
                                    if s.write_all(a.as_bytes()).is_err() || act == Act::AnswerAndClose {
                                        let _ = s.shutdown(std::net::Shutdown::Both);
                                        return;
                                    }
                                }
                            }
                            on_conn += 1;
                        }
                    }
                });
            }
        });
        Scripted { uri, reads, conns, closer }
    }

    /// Closes every connection accepted so far.
    fn close_all(&self) {
        for s in self.closer.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn client(timeout: Duration) -> Transport {
    let cfg = Config { delivery_timeout: timeout, delivery_pipeline: 8, delivery_concurrency: 8, ..Config::default() };
    Transport::with_proxies(&cfg, Matcher::builder().build()).unwrap()
}

fn requests(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{:02}", i % 100)))
        .collect()
}

fn bodies(answers: &[Result<Answer, SendError>]) -> Vec<String> {
    answers.iter().map(|a| String::from_utf8_lossy(&a.as_ref().expect("answered").body).into_owned()).collect()
}

fn numbers(from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| i.to_string()).collect()
}

/// Open for its first `n` admissions.
struct OpenFor(std::sync::atomic::AtomicUsize);

impl Gate for OpenFor {
    type Guard<'a> = ();
    fn admit(&self) -> impl Future<Output = Option<()>> + Send {
        let left = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        std::future::ready(left.ok().map(|_| ()))
    }
}

#[test]
fn a_closed_gate_withholds_every_request_not_yet_written() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let srv = Scripted::start(|_, _, _| Act::Answer);
    let t = client(Duration::from_secs(5));
    // Closed from the start: no connection, nothing sent.
    let got = rt.block_on(t.exchange_gated(&srv.uri, &requests(3), &OpenFor(0.into())));
    assert!(got.iter().all(|a| a == &Err(SendError::Withheld)), "{got:?}");
    assert_eq!(srv.conns.load(Ordering::SeqCst), 0);
    // Open for the connection and the first write (one request alone on
    // a new connection), then closed: the rest are withheld.
    let got = rt.block_on(t.exchange_gated(&srv.uri, &requests(4), &OpenFor(2.into())));
    assert_eq!(bodies(&got[..1]), numbers(0, 1));
    assert!(got[1..].iter().all(|a| a == &Err(SendError::Withheld)), "{got:?}");
    // The connection went back to the pool, and serves the next batch.
    let got = rt.block_on(t.exchange(&srv.uri, &requests(2)));
    assert_eq!(bodies(&got), numbers(1, 2));
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1);
}

#[test]
fn pipelines_only_after_a_keep_alive_answer_and_keeps_the_order() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let srv = Scripted::start(|_, _, _| Act::Answer);
    let t = client(Duration::from_secs(5));
    let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
    assert_eq!(bodies(&got), numbers(0, 8));
    let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
    assert_eq!(bodies(&got), numbers(8, 8));
    let reads = srv.reads.lock().unwrap().clone();
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1, "one pooled connection: {reads:?}");
    // The first request went alone; then the rest of the batch in one
    // write, and the whole second batch on the now-proven connection.
    assert_eq!(reads[0], (0, 1), "{reads:?}");
    assert!(reads.iter().any(|&(_, n)| n >= 7), "{reads:?}");
    assert_eq!(t.pipeline(), 8);
}

#[test]
fn connection_close_sends_the_rest_on_a_new_connection() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // As nginx's keepalive_requests: the third answer on a connection is its last.
    let srv = Scripted::start(|_, i, _| if i == 2 { Act::AnswerAndClose } else { Act::Answer });
    let t = client(Duration::from_secs(5));
    let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
    assert_eq!(bodies(&got), numbers(0, 8));
    assert_eq!(srv.conns.load(Ordering::SeqCst), 3);
    assert_eq!(t.pipeline(), 8, "that is not a reason to stop pipelining");
}

#[test]
fn a_server_that_drops_pipelined_requests_gets_one_at_a_time() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Answers a request, but closes the connection when another one
    // arrived with it (without saying so).
    let srv = Scripted::start(|_, _, behind| if behind > 0 { Act::Close } else { Act::Answer });
    let t = client(Duration::from_secs(5));
    let got = rt.block_on(t.exchange(&srv.uri, &requests(8)));
    assert!(got.iter().all(|a| a.as_ref().is_ok_and(|a| a.status == 201)), "{got:?}");
    assert_eq!(t.pipeline(), 1);
    let got = rt.block_on(t.exchange(&srv.uri, &requests(3)));
    assert!(got.iter().all(|a| a.is_ok()), "{got:?}");
}

#[test]
fn a_pooled_connection_closed_by_the_server_is_replaced() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let srv = Scripted::start(|_, _, _| Act::Answer);
    let t = client(Duration::from_secs(5));
    assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(2)))), numbers(0, 2));
    srv.close_all();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(3)))), numbers(2, 3));
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_with_bytes_beyond_its_answers_is_not_reused() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let srv = Scripted::start(|_, _, _| Act::Twice);
    let t = client(Duration::from_secs(5));
    assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(1)))), numbers(0, 1));
    std::thread::sleep(Duration::from_millis(50));
    // Not "1", the extra answer of the first request.
    assert_eq!(bodies(&rt.block_on(t.exchange(&srv.uri, &requests(1)))), numbers(2, 1));
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
}

#[test]
fn no_answer_is_an_error_for_every_request() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = client(Duration::from_millis(300));
    let hang = Scripted::start(|_, _, _| Act::Hang);
    let got = rt.block_on(t.exchange(&hang.uri, &requests(3)));
    assert!(got.iter().all(|a| matches!(a, Err(SendError::TimedOut(_)))), "{got:?}");
    let close = Scripted::start(|_, _, _| Act::Close);
    let got = rt.block_on(t.exchange(&close.uri, &requests(3)));
    assert!(got.iter().all(|a| matches!(a, Err(SendError::Failed(_)))), "{got:?}");
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let got = rt.block_on(t.exchange(&format!("http://127.0.0.1:{port}/").parse().unwrap(), &requests(2)));
    assert!(got.iter().all(|a| matches!(a, Err(SendError::Connect(_)))), "{got:?}");
}

#[test]
fn cainfo_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let cfg = Config { cainfo: Some(missing.clone()), ..Config::default() };
    let e = Transport::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let cfg = Config { cainfo: Some(bad), ..Config::default() };
    let e = Transport::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("bad.pem"), "{e}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let cfg = Config { cainfo: Some(empty), ..Config::default() };
    let e = Transport::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("empty.pem") && e.contains("no certificate"), "{e}");
    assert!(Transport::new(&Config::default()).is_ok());
}
