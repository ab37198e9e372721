//! The handler's settings, from the suite's INI file (`[settings]`).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `crash_payload_version` | 1 | 1 = the original's text layout, 2 = JSON |
//! | `crash_frame_limit` | 128 | most frames per thread |
//! | `crash_budget_secs` | 30 | wall-clock budget; then the record is sent partial |
//! | `crash_third_party` | `summary` | binaries outside the system prefixes: `summary` (payload `Crash from third party`, no unwinding, as the original), `unwind` (full backtrace, still `crash/unknown`) or `ignore` (no record) |
//! | `crash_system_prefixes` | `/usr/ /bin/ /sbin/ /lib/ /lib64/` | executables under these are the distribution's (`crash/clr`) |
//! | `crash_build_prefixes` | `/builddir/` | executables under these are build-time crashes (`crash/clr-build`) |
//! | `crash_stack_kib` | 1024 | stack bytes kept for the crashing thread (others: a quarter, at most 16 MiB in all) |
//! | `crash_debug_lines` | `false` | also file:line from separate debug files (`/usr/lib/debug`, found by build-id or debug link); `false` takes only their symbol names: decoding libc's compressed DWARF costs ~50 ms and ~35 MB per crash in pipe mode. The crashed program's own DWARF is always used |
//! | `crash_signature_burst` | 3 | crash-loop governor: full records per crash signature per window; beyond it crashes are only counted (one `crash/repeated` record per window); -1 turns the governor off |
//! | `crash_signature_window` | 60 | the governor's window, in minutes (or seconds with an `s` suffix: `90s`), from 1 s to 7 days |
//! | `state_dir` | `/var/lib/telemetry` | where the governor keeps its counts (`crash-signatures`) and which signature each crash site has (`crash-sites`), as the collector keeps its state |
//! | `socket_path` | `/run/telem-0` | the collector (as every probe) |

use std::path::Path;
use std::time::Duration;

use telemetry::config::{ConfigError, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThirdParty {
    Summary,
    Unwind,
    Ignore,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub payload_version: u32,
    pub frame_limit: usize,
    pub budget: Duration,
    pub third_party: ThirdParty,
    pub system_prefixes: Vec<String>,
    pub build_prefixes: Vec<String>,
    pub stack_bytes: u64,
    pub debug_lines: bool,
    /// Full records per signature per window; `None`: no governor.
    pub signature_burst: Option<u64>,
    pub signature_window: Duration,
    pub state_dir: std::path::PathBuf,
    pub settings: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            payload_version: 1,
            frame_limit: 128,
            budget: Duration::from_secs(30),
            third_party: ThirdParty::Summary,
            system_prefixes: ["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/"].map(String::from).to_vec(),
            build_prefixes: vec!["/builddir/".into()],
            stack_bytes: 1 << 20,
            debug_lines: false,
            signature_burst: Some(3),
            signature_window: Duration::from_secs(3600),
            state_dir: "/var/lib/telemetry".into(),
            settings: Settings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CrashConfigError {
    #[error(transparent)]
    File(#[from] ConfigError),
    #[error("setting {key} = {value:?} is invalid: {expected}")]
    Value { key: &'static str, value: String, expected: &'static str },
}

impl Config {
    /// Loads the file by the suite's lookup order (or `explicit`).
    pub fn load(explicit: Option<&Path>) -> Result<Config, CrashConfigError> {
        Config::from_settings(Settings::load(explicit)?)
    }

    pub fn from_settings(settings: Settings) -> Result<Config, CrashConfigError> {
        let mut c = Config::default();
        let get = |k: &str| settings.get(k).map(|v| v.trim().to_string());
        fn num<T: std::str::FromStr>(
            key: &'static str,
            v: &str,
            expected: &'static str,
        ) -> Result<T, CrashConfigError> {
            v.parse().map_err(|_| CrashConfigError::Value { key, value: v.into(), expected })
        }
        if let Some(v) = get("crash_payload_version") {
            c.payload_version = match v.as_str() {
                "1" => 1,
                "2" => 2,
                _ => {
                    return Err(CrashConfigError::Value { key: "crash_payload_version", value: v, expected: "1 or 2" })
                }
            };
        }
        if let Some(v) = get("crash_frame_limit") {
            c.frame_limit = num("crash_frame_limit", &v, "a number of frames from 1 to 4096")?;
            if !(1..=4096).contains(&c.frame_limit) {
                return Err(CrashConfigError::Value { key: "crash_frame_limit", value: v, expected: "from 1 to 4096" });
            }
        }
        if let Some(v) = get("crash_budget_secs") {
            let s: u64 = num("crash_budget_secs", &v, "seconds from 1 to 600")?;
            if !(1..=600).contains(&s) {
                return Err(CrashConfigError::Value {
                    key: "crash_budget_secs",
                    value: v,
                    expected: "seconds from 1 to 600",
                });
            }
            c.budget = Duration::from_secs(s);
        }
        if let Some(v) = get("crash_third_party") {
            c.third_party = match v.as_str() {
                "summary" => ThirdParty::Summary,
                "unwind" => ThirdParty::Unwind,
                "ignore" => ThirdParty::Ignore,
                _ => {
                    return Err(CrashConfigError::Value {
                        key: "crash_third_party",
                        value: v,
                        expected: "summary, unwind or ignore",
                    })
                }
            };
        }
        if let Some(v) = get("crash_system_prefixes") {
            c.system_prefixes = v.split_whitespace().map(String::from).collect();
        }
        if let Some(v) = get("crash_build_prefixes") {
            c.build_prefixes = v.split_whitespace().map(String::from).collect();
        }
        if let Some(v) = get("crash_stack_kib") {
            let k: u64 = num("crash_stack_kib", &v, "KiB from 16 to 16384")?;
            if !(16..=16384).contains(&k) {
                return Err(CrashConfigError::Value {
                    key: "crash_stack_kib",
                    value: v,
                    expected: "KiB from 16 to 16384",
                });
            }
            c.stack_bytes = k << 10;
        }
        if let Some(v) = get("crash_debug_lines") {
            c.debug_lines = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(CrashConfigError::Value {
                        key: "crash_debug_lines",
                        value: v,
                        expected: "true or false",
                    })
                }
            };
        }
        if let Some(v) = get("crash_signature_burst") {
            let n: i64 = num("crash_signature_burst", &v, "a number of records, or -1 (no governor)")?;
            c.signature_burst = match n {
                -1 => None,
                n if n >= 0 => Some(n as u64),
                _ => {
                    return Err(CrashConfigError::Value {
                        key: "crash_signature_burst",
                        value: v,
                        expected: "a number of records, or -1 (no governor)",
                    })
                }
            };
        }
        if let Some(v) = get("crash_signature_window") {
            const EXPECTED: &str = "minutes (or seconds with an s suffix) from 1 s to 7 days";
            let secs: u64 = match v.strip_suffix('s') {
                Some(secs) => num("crash_signature_window", secs.trim(), EXPECTED)?,
                None => num::<u64>("crash_signature_window", &v, EXPECTED)?.saturating_mul(60),
            };
            if !(1..=7 * 86_400).contains(&secs) {
                return Err(CrashConfigError::Value { key: "crash_signature_window", value: v, expected: EXPECTED });
            }
            c.signature_window = Duration::from_secs(secs);
        }
        if let Some(v) = get("state_dir") {
            c.state_dir = v.into();
        }
        c.settings = settings;
        Ok(c)
    }

    /// The unwinder's options for this configuration.
    pub fn unwind_options(&self) -> unwind::Options {
        unwind::Options { max_frames: self.frame_limit, separate_debug_lines: self.debug_lines, ..Default::default() }
    }

    /// The socket of the collector (`socket_path` of the same file, else
    /// `TELEM_SOCKET`, else the default), as every probe resolves it.
    pub fn socket(&self, argument: Option<&Path>) -> Result<telemetry::client::SocketPath, ConfigError> {
        telemetry::client::SocketPath::resolve_with(
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
    fn parses_and_rejects() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.conf");
        std::fs::write(
            &p,
            "[settings]\ncrash_payload_version=2\ncrash_third_party=unwind\ncrash_system_prefixes=/tmp/ /usr/\n",
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.payload_version, 2);
        assert_eq!(c.third_party, ThirdParty::Unwind);
        assert_eq!(c.system_prefixes, vec!["/tmp/", "/usr/"]);
        std::fs::write(&p, "[settings]\ncrash_payload_version=3\n").unwrap();
        assert!(Config::load(Some(&p)).is_err());
        std::fs::write(&p, "[settings]\ncrash_frame_limit=0\n").unwrap();
        assert!(Config::load(Some(&p)).is_err());
        std::fs::write(&p, "[settings]\ncrash_signature_burst=5\ncrash_signature_window=90s\nstate_dir=/s\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!((c.signature_burst, c.signature_window.as_secs()), (Some(5), 90));
        assert_eq!(c.state_dir, std::path::PathBuf::from("/s"));
        std::fs::write(&p, "[settings]\ncrash_signature_burst=-1\ncrash_signature_window=2\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!((c.signature_burst, c.signature_window.as_secs()), (None, 120));
        let d = Config::default();
        assert_eq!((d.signature_burst, d.signature_window.as_secs()), (Some(3), 3600));
        for bad in ["crash_signature_burst=-2", "crash_signature_window=0", "crash_signature_window=x"] {
            std::fs::write(&p, format!("[settings]\n{bad}\n")).unwrap();
            assert!(Config::load(Some(&p)).is_err(), "{bad}");
        }
    }
}
