//! Stage: stamping. The machine id every posted record carries (reference
//! §3): 32 hex characters from 16 random bytes, kept in
//! `state_dir/machine_id` and made anew when older than three days
//! (checked at start and hourly), unless `etc_dir/opt-in-static-machine-id`
//! exists: then the first 32 characters of its first line are used.

use std::path::Path;
use std::time::{Duration, SystemTime};

use telemetry::MachineId;
use thiserror::Error;

/// How long a generated machine id lives.
pub const ROTATION: Duration = Duration::from_secs(3 * 24 * 3600);

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot write the machine id file {path}: {source} (check state_dir)")]
    Write { path: String, source: std::io::Error },
    #[error("the static machine id file {path} does not hold a usable id: {reason}")]
    Static { path: String, reason: String },
}

/// The machine id to stamp now, rotating the stored one if it is older
/// than [`ROTATION`] at `now`.
pub fn current(id_file: &Path, static_file: &Path, now: SystemTime) -> Result<MachineId, IdentityError> {
    if let Ok(text) = std::fs::read_to_string(static_file) {
        let line = text.lines().next().unwrap_or("").trim();
        let first: String = line.chars().take(32).collect();
        return MachineId::parse(&first)
            .map_err(|e| IdentityError::Static { path: static_file.display().to_string(), reason: e.to_string() });
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
}
