//! Requests to the backend, built in one place for delivery, `telemctl
//! preview` and the `debug` setting: the target URL, the headers and body of a post
//! (`request_parts`), its bytes on the wire (`encode_request`), and the
//! description `telemctl preview` and the `debug` setting show (`describe`).

use std::borrow::Cow;
use std::io::Write;

use bytes::Bytes;
use telemetry::posting::{self, V3_PATH};
use telemetry::record::HeaderValue;
use telemetry::MachineId;
use url::Url;

use crate::config::{Config, Protocol};

/// The URL a post goes to.
pub fn target(server: &Url, protocol: Protocol) -> Url {
    match protocol {
        Protocol::V2 => server.clone(),
        Protocol::V3 if server.path().ends_with(V3_PATH) => server.clone(),
        Protocol::V3 => {
            let mut u = server.clone();
            u.set_path(V3_PATH);
            u
        }
    }
}

/// What every post of one configuration shares, worked out once.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub url: Option<Url>,
    /// `url` as the transport connects to it.
    pub(crate) uri: Option<http::Uri>,
    /// The request target (path and query) and the `Host` header.
    pub(crate) path: String,
    pub(crate) host: String,
    pub protocol: Protocol,
    pub(crate) tid: (String, String),
}

impl Prepared {
    pub fn new(cfg: &Config) -> Prepared {
        let url = cfg.server.as_ref().map(|s| target(s, cfg.server_protocol));
        let (path, host) = match &url {
            Some(u) => {
                let mut path = u.path().to_string();
                if let Some(q) = u.query() {
                    path.push('?');
                    path.push_str(q);
                }
                let host = match u.port() {
                    Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                    None => u.host_str().unwrap_or_default().to_string(),
                };
                (path, host)
            }
            None => (String::new(), String::new()),
        };
        Prepared {
            uri: url.as_ref().and_then(|u| u.as_str().parse().ok()),
            url,
            path,
            host,
            protocol: cfg.server_protocol,
            tid: (cfg.tidheader.name.clone(), cfg.tidheader.value.clone()),
        }
    }
}

/// The `User-Agent` every post carries.
pub const USER_AGENT: &str = concat!("telem-collector/", env!("CARGO_PKG_VERSION"));

/// Exactly the HTTP request a record is posted as: what delivery sends and
/// what `telemctl preview` and the `debug` setting show. Headers are in
/// sending order, spelled as they go on the wire, `Host` and
/// `Content-Length` included.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestDesc {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RequestDesc {
    /// As text: request line, headers, blank line, body (lossy UTF-8).
    pub fn render(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.url);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push('\n');
        s.push_str(&String::from_utf8_lossy(&self.body));
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// The headers (in sending order, as spelled on the wire) and the body of
/// the post of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts<'a> {
    pub headers: Vec<(&'a str, Cow<'a, str>)>,
    pub body: Cow<'a, [u8]>,
}

/// The request `record` is posted with, stamped with `mid` (no I/O): what
/// [`encode_request`] sends and [`describe`] shows. Every value is a
/// parsed record field (no control characters, see
/// `telemetry::HeaderText`) or a checked setting, so it can be written on
/// a header line as it is.
pub fn request_parts<'a>(
    prep: &'a Prepared,
    mid: &'a MachineId,
    record: &'a telemetry::Record,
) -> Result<Parts<'a>, String> {
    let mut h: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(22);
    h.push((prep.tid.0.as_str(), Cow::Borrowed(prep.tid.1.as_str())));
    let body = match prep.protocol {
        Protocol::V2 => {
            for (name, v) in posting::V2_HEADER_NAMES.iter().zip(record.header_values(mid)) {
                let value = match v {
                    HeaderValue::Str(s) => Cow::Borrowed(s),
                    HeaderValue::Num(n) => Cow::Owned(n.to_string()),
                    HeaderValue::Id(id) => Cow::Owned(id.to_string()),
                };
                h.push((name, value));
            }
            h.push(("Content-Type", Cow::Borrowed("application/text")));
            Cow::Borrowed(record.payload.as_bytes())
        }
        Protocol::V3 => {
            let body = posting::v3_body(record, mid).map_err(|e| e.to_string())?;
            h.push(("Content-Type", Cow::Borrowed("application/json")));
            Cow::Owned(body)
        }
    };
    h.push(("User-Agent", Cow::Borrowed(USER_AGENT)));
    h.push(("Accept", Cow::Borrowed("*/*")));
    h.push(("Host", Cow::Borrowed(prep.host.as_str())));
    h.push(("Content-Length", Cow::Owned(body.len().to_string())));
    Ok(Parts { headers: h, body })
}

/// The post as bytes on the wire: request line, header lines, body.
pub fn encode_request(prep: &Prepared, parts: &Parts<'_>) -> Bytes {
    let head: usize = parts.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(prep.path.len() + 20 + head + parts.body.len());
    // Writing into a Vec cannot fail.
    let _ = write!(out, "POST {} HTTP/1.1\r\n", prep.path);
    for (k, v) in &parts.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&parts.body);
    Bytes::from(out)
}

/// The request for `record` stamped with `mid` (no I/O).
pub fn describe(prep: &Prepared, mid: &MachineId, record: &telemetry::Record) -> Result<RequestDesc, String> {
    let url = prep.url.as_ref().ok_or_else(|| "no server configured".to_string())?;
    let parts = request_parts(prep, mid, record)?;
    Ok(RequestDesc {
        method: "POST",
        url: url.to_string(),
        headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: parts.body.into_owned(),
    })
}
