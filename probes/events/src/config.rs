//! eventprobe's settings, from the suite's INI file (`[settings]`, found
//! as every probe finds it: `-f FILE`, else `/etc/telemetrics/telemetrics.conf`,
//! else `/usr/share/defaults/telemetrics/telemetrics.conf`).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `event_registers` | `false` | `signal/fatal` records list the general-purpose registers beyond ip, sp and bp (`ax bx cx dx si di r8`-`r15`): they are data of the program, not metadata of the crash. Never at `privacy_level = anonymous`, never for a process that is not dumpable |
//! | `privacy_level` | `standard` | the collector's key; `anonymous` also keeps the registers beyond ip/sp/bp out of every record |
//! | `socket_path` | `/run/telem-0` | the collector (as every probe) |
//! | `state_dir` | `/var/lib/telemetry` | the collector's; its `blackbox.sock` is where the black box's feed connects |

use std::path::{Path, PathBuf};

use telemetry::config::{ConfigError, Settings};

pub use telemetry::config::DEFAULT_STATE_DIR;

/// What eventprobe takes from the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// List the registers beyond ip/sp/bp (`event_registers = true`, and
    /// `privacy_level` is not `anonymous`).
    pub registers: bool,
    /// The collector's `state_dir` (its blackbox socket is there).
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config { registers: false, state_dir: PathBuf::from(DEFAULT_STATE_DIR) }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EventConfigError {
    #[error(transparent)]
    File(#[from] ConfigError),
    #[error("setting {key} = {value:?} in {file} is invalid: {expected}")]
    Value { key: &'static str, value: String, file: String, expected: &'static str },
}

impl Config {
    /// Loads the file by the suite's lookup order (or `explicit`).
    pub fn load(explicit: Option<&Path>) -> Result<Config, EventConfigError> {
        Config::from_settings(&Settings::load(explicit)?)
    }

    pub fn from_settings(settings: &Settings) -> Result<Config, EventConfigError> {
        let file = || settings.path.as_ref().map_or_else(|| "(defaults)".to_string(), |p| p.display().to_string());
        let get = |k: &str| settings.get(k).map(|v| v.trim().to_string());
        let registers = match get("event_registers").as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(v) => {
                return Err(EventConfigError::Value {
                    key: "event_registers",
                    value: v.into(),
                    file: file(),
                    expected: "true or false",
                })
            }
        };
        let anonymous = match get("privacy_level").as_deref() {
            None | Some("standard" | "static") => false,
            Some("anonymous") => true,
            Some(v) => {
                return Err(EventConfigError::Value {
                    key: "privacy_level",
                    value: v.into(),
                    file: file(),
                    expected: "anonymous, standard or static",
                })
            }
        };
        let state_dir = match get("state_dir") {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(v) if !v.is_empty() => PathBuf::from(v),
            Some(v) => {
                return Err(EventConfigError::Value {
                    key: "state_dir",
                    value: v,
                    file: file(),
                    expected: "a path (as the collector reads it)",
                })
            }
        };
        Ok(Config { registers: registers && !anonymous, state_dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, EventConfigError> {
        Config::from_settings(&Settings::parse(text, None).unwrap())
    }

    #[test]
    fn registers_only_when_asked_and_never_anonymous() {
        assert!(!parse("[settings]\n").unwrap().registers);
        assert!(parse("[settings]\nevent_registers = true\n").unwrap().registers);
        assert!(!parse("[settings]\nevent_registers=true\nprivacy_level=anonymous\n").unwrap().registers);
        assert!(parse("[settings]\nevent_registers=1\nprivacy_level=static\n").unwrap().registers);
        let e = parse("[settings]\nevent_registers=maybe\n").unwrap_err().to_string();
        assert!(e.contains("event_registers") && e.contains("maybe"), "{e}");
        assert!(parse("[settings]\nprivacy_level=secret\n").is_err());
    }

    #[test]
    fn state_dir_defaults_and_must_not_be_empty() {
        assert_eq!(parse("[settings]\n").unwrap().state_dir, PathBuf::from("/var/lib/telemetry"));
        assert_eq!(parse("[settings]\nstate_dir = /srv/t\n").unwrap().state_dir, PathBuf::from("/srv/t"));
        let e = parse("[settings]\nstate_dir =\n").unwrap_err().to_string();
        assert!(e.contains("state_dir") && e.contains("a path"), "{e}");
    }
}
