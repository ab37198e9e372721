//! Stage 0: the typed configuration, built once from the INI `[settings]`
//! section (`telemetry::config::Settings`: the original's file and lookup
//! order) and again on SIGHUP.
//!
//! Every key of the original keeps its default and meaning; the new keys are
//! listed on [`Config`]. A value that does not parse is an error naming the
//! file, the key and the value, so the daemon refuses to start on it (and a
//! reload keeps the old configuration).

use std::path::{Path, PathBuf};
use std::time::Duration;

use telemetry::config::{ConfigError, Settings};
use telemetry::posting::{TidHeader, DEFAULT_TID_HEADER};
use thiserror::Error;

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum BadConfig {
    #[error(transparent)]
    File(#[from] ConfigError),
    #[error("configuration {file}: key `{key}` has the value {value:?}, which is not valid: {reason}")]
    Value { file: String, key: String, value: String, reason: String },
}

/// How the server is posted to (`server_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Record fields as HTTP headers, raw payload body.
    V2,
    /// A flat JSON body to `/v3/collector`.
    V3,
}

/// How OTLP export requests are encoded (`otlp_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    /// Binary protobuf, `application/x-protobuf` (the default).
    Protobuf,
    /// The OTLP JSON form, `application/json`.
    Json,
}

/// The OTLP destination (`otlp_*` keys); see docs/WIRE.md and docs/FLEET.md.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// `otlp_endpoint` with `/v1/logs` appended to its path (the OTLP/HTTP
    /// rule for a base URL).
    pub url: url::Url,
    /// `otlp_headers` (`k=v,k=v`): extra headers on every export request.
    pub headers: Vec<(String, String)>,
    /// `otlp_compression`: `gzip` (default) or `none`.
    pub gzip: bool,
    /// `otlp_encoding`: `protobuf` (default) or `json`.
    pub encoding: OtlpEncoding,
    /// `otlp_batch_records` (512): most log records in one export request.
    pub batch_records: usize,
    /// `otlp_batch_bytes` (1 MiB): most payload bytes in one export request
    /// (a single larger record still goes, alone).
    pub batch_bytes: usize,
}

/// How much identifies the machine (`privacy_level`); see docs/PRIVACY.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivacyLevel {
    /// No persistent id: a random session id per collector start, never
    /// written to disk; host facts reduced to arch, OS and kernel.
    Anonymous,
    /// A random machine id rotated every 3 days (the default).
    Standard,
    /// The id in `etc_dir/opt-in-static-machine-id` (required).
    Static,
}

impl PrivacyLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PrivacyLevel::Anonymous => "anonymous",
            PrivacyLevel::Standard => "standard",
            PrivacyLevel::Static => "static",
        }
    }
}

/// What happens to records over a rate window (`rate_limit_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Keep them in the spool and send them when the window allows.
    Spool,
    /// Drop them (journaled as `rate-limited: dropped`).
    Drop,
}

/// One limit of a rate window: at most `limit` units per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `None` = no limit (`-1`).
    pub limit: Option<u64>,
    /// Whole minutes, 1..=59.
    pub minutes: u32,
}

/// The collector's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`None` = built-in defaults).
    pub file: Option<PathBuf>,
    /// `server`: the backend URL; empty = none (records stay local, unless
    /// `otlp_endpoint` is set).
    pub server: Option<url::Url>,
    /// `otlp_endpoint` and the other `otlp_*` keys: the OpenTelemetry
    /// destination, beside `server` or alone; `None` when not set.
    pub otlp: Option<Otlp>,
    pub socket_path: PathBuf,
    pub spool_dir: PathBuf,
    /// `cainfo`: a PEM bundle of the CAs to trust instead of the system's.
    pub cainfo: Option<PathBuf>,
    pub tidheader: TidHeader,
    pub rate_limit_enabled: bool,
    pub record_window: Window,
    pub byte_window: Window,
    pub rate_limit_strategy: Strategy,
    /// `record_expiry` (minutes): spooled records older than this are dropped.
    pub record_expiry: Duration,
    /// `spool_max_size` (KiB, 5120; -1 = none), kept here in bytes: what
    /// may wait in the spool while the server cannot take records (down,
    /// refusing, paused, rate windows); beyond it such records are dropped,
    /// counted and journaled, as in the original. While the server takes
    /// records a full spool is a backlog: ingest waits for room instead.
    pub spool_max_bytes: Option<u64>,
    /// `spool_sync_severity` (1-4, 3): records of this severity or higher
    /// (crashes, fatal signals) are fdatasync'd in the spool before their
    /// sender gets `Accepted`; the others are written (so the collector
    /// being killed loses none) and fdatasync'd within
    /// [`crate::spool::LAZY_SYNC`], like the journal and like journald,
    /// which syncs only its `crit` and worse at once. 1: every record
    /// before its ack.
    pub spool_sync_severity: u8,
    /// `spool_process_time` (s): how often the spool is checked for expiry
    /// (delivery itself drains as soon as the server answers again).
    pub spool_process_time: Duration,
    /// `daemon_recycling_enabled`: accepted for compatibility; one process
    /// replaces the original's two, so there is nothing to recycle.
    pub daemon_recycling_enabled: bool,
    /// `record_retention_enabled` (true here; the original's default was
    /// false): the journal keeps each record's payload, so the user can see
    /// what was collected (`telemctl journal -i`) and previewed
    /// (`telemctl preview`). Journal files are 0600; pruned by
    /// `local_retention_days` / `local_retention_records`.
    pub record_retention_enabled: bool,
    pub record_server_delivery_enabled: bool,
    // ---- new keys ----
    /// `journal_dir` (`/var/log/telemetry`).
    pub journal_dir: PathBuf,
    /// `state_dir` (`/var/lib/telemetry`): machine id, control socket, pid file.
    pub state_dir: PathBuf,
    /// `etc_dir` (`/etc/telemetrics`): opt-in files.
    pub etc_dir: PathBuf,
    /// `server_protocol` (`v2` | `v3`).
    pub server_protocol: Protocol,
    /// `record_max_bytes` (65536): largest payload accepted.
    pub record_max_bytes: usize,
    /// `allow_insecure_http` (false): allow `http://` to hosts other than loopback.
    pub allow_insecure_http: bool,
    /// `connect_timeout` (s, 10).
    pub connect_timeout: Duration,
    /// `delivery_timeout` (s, 30): a whole exchange on one connection
    /// (connect, the batch of posts, their answers).
    pub delivery_timeout: Duration,
    /// `delivery_concurrency` (16): connections posting at once.
    pub delivery_concurrency: usize,
    /// `delivery_pipeline` (8): posts written back to back on one
    /// connection before their answers (HTTP/1.1 pipelining; 1 = off), when
    /// more records wait than there are connections.
    pub delivery_pipeline: usize,
    /// `retry_max_backoff` (s, 30): longest pause of delivery to a server
    /// that cannot take records (down, timing out, 429/503).
    pub retry_max_backoff: Duration,
    /// `delivery_retry_max` (s, 3600): longest wait before one record that
    /// failed (5xx) is posted again; other records keep flowing meanwhile.
    pub delivery_retry_max: Duration,
    /// `delivery_max_attempts` (10): 5xx answers to one record, while the
    /// server takes other records, after which it leaves the spool as
    /// `rejected-by-server`.
    pub delivery_max_attempts: u32,
    /// `idle_timeout` (s, 30): a probe connection silent this long is closed.
    pub idle_timeout: Duration,
    /// `max_connections` (1024): probe connections served at once (lowered
    /// to fit the open-files limit); more senders wait in the listen
    /// backlog until one ends, none is refused.
    pub max_connections: usize,
    // ---- privacy keys (docs/PRIVACY.md) ----
    /// `privacy_level` (`anonymous` | `standard` | `static`; standard).
    pub privacy_level: PrivacyLevel,
    /// `airgap` (false): never send anything, whatever else is set.
    pub airgap: bool,
    /// `debug` (false): log each request instead of sending it; the
    /// records stay local (`local-only: debug`).
    pub debug: bool,
    /// `local_retention_days` (14): journal entries (and retained payloads)
    /// older than this are pruned.
    pub local_retention_days: u32,
    /// `local_retention_records` (10000): at most this many records are
    /// kept in the journal (the oldest are pruned).
    pub local_retention_records: u64,
    /// `blackbox_retention_days` (14): finished black-box recordings
    /// stopped more than this many days ago are deleted (at start and daily).
    pub blackbox_retention_days: u32,
    /// `DO_NOT_TRACK` set (not empty, `0` or `false`) in the environment of
    /// the process that loaded the configuration ([`Config::load`]); not
    /// an INI key. Forces local-only.
    pub do_not_track: bool,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults parse; an empty settings map cannot fail.
        Config::from_settings(&Settings::default()).unwrap_or_else(|_| unreachable!("built-in defaults are valid"))
    }
}

struct Reader<'a> {
    s: &'a Settings,
    file: String,
}

impl Reader<'_> {
    fn raw(&self, key: &str) -> Option<&str> {
        self.s.get(key).map(str::trim)
    }
    fn bad(&self, key: &str, value: &str, reason: impl Into<String>) -> BadConfig {
        BadConfig::Value { file: self.file.clone(), key: key.into(), value: value.into(), reason: reason.into() }
    }
    fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or(default).to_string()
    }
    fn path(&self, key: &str, default: &str) -> Result<PathBuf, BadConfig> {
        let v = self.string(key, default);
        if v.is_empty() {
            return Err(self.bad(key, &v, "a path is required"));
        }
        Ok(PathBuf::from(v))
    }
    fn bool(&self, key: &str, default: bool) -> Result<bool, BadConfig> {
        match self.raw(key) {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(self.bad(key, v, "expected true, false, 1 or 0")),
        }
    }
    fn int(&self, key: &str, default: i64, min: i64, max: i64) -> Result<i64, BadConfig> {
        let Some(v) = self.raw(key) else { return Ok(default) };
        let n: i64 = v.parse().map_err(|_| self.bad(key, v, "expected a whole number"))?;
        if n < min || n > max {
            return Err(self.bad(key, v, format!("expected a number from {min} to {max}")));
        }
        Ok(n)
    }
    /// A limit where -1 means none.
    fn limit(&self, key: &str, default: i64) -> Result<Option<u64>, BadConfig> {
        let n = self.int(key, default, -1, i64::MAX)?;
        Ok(if n < 0 { None } else { Some(n as u64) })
    }
    fn secs(&self, key: &str, default: i64, min: i64) -> Result<Duration, BadConfig> {
        Ok(Duration::from_secs(self.int(key, default, min, 86_400 * 365)? as u64))
    }
    /// An http(s) URL; plain http only to loopback unless `insecure`.
    fn url(&self, key: &str, insecure: bool) -> Result<Option<url::Url>, BadConfig> {
        let Some(v) = self.raw(key).filter(|v| !v.is_empty()) else { return Ok(None) };
        let url = url::Url::parse(v).map_err(|e| self.bad(key, v, e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if insecure || is_loopback_host(&url) => {}
            "http" => {
                return Err(self.bad(
                    key,
                    v,
                    "plain http:// is allowed only to loopback; use https:// or set allow_insecure_http=true",
                ))
            }
            other => return Err(self.bad(key, v, format!("scheme {other:?} is not http or https"))),
        }
        Ok(Some(url))
    }
    /// The `otlp_*` keys; `None` without `otlp_endpoint`.
    fn otlp(&self, insecure: bool) -> Result<Option<Otlp>, BadConfig> {
        let Some(mut url) = self.url("otlp_endpoint", insecure)? else { return Ok(None) };
        // The OTLP/HTTP rule for a base URL: the signal's path is appended.
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/v1/logs"));
        let headers = match self.raw("otlp_headers").filter(|v| !v.is_empty()) {
            None => Vec::new(),
            Some(v) => parse_otlp_headers(v).map_err(|why| self.bad("otlp_headers", v, why))?,
        };
        let gzip = match self.raw("otlp_compression").unwrap_or("gzip") {
            "gzip" => true,
            "none" => false,
            v => return Err(self.bad("otlp_compression", v, "expected gzip or none")),
        };
        let encoding = match self.raw("otlp_encoding").unwrap_or("protobuf") {
            "protobuf" => OtlpEncoding::Protobuf,
            "json" => OtlpEncoding::Json,
            v => return Err(self.bad("otlp_encoding", v, "expected protobuf or json")),
        };
        Ok(Some(Otlp {
            url,
            headers,
            gzip,
            encoding,
            batch_records: self.int("otlp_batch_records", 512, 1, 1 << 20)? as usize,
            batch_bytes: self.int("otlp_batch_bytes", 1 << 20, 1024, 64 << 20)? as usize,
        }))
    }
}

/// `otlp_headers`: `name=value` pairs separated by commas (the
/// `OTEL_EXPORTER_OTLP_HEADERS` form; values may be percent-encoded). Names
/// must be HTTP tokens and values free of control characters, so they can
/// go on a header line as they are.
pub fn parse_otlp_headers(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, val)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not name=value"));
        };
        let k = k.trim();
        let val: String = url::form_urlencoded::parse(format!("v={}", val.trim().replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if k.is_empty() || !k.chars().all(token) {
            return Err(format!("{k:?} is not a header name"));
        }
        if val.chars().any(|c| c.is_control()) {
            return Err(format!("the value of {k} has control characters"));
        }
        let lower = k.to_ascii_lowercase();
        if ["host", "content-length", "content-type", "content-encoding", "connection", "transfer-encoding"]
            .contains(&lower.as_str())
        {
            return Err(format!("{k} is set by the collector"));
        }
        out.push((k.to_string(), val));
    }
    Ok(out)
}

/// Whether a `DO_NOT_TRACK` value asks for no tracking: any value but
/// empty, `0` and `false`.
pub fn do_not_track(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !matches!(v.to_str().map(str::trim), Some("" | "0" | "false" | "FALSE")))
}

/// Whether `host` names this machine's loopback interface.
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Config {
    /// Whether a record of `severity` is fdatasync'd in the spool before
    /// its ack (`spool_sync_severity`); else within the lazy sync.
    pub fn syncs_before_ack(&self, severity: telemetry::Severity) -> bool {
        severity as u8 >= self.spool_sync_severity
    }

    /// Loads by the lookup order (`-f FILE` first) and types every key.
    pub fn load(explicit: Option<&Path>) -> Result<Config, BadConfig> {
        let settings = Settings::load(explicit)?;
        let mut cfg = Config::from_settings(&settings)?;
        cfg.do_not_track = do_not_track(std::env::var_os("DO_NOT_TRACK").as_deref());
        Ok(cfg)
    }

    /// Types the keys of `settings`.
    pub fn from_settings(s: &Settings) -> Result<Config, BadConfig> {
        let file = s.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(built-in defaults)".into());
        let r = Reader { s, file };

        let allow_insecure_http = r.bool("allow_insecure_http", false)?;
        let server = r.url("server", allow_insecure_http)?;
        let otlp = r.otlp(allow_insecure_http)?;
        let cainfo = r.raw("cainfo").filter(|v| !v.is_empty()).map(PathBuf::from);
        let tid_raw = r.string("tidheader", DEFAULT_TID_HEADER);
        let tidheader = TidHeader::parse(&tid_raw).map_err(|e| r.bad("tidheader", &tid_raw, e.to_string()))?;
        let window = |lk: &str, ld: i64, wk: &str, wd: i64| -> Result<Window, BadConfig> {
            Ok(Window { limit: r.limit(lk, ld)?, minutes: r.int(wk, wd, 1, 59)? as u32 })
        };
        let record_window = window("record_burst_limit", 1000, "record_window_length", 15)?;
        let byte_window = window("byte_burst_limit", -1, "byte_window_length", 20)?;
        let rate_limit_strategy = match r.raw("rate_limit_strategy").unwrap_or("spool") {
            "spool" => Strategy::Spool,
            "drop" => Strategy::Drop,
            v => return Err(r.bad("rate_limit_strategy", v, "expected spool or drop")),
        };
        let server_protocol = match r.raw("server_protocol").unwrap_or("v2") {
            "v2" => Protocol::V2,
            "v3" => Protocol::V3,
            v => return Err(r.bad("server_protocol", v, "expected v2 or v3")),
        };
        let spool_kib = r.limit("spool_max_size", 5120)?;
        let privacy_level = match r.raw("privacy_level").unwrap_or("standard") {
            "anonymous" => PrivacyLevel::Anonymous,
            "standard" => PrivacyLevel::Standard,
            "static" => PrivacyLevel::Static,
            v => return Err(r.bad("privacy_level", v, "expected anonymous, standard or static")),
        };
        Ok(Config {
            file: s.path.clone(),
            server,
            otlp,
            socket_path: r.path("socket_path", telemetry::config::DEFAULT_SOCKET)?,
            spool_dir: r.path("spool_dir", "/var/spool/telemetry")?,
            cainfo,
            tidheader,
            rate_limit_enabled: r.bool("rate_limit_enabled", true)?,
            record_window,
            byte_window,
            rate_limit_strategy,
            record_expiry: Duration::from_secs(60 * r.int("record_expiry", 1200, 1, 525_600)? as u64),
            spool_max_bytes: spool_kib.map(|k| k.saturating_mul(1024)),
            spool_sync_severity: r.int("spool_sync_severity", 3, 1, 4)? as u8,
            spool_process_time: r.secs("spool_process_time", 120, 1)?,
            daemon_recycling_enabled: r.bool("daemon_recycling_enabled", true)?,
            record_retention_enabled: r.bool("record_retention_enabled", true)?,
            record_server_delivery_enabled: r.bool("record_server_delivery_enabled", true)?,
            journal_dir: r.path("journal_dir", "/var/log/telemetry")?,
            state_dir: r.path("state_dir", telemetry::config::DEFAULT_STATE_DIR)?,
            etc_dir: r.path("etc_dir", "/etc/telemetrics")?,
            server_protocol,
            record_max_bytes: r.int("record_max_bytes", telemetry::DEFAULT_MAX_PAYLOAD as i64, 1, 64 << 20)? as usize,
            allow_insecure_http,
            connect_timeout: r.secs("connect_timeout", 10, 1)?,
            delivery_timeout: r.secs("delivery_timeout", 30, 1)?,
            delivery_concurrency: r.int("delivery_concurrency", 16, 1, 1024)? as usize,
            delivery_pipeline: r.int("delivery_pipeline", 8, 1, 256)? as usize,
            retry_max_backoff: r.secs("retry_max_backoff", 30, 1)?,
            delivery_retry_max: r.secs("delivery_retry_max", 3600, 1)?,
            delivery_max_attempts: r.int("delivery_max_attempts", 10, 1, 1_000_000)? as u32,
            idle_timeout: r.secs("idle_timeout", 30, 1)?,
            max_connections: r.int("max_connections", 1024, 1, 1 << 20)? as usize,
            privacy_level,
            airgap: r.bool("airgap", false)?,
            debug: r.bool("debug", false)?,
            local_retention_days: r.int("local_retention_days", 14, 1, 36_500)? as u32,
            local_retention_records: r.int("local_retention_records", 10_000, 1, 1 << 40)? as u64,
            blackbox_retention_days: r.int("blackbox_retention_days", 14, 1, 36_500)? as u32,
            do_not_track: false,
        })
    }

    /// Where `telemctl` reaches the running daemon.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// The pid file the daemon writes when not run by systemd.
    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join("telem-collector.pid")
    }

    /// The machine id file.
    pub fn machine_id_file(&self) -> PathBuf {
        self.state_dir.join("machine_id")
    }

    /// The file whose presence means the user opted in.
    pub fn opt_in_file(&self) -> PathBuf {
        self.etc_dir.join("opt-in")
    }

    /// The file whose presence turns scrubbing off (the original's name).
    pub fn no_privacy_filters_file(&self) -> PathBuf {
        self.etc_dir.join("opt-in-no-privacy-filters")
    }

    /// The blackbox socket, where eventprobe streams process events.
    pub fn blackbox_socket(&self) -> PathBuf {
        self.state_dir.join(telemetry::blackbox::SOCKET_NAME)
    }

    /// The static machine id override.
    pub fn static_machine_id_file(&self) -> PathBuf {
        self.etc_dir.join("opt-in-static-machine-id")
    }

    /// The largest legacy record accepted, all framing included.
    pub fn max_legacy_record(&self) -> usize {
        self.record_max_bytes.saturating_add(telemetry::wire::native::FRAME_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, BadConfig> {
        Config::from_settings(&Settings::parse(text, Some(Path::new("/etc/t.conf"))).unwrap())
    }

    #[test]
    fn defaults_match_the_original() {
        let c = Config::default();
        assert_eq!(c.socket_path, PathBuf::from("/run/telem-0"));
        assert_eq!(c.spool_dir, PathBuf::from("/var/spool/telemetry"));
        assert_eq!(c.record_window, Window { limit: Some(1000), minutes: 15 });
        assert_eq!(c.byte_window, Window { limit: None, minutes: 20 });
        assert_eq!(c.rate_limit_strategy, Strategy::Spool);
        assert_eq!(c.record_expiry, Duration::from_secs(1200 * 60));
        assert_eq!(c.spool_sync_severity, 3);
        assert_eq!(parse("[settings]\nspool_sync_severity=1\n").unwrap().spool_sync_severity, 1);
        assert_eq!(c.spool_max_bytes, Some(5120 * 1024));
        assert_eq!(c.spool_process_time, Duration::from_secs(120));
        assert_eq!(c.tidheader.name, "X-Telemetry-TID");
        assert!(c.rate_limit_enabled && c.record_server_delivery_enabled);
        // Not the original's default: payloads are kept locally, so the user
        // can see what was collected.
        assert!(c.record_retention_enabled);
        assert!(!parse("[settings]\nrecord_retention_enabled=false\n").unwrap().record_retention_enabled);
        assert_eq!(c.server_protocol, Protocol::V2);
        assert_eq!(c.record_max_bytes, 65536);
        assert_eq!(c.journal_dir, PathBuf::from("/var/log/telemetry"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/telemetry"));
        assert_eq!(c.etc_dir, PathBuf::from("/etc/telemetrics"));
        assert!(c.server.is_none());
    }

    #[test]
    fn bad_values_name_file_key_and_value() {
        for (text, key) in [
            ("record_burst_limit=lots", "record_burst_limit"),
            ("record_window_length=60", "record_window_length"),
            ("rate_limit_strategy=keep", "rate_limit_strategy"),
            ("rate_limit_enabled=yes", "rate_limit_enabled"),
            ("server_protocol=v4", "server_protocol"),
            ("server=http://example.com/", "server"),
            ("server=ftp://127.0.0.1/", "server"),
            ("tidheader=nocolon", "tidheader"),
            ("spool_max_size=-2", "spool_max_size"),
            ("spool_sync_severity=5", "spool_sync_severity"),
        ] {
            let e = parse(&format!("[settings]\n{text}\n")).unwrap_err().to_string();
            let value = text.split_once('=').unwrap().1;
            assert!(e.contains("/etc/t.conf") && e.contains(key) && e.contains(value), "{e}");
        }
    }

    #[test]
    fn http_rules() {
        assert!(parse("[settings]\nserver=http://127.0.0.1:8080/\n").is_ok());
        assert!(parse("[settings]\nserver=http://localhost/\n").is_ok());
        assert!(parse("[settings]\nserver=http://[::1]:9/\n").is_ok());
        assert!(parse("[settings]\nserver=https://example.com/\n").is_ok());
        assert!(parse("[settings]\nserver=http://example.com/\nallow_insecure_http=true\n").is_ok());
    }

    #[test]
    fn new_keys_and_limits() {
        let c = parse(
            "[settings]\nspool_max_size=-1\nbyte_burst_limit=100\nbyte_window_length=1\nserver_protocol=v3\nrecord_max_bytes=100\nrate_limit_strategy=drop\n",
        )
        .unwrap();
        assert_eq!(c.spool_max_bytes, None);
        assert_eq!(c.byte_window, Window { limit: Some(100), minutes: 1 });
        assert_eq!(c.server_protocol, Protocol::V3);
        assert_eq!(c.record_max_bytes, 100);
        assert_eq!(c.rate_limit_strategy, Strategy::Drop);
    }

    #[test]
    fn otlp_keys() {
        assert!(Config::default().otlp.is_none());
        let c = parse("[settings]\notlp_endpoint=http://127.0.0.1:4318\n").unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.url.as_str(), "http://127.0.0.1:4318/v1/logs");
        assert!(o.gzip);
        assert_eq!(o.encoding, OtlpEncoding::Protobuf);
        assert_eq!((o.batch_records, o.batch_bytes), (512, 1 << 20));
        assert!(o.headers.is_empty());
        assert!(c.server.is_none());
        let o = parse(
            "[settings]\notlp_endpoint=https://gw.example/otel/\notlp_headers=Authorization=Bearer%20abc, x-tenant = t1\notlp_compression=none\notlp_encoding=json\notlp_batch_records=10\notlp_batch_bytes=4096\n",
        )
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(o.url.as_str(), "https://gw.example/otel/v1/logs");
        assert_eq!(o.headers, vec![("Authorization".into(), "Bearer abc".into()), ("x-tenant".into(), "t1".into())]);
        assert!(!o.gzip);
        assert_eq!(o.encoding, OtlpEncoding::Json);
        assert_eq!((o.batch_records, o.batch_bytes), (10, 4096));
        for (text, key) in [
            ("otlp_endpoint=http://example.com:4318", "otlp_endpoint"),
            ("otlp_endpoint=grpc://127.0.0.1:4317", "otlp_endpoint"),
            ("otlp_endpoint=http://127.0.0.1:4318\notlp_compression=zstd", "otlp_compression"),
            ("otlp_endpoint=http://127.0.0.1:4318\notlp_encoding=xml", "otlp_encoding"),
            ("otlp_endpoint=http://127.0.0.1:4318\notlp_headers=novalue", "otlp_headers"),
            ("otlp_endpoint=http://127.0.0.1:4318\notlp_headers=Host=x", "otlp_headers"),
            ("otlp_endpoint=http://127.0.0.1:4318\notlp_batch_records=0", "otlp_batch_records"),
        ] {
            let e = parse(&format!("[settings]\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(parse("[settings]\notlp_endpoint=http://example.com:4318\nallow_insecure_http=true\n").is_ok());
    }

    #[test]
    fn privacy_keys() {
        let c = Config::default();
        assert_eq!(c.privacy_level, PrivacyLevel::Standard);
        assert!(!c.airgap && !c.debug && !c.do_not_track);
        assert_eq!((c.local_retention_days, c.local_retention_records), (14, 10_000));
        let c = parse("[settings]\nprivacy_level=anonymous\nairgap=true\ndebug=1\nlocal_retention_days=2\nlocal_retention_records=5\n").unwrap();
        assert_eq!(c.privacy_level, PrivacyLevel::Anonymous);
        assert!(c.airgap && c.debug);
        assert_eq!((c.local_retention_days, c.local_retention_records), (2, 5));
        assert!(parse("[settings]\nprivacy_level=secret\n").unwrap_err().to_string().contains("privacy_level"));
        use std::ffi::OsStr;
        assert!(do_not_track(Some(OsStr::new("1"))) && do_not_track(Some(OsStr::new("yes"))));
        assert!(!do_not_track(None) && !do_not_track(Some(OsStr::new("0"))) && !do_not_track(Some(OsStr::new(""))));
    }
}
