//! Finding and reading the INI configuration file: the original's
//! `[settings]` file and lookup order (`-f FILE`, then [`ETC_CONFIG`], then
//! [`DEFAULTS_CONFIG`]).
//!
//! Lookup: an explicit file (`-f FILE`), else
//! `/etc/telemetrics/telemetrics.conf`, else
//! `/usr/share/defaults/telemetrics/telemetrics.conf`, else built-in
//! defaults. Keys live in the `[settings]` section. The collector builds its
//! typed configuration on [`Settings`]; probes only read `socket_path`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The administrator's file.
pub const ETC_CONFIG: &str = "/etc/telemetrics/telemetrics.conf";
/// The distribution's defaults.
pub const DEFAULTS_CONFIG: &str = "/usr/share/defaults/telemetrics/telemetrics.conf";
/// The socket the collector listens on when nothing else is said.
pub const DEFAULT_SOCKET: &str = "/run/telem-0";
/// The collector's state directory (`state_dir`) when nothing else is
/// said: machine id, control and blackbox sockets, recordings.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/telemetry";

/// Why a configuration file cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file is not INI.
    #[error("configuration file {path} is not valid INI: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the INI parser said.
        reason: String,
    },
}

/// The `[settings]` keys of one file, and where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `None` when built-in defaults are in use.
    pub path: Option<PathBuf>,
    /// The keys of `[settings]` and their values, as written.
    pub values: BTreeMap<String, String>,
}

impl Settings {
    /// Finds the file by the lookup order and reads it. An explicit file
    /// that cannot be read is an error; missing default files are not.
    pub fn load(explicit: Option<&Path>) -> Result<Settings, ConfigError> {
        match explicit {
            Some(p) => Settings::read(p),
            None => match locate() {
                Some(p) => Settings::read(&p),
                None => Ok(Settings::default()),
            },
        }
    }

    /// Reads the `[settings]` section of `path`.
    pub fn read(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Settings::parse(&text, Some(path))
    }

    /// Parses INI text.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Settings, ConfigError> {
        let ini = ini::Ini::load_from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Into::into).unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let values = ini
            .section(Some("settings"))
            .map(|s| s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .unwrap_or_default();
        Ok(Settings { path: path.map(Into::into), values })
    }

    /// The value of `key`, if the file sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// The first configuration file of the lookup order that exists.
pub fn locate() -> Option<PathBuf> {
    [ETC_CONFIG, DEFAULTS_CONFIG].iter().map(PathBuf::from).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_section() {
        let s = Settings::parse("[other]\nsocket_path=/x\n[settings]\nsocket_path=/tmp/s\nserver=https://h/\n", None)
            .unwrap();
        assert_eq!(s.get("socket_path"), Some("/tmp/s"));
        assert_eq!(s.get("server"), Some("https://h/"));
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Settings::load(Some(Path::new("/nonexistent/t.conf"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/t.conf"), "{e}");
    }
}
