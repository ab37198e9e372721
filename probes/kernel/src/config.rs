//! The kernel probes' settings, from the suite's INI file (`[settings]`,
//! the collector's file and lookup order; `-f FILE` names another).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `socket_path` | `/run/telem-0` | the collector (as every probe; `--socket` and `TELEM_SOCKET` win) |
//! | `state_dir` | `/var/lib/telemetry` | klogscanner's position (`klogscanner.state`), pstore files sent (`pstore/`) |
//! | `etc_dir` | `/etc/telemetrics` | `opt-in-no-privacy-filters` there: register values in payloads |
//! | `klog_facilities` | `kern` | syslog facilities whose messages klogscanner reads, comma-separated (`kern,user` also reads lines written to `/dev/kmsg` from user space, for tests) |
//! | `klog_storm_window` | `60` | seconds: identical reports (same kind, start line up to numbers, first frames) within this window give one record, and one more with their count when the window ends (or klogscanner stops); `0` turns this off |
//! | `pstore_dir` | `/sys/fs/pstore` | where pstoreprobe reads dumps (mounted there when it is not) |

use std::path::{Path, PathBuf};
use std::time::Duration;

use telemetry::client::SocketPath;
use telemetry::config::{ConfigError, Settings};

use crate::kmsg::FACILITIES;

/// The settings the kernel probes use.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file read, and every key of it.
    pub settings: Settings,
    /// `state_dir`.
    pub state_dir: PathBuf,
    /// `etc_dir`.
    pub etc_dir: PathBuf,
    /// Bit `n` set: facility `n` is read.
    pub facilities: u32,
    /// `klog_storm_window` (`None`: off).
    pub storm_window: Option<Duration>,
    /// `pstore_dir`.
    pub pstore_dir: PathBuf,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KernelConfigError {
    /// The file cannot be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A value is wrong.
    #[error("setting {key} = {value:?} is invalid: {expected}")]
    Value {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

impl Config {
    /// Loads the file by the suite's lookup order (or `explicit`).
    pub fn load(explicit: Option<&Path>) -> Result<Config, KernelConfigError> {
        Config::from_settings(Settings::load(explicit)?)
    }

    /// Reads the keys of `settings`.
    pub fn from_settings(settings: Settings) -> Result<Config, KernelConfigError> {
        let get = |k: &str| settings.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let dir = |k: &str, d: &str| PathBuf::from(get(k).unwrap_or_else(|| d.to_string()));
        let mut facilities = 1; // kern
        if let Some(v) = get("klog_facilities") {
            facilities = 0;
            for name in v.split([',', ' ']).map(str::trim).filter(|n| !n.is_empty()) {
                let Some(n) = FACILITIES.iter().position(|f| *f == name) else {
                    return Err(KernelConfigError::Value {
                        key: "klog_facilities",
                        value: v.clone(),
                        expected: format!("syslog facility names separated by commas ({})", FACILITIES.join(", ")),
                    });
                };
                facilities |= 1 << n;
            }
        }
        let mut storm_window = Some(Duration::from_secs(60));
        if let Some(v) = get("klog_storm_window") {
            let secs: u64 = v.parse().map_err(|_| KernelConfigError::Value {
                key: "klog_storm_window",
                value: v.clone(),
                expected: "seconds, 0 to 86400".into(),
            })?;
            if secs > 86_400 {
                return Err(KernelConfigError::Value {
                    key: "klog_storm_window",
                    value: v,
                    expected: "seconds, 0 to 86400".into(),
                });
            }
            storm_window = (secs > 0).then(|| Duration::from_secs(secs));
        }
        Ok(Config {
            state_dir: dir("state_dir", "/var/lib/telemetry"),
            etc_dir: dir("etc_dir", "/etc/telemetrics"),
            pstore_dir: dir("pstore_dir", "/sys/fs/pstore"),
            facilities,
            storm_window,
            settings,
        })
    }

    /// Whether messages of `facility` are read.
    pub fn reads_facility(&self, facility: u32) -> bool {
        facility < 32 && self.facilities & (1 << facility) != 0
    }

    /// Whether payloads may carry register values
    /// (`etc_dir/opt-in-no-privacy-filters` exists), checked now.
    pub fn register_values(&self) -> bool {
        self.etc_dir.join("opt-in-no-privacy-filters").exists()
    }

    /// The collector's socket: `--socket`, else `TELEM_SOCKET`, else
    /// `socket_path` of this file, else the default.
    pub fn socket(&self, argument: Option<&Path>) -> Result<SocketPath, ConfigError> {
        SocketPath::resolve_with(
            argument,
            std::env::var_os(telemetry::client::SOCKET_ENV).map(Into::into),
            self.settings.path.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_errors() {
        let s = Settings::parse("[settings]\nklog_facilities=kern, user\nklog_storm_window=0\nstate_dir=/x\n", None)
            .unwrap();
        let c = Config::from_settings(s).unwrap();
        assert!(c.reads_facility(0) && c.reads_facility(1) && !c.reads_facility(3));
        assert_eq!(c.storm_window, None);
        assert_eq!(c.state_dir, PathBuf::from("/x"));
        let d = Config::from_settings(Settings::default()).unwrap();
        assert!(d.reads_facility(0) && !d.reads_facility(1));
        assert_eq!(d.storm_window, Some(Duration::from_secs(60)));
        let bad = Settings::parse("[settings]\nklog_facilities=kern,bogus\n", None).unwrap();
        assert!(Config::from_settings(bad).unwrap_err().to_string().contains("klog_facilities"));
    }
}
