//! HTTP/1.1 on a connection: writing requests, reading and parsing answers
//! (`httparse`), bodies by `Content-Length`, chunks or the end of the
//! connection.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::*;

pub(super) async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), SendError> {
    let w = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match tokio::time::timeout_at(deadline, w).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Failed(format!("sending: {e}"))),
        Err(_) => Err(SendError::TimedOut(timeout)),
    }
}

/// Why no answer was read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadError {
    /// The connection ended before any byte of this answer.
    Closed,
    Send(SendError),
}

impl From<SendError> for ReadError {
    fn from(e: SendError) -> Self {
        ReadError::Send(e)
    }
}

/// Reads more of the connection into `rbuf`; the byte count (0: closed).
pub(super) async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    deadline: Instant,
    timeout: Duration,
) -> Result<usize, SendError> {
    rbuf.reserve(16 * 1024);
    match tokio::time::timeout_at(deadline, io.read_buf(rbuf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(SendError::Failed(format!("reading the answer: {e}"))),
        Err(_) => Err(SendError::TimedOut(timeout)),
    }
}

pub(super) fn cut_short() -> SendError {
    SendError::Failed("the server closed the connection in the middle of an answer".into())
}

/// What an answer's head says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) http11: bool,
    pub(super) content_length: Option<u64>,
    pub(super) chunked: bool,
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) retry_after: Option<Duration>,
}

/// Parses the answer head at the start of `buf`; `Ok(None)`: incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => return Err(format!("malformed answer: {e}")),
    };
    let mut head = Head { len, status: r.code.unwrap_or(0), http11: r.version == Some(1), ..Head::default() };
    for h in r.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| format!("malformed answer: Content-Length {value:?}"))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err("malformed answer: two different Content-Length headers".into());
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.rsplit(',').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in value.split(',').map(str::trim) {
                head.close |= t.eq_ignore_ascii_case("close");
                head.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            head.retry_after = retry_after(value, std::time::SystemTime::now());
        }
    }
    Ok(Some(head))
}

/// A `Retry-After` value as a wait from `now`: delay-seconds, or an
/// HTTP-date (a date in the past is no wait); `None` when it is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads an answer's body from a connection.
pub(super) struct Body<'a, R> {
    pub(super) io: &'a mut R,
    pub(super) rbuf: &'a mut BytesMut,
    /// The first [`MAX_ANSWER_BODY`] bytes.
    pub(super) kept: BytesMut,
    pub(super) total: usize,
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
}

impl<R: AsyncRead + Unpin> Body<'_, R> {
    /// Reads more; false: the connection ended.
    async fn more(&mut self) -> Result<bool, SendError> {
        Ok(fill(self.io, self.rbuf, self.deadline, self.timeout).await? > 0)
    }

    /// Takes `want` bytes of body (to the end of the connection when
    /// `to_eof`); false: more than [`MAX_DISCARD`] (the rest is not read).
    async fn take(&mut self, want: u64, to_eof: bool) -> Result<bool, ReadError> {
        let mut left = want;
        while left > 0 {
            if self.rbuf.is_empty() && !self.more().await? {
                if to_eof {
                    break;
                }
                return Err(cut_short().into());
            }
            let n = (self.rbuf.len() as u64).min(left) as usize;
            let keep = n.min(MAX_ANSWER_BODY.saturating_sub(self.kept.len()));
            self.kept.extend_from_slice(&self.rbuf[..keep]);
            self.rbuf.advance(n);
            left -= n as u64;
            self.total += n;
            if self.total > MAX_DISCARD {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes a chunked body and its trailers; false as [`take`](Self::take).
    async fn chunked(&mut self) -> Result<bool, ReadError> {
        let bad = |what: &str| ReadError::Send(SendError::Failed(format!("malformed answer: {what}")));
        loop {
            let size = loop {
                match httparse::parse_chunk_size(self.rbuf) {
                    Ok(httparse::Status::Complete((i, size))) => {
                        self.rbuf.advance(i);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.rbuf.len() > 1024 => {
                        return Err(bad("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => {
                        if !self.more().await? {
                            return Err(cut_short().into());
                        }
                    }
                    Err(_) => return Err(bad("bad chunk size")),
                }
            };
            if size == 0 {
                // Trailer lines, up to the empty line.
                loop {
                    match self.rbuf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.rbuf.advance(2);
                            return Ok(true);
                        }
                        Some(i) => self.rbuf.advance(i + 2),
                        None if self.rbuf.len() > MAX_HEAD => return Err(bad("trailers too long")),
                        None => {
                            if !self.more().await? {
                                return Err(cut_short().into());
                            }
                        }
                    }
                }
            }
            if !self.take(size, false).await? {
                return Ok(false);
            }
            while self.rbuf.len() < 2 {
                if !self.more().await? {
                    return Err(cut_short().into());
                }
            }
            if &self.rbuf[..2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            self.rbuf.advance(2);
        }
    }
}

/// Reads one answer; with it, whether the connection can carry more.
pub(super) async fn read_answer<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Answer, bool), ReadError> {
    let mut started = !rbuf.is_empty();
    let head = loop {
        match parse_head(rbuf).map_err(SendError::Failed)? {
            // 1xx (100 Continue, 103 Early Hints) precede the answer.
            Some(h) if (100..200).contains(&h.status) && h.status != 101 => rbuf.advance(h.len),
            Some(h) => break h,
            None if rbuf.len() > MAX_HEAD => {
                return Err(SendError::Failed(format!("answer head over {MAX_HEAD} bytes")).into())
            }
            None => {
                if fill(io, rbuf, deadline, timeout).await? == 0 {
                    return Err(if started { ReadError::Send(cut_short()) } else { ReadError::Closed });
                }
                started = true;
            }
        }
    };
    rbuf.advance(head.len);
    let mut body = Body { io, rbuf, kept: BytesMut::new(), total: 0, deadline, timeout };
    // After 101 Switching Protocols the connection is no longer HTTP.
    let mut reusable = if head.http11 { !head.close } else { head.keep_alive } && head.status != 101;
    if head.status == 204 || head.status == 304 {
        // No body, whatever the headers say.
    } else if head.chunked {
        reusable &= body.chunked().await?;
    } else if let Some(len) = head.content_length {
        reusable &= body.take(len, false).await?;
    } else {
        // Neither length nor chunks: the body ends with the connection.
        body.take(u64::MAX, true).await?;
        reusable = false;
    }
    let answer = Answer { status: head.status, retry_after: head.retry_after, body: body.kept.freeze() };
    Ok((answer, reusable))
}
