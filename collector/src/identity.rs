//! Stage: stamping. What identifies the machine in a record, by
//! `privacy_level`:
//!
//! - `standard` (default): the machine id every posted record carries, as
//!   the original daemon makes it: 32 hex characters from 16 random bytes, kept in
//!   `state_dir/machine_id` and made anew when older than three days
//!   (checked at start and hourly), unless `etc_dir/opt-in-static-machine-id`
//!   exists (the original's switch): then the first 32 characters of its
//!   first line are used.
//! - `static`: the static file is required; the collector refuses to start
//!   without it.
//! - `anonymous`: no persistent id at all: a random session id made at each
//!   collector start, kept in memory only (never written); and the host
//!   facts are reduced ([`anonymize_host`]) to arch, OS (build,
//!   system_name) and kernel, the others replaced by [`PLACEHOLDER`] so the
//!   record stays valid for the old backend.

use std::path::Path;
use std::time::{Duration, SystemTime};

use telemetry::{HeaderText, HostInfo, MachineId};
use thiserror::Error;

use crate::config::{Config, PrivacyLevel};

/// What the anonymous level sends in host_type, board_name, cpu_model and
/// bios_version.
pub const PLACEHOLDER: &str = "anonymous";

/// How long a generated machine id lives.
pub const ROTATION: Duration = Duration::from_secs(3 * 24 * 3600);

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot write the machine id file {path}: {source} (check state_dir)")]
    Write { path: String, source: std::io::Error },
    #[error("the static machine id file {path} does not hold a usable id: {reason}")]
    Static { path: String, reason: String },
    #[error("privacy_level = static needs the static machine id file {path}, which cannot be read ({source}); create it with one line of up to 32 letters or digits, or choose privacy_level = standard")]
    StaticMissing { path: String, source: std::io::Error },
}

/// The id to stamp now for `cfg.privacy_level`; `session` is this
/// collector start's id (used by `anonymous` only).
pub fn for_level(cfg: &Config, session: &MachineId, now: SystemTime) -> Result<MachineId, IdentityError> {
    match cfg.privacy_level {
        PrivacyLevel::Anonymous => Ok(session.clone()),
        PrivacyLevel::Standard => current(&cfg.machine_id_file(), &cfg.static_machine_id_file(), now),
        PrivacyLevel::Static => {
            let path = cfg.static_machine_id_file();
            let text = std::fs::read_to_string(&path)
                .map_err(|source| IdentityError::StaticMissing { path: path.display().to_string(), source })?;
            parse_static(&path, &text)
        }
    }
}

/// The id `telemctl preview` shows, read without writing anything:
/// `None` when it cannot be known outside the collector (anonymous: the
/// session id lives in the collector's memory only; standard: no id yet or
/// it is due for rotation).
pub fn peek(cfg: &Config, now: SystemTime) -> Option<MachineId> {
    match cfg.privacy_level {
        PrivacyLevel::Anonymous => None,
        PrivacyLevel::Static => {
            let path = cfg.static_machine_id_file();
            parse_static(&path, &std::fs::read_to_string(&path).ok()?).ok()
        }
        PrivacyLevel::Standard => {
            let st = cfg.static_machine_id_file();
            if let Ok(text) = std::fs::read_to_string(&st) {
                return parse_static(&st, &text).ok();
            }
            let f = cfg.machine_id_file();
            let age = now.duration_since(std::fs::metadata(&f).ok()?.modified().ok()?).unwrap_or(Duration::ZERO);
            if age >= ROTATION {
                return None;
            }
            MachineId::parse(std::fs::read_to_string(&f).ok()?.trim()).ok()
        }
    }
}

/// The host facts a record carries at `level`: all of them, or (anonymous)
/// arch, build, system_name and kernel_version with the others replaced
/// by [`PLACEHOLDER`].
pub fn anonymize_host(host: &mut std::sync::Arc<HostInfo>, level: PrivacyLevel) {
    let p = HeaderText::sanitize(PLACEHOLDER);
    let done = |h: &HostInfo| [&h.host_type, &h.board_name, &h.cpu_model, &h.bios_version].iter().all(|v| **v == p);
    if level == PrivacyLevel::Anonymous && !done(host) {
        // A copy of the shared facts, for this record.
        let host = std::sync::Arc::make_mut(host);
        host.host_type = p.clone();
        host.board_name = p.clone();
        host.cpu_model = p.clone();
        host.bios_version = p;
    }
}

fn parse_static(path: &Path, text: &str) -> Result<MachineId, IdentityError> {
    let line = text.lines().next().unwrap_or("").trim();
    let first: String = line.chars().take(32).collect();
    MachineId::parse(&first)
        .map_err(|e| IdentityError::Static { path: path.display().to_string(), reason: e.to_string() })
}

/// The machine id to stamp now, rotating the stored one if it is older
/// than [`ROTATION`] at `now`.
pub fn current(id_file: &Path, static_file: &Path, now: SystemTime) -> Result<MachineId, IdentityError> {
    if let Ok(text) = std::fs::read_to_string(static_file) {
        return parse_static(static_file, &text);
    }
    let fresh = std::fs::metadata(id_file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok().or(Some(Duration::ZERO)))
        .is_some_and(|age| age < ROTATION);
    if fresh {
        if let Ok(text) = std::fs::read_to_string(id_file) {
            if let Ok(id) = MachineId::parse(text.trim()) {
                if id.as_str().len() == 32 {
                    return Ok(id);
                }
            }
        }
    }
    let id = MachineId::random();
    let werr = |source| IdentityError::Write { path: id_file.display().to_string(), source };
    if let Some(dir) = id_file.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = id_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(werr)?;
    std::fs::rename(&tmp, id_file).map_err(werr)?;
    tracing::info!("new machine id made (the previous one was missing or older than 3 days)");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_after_three_days_and_static_wins() {
        let dir = tempfile::tempdir().unwrap();
        let idf = dir.path().join("state/machine_id");
        let st = dir.path().join("opt-in-static-machine-id");
        let now = SystemTime::now();
        let a = current(&idf, &st, now).unwrap();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(current(&idf, &st, now + Duration::from_secs(3600)).unwrap(), a);
        let later = now + ROTATION + Duration::from_secs(60);
        let b = current(&idf, &st, later).unwrap();
        assert_ne!(a, b);
        std::fs::write(&st, "0123456789abcdef0123456789abcdefEXTRA\nsecond line\n").unwrap();
        assert_eq!(current(&idf, &st, later).unwrap().as_str(), "0123456789abcdef0123456789abcdef");
        std::fs::write(&st, "not valid!\n").unwrap();
        assert!(current(&idf, &st, later).is_err());
    }

    #[test]
    fn levels() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            Config { etc_dir: dir.path().join("etc"), state_dir: dir.path().join("state"), ..Config::default() };
        let now = SystemTime::now();
        let session = MachineId::random();
        // anonymous: the session id, nothing written, nothing to peek.
        cfg.privacy_level = PrivacyLevel::Anonymous;
        assert_eq!(for_level(&cfg, &session, now).unwrap(), session);
        assert!(!cfg.machine_id_file().exists());
        assert_eq!(peek(&cfg, now), None);
        // standard: the rotating file.
        cfg.privacy_level = PrivacyLevel::Standard;
        let a = for_level(&cfg, &session, now).unwrap();
        assert_ne!(a, session);
        assert_eq!(peek(&cfg, now), Some(a.clone()));
        // A second past the rotation age (the file was written a moment after `now`).
        assert_eq!(peek(&cfg, now + ROTATION + Duration::from_secs(1)), None);
        // static: required.
        cfg.privacy_level = PrivacyLevel::Static;
        let e = for_level(&cfg, &session, now).unwrap_err().to_string();
        assert!(e.contains("opt-in-static-machine-id") && e.contains("privacy_level"), "{e}");
        std::fs::create_dir_all(&cfg.etc_dir).unwrap();
        std::fs::write(cfg.static_machine_id_file(), "c0ffee\n").unwrap();
        assert_eq!(for_level(&cfg, &session, now).unwrap().as_str(), "c0ffee");
        assert_eq!(peek(&cfg, now).unwrap().as_str(), "c0ffee");
    }

    #[test]
    fn anonymous_host_keeps_arch_os_kernel_only() {
        let full = HostInfo::shared();
        let mut h = full.clone();
        anonymize_host(&mut h, PrivacyLevel::Standard);
        assert!(std::sync::Arc::ptr_eq(&h, &full), "shared facts are not copied when nothing changes");
        anonymize_host(&mut h, PrivacyLevel::Anonymous);
        assert_eq!(*full, *HostInfo::current(), "the shared facts are left alone");
        assert_eq!(
            (&h.arch, &h.build, &h.system_name, &h.kernel_version),
            (&full.arch, &full.build, &full.system_name, &full.kernel_version)
        );
        for f in [&h.host_type, &h.board_name, &h.cpu_model, &h.bios_version] {
            assert_eq!(f.as_str(), PLACEHOLDER);
        }
    }
}
