//! The HTTP/1.1 requests the test servers read (the sink of
//! [`crate::sink`], the TLS sink of `collector_tls.rs`): a request line,
//! headers, and a `Content-Length` body. Nothing else of HTTP is needed: the
//! collector sends exactly this.

use std::io::BufRead;

/// One request as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method (`POST`).
    pub method: String,
    /// The request target (`/`, `/v3/collector`).
    pub path: String,
    /// The headers in order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; none without it).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The value of header `name` in `headers` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Reads the next request from `rd`; `None` when the connection ends (or
/// fails) before a whole request arrived.
pub fn read_request(rd: &mut impl BufRead) -> Option<Request> {
    let mut request_line = String::new();
    if rd.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if rd.read_line(&mut l).unwrap_or(0) == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = header(&headers, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pipelined_requests_and_stops_at_a_cut() {
        let wire = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nClassification: a/b/c\r\n\r\nabc\
                     POST /v3/collector HTTP/1.1\r\ncontent-length: 2\r\n\r\nxy\
                     POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort";
        let mut rd = std::io::BufReader::new(&wire[..]);
        let a = read_request(&mut rd).unwrap();
        assert_eq!((a.method.as_str(), a.path.as_str(), a.body.as_slice()), ("POST", "/", &b"abc"[..]));
        assert_eq!(a.header("classification"), Some("a/b/c"));
        let b = read_request(&mut rd).unwrap();
        assert_eq!((b.path.as_str(), b.body.as_slice()), ("/v3/collector", &b"xy"[..]));
        assert!(read_request(&mut rd).is_none(), "a body cut short is no request");
        assert!(read_request(&mut rd).is_none());
    }
}
