//! Stage: consent, the one place that decides whether a record may leave
//! the machine, and whether its payload is scrubbed first.
//!
//! Records are always accepted and journaled locally. One leaves the
//! machine only when every check below passes, in this order (the first
//! that fails is the reason journaled as `local-only: <why>`):
//!
//! 1. `DO_NOT_TRACK` is not set in the collector's environment;
//! 2. `airgap` is not true;
//! 3. a destination is configured: `server`, `otlp_endpoint` or both;
//! 4. `record_server_delivery_enabled` is true;
//! 5. the machine is opted in (`etc_dir/opt-in`, `telemctl opt-in`);
//! 6. `debug` is off (debug logs each request instead of sending it).
//!
//! Consent is not retroactive: a record decided local-only is never put in
//! the spool, so a later opt-in cannot upload it.
//!
//! Scrubbing ([`telemetry::scrub`]) is on unless
//! `etc_dir/opt-in-no-privacy-filters` exists (the original's file).

use crate::config::Config;

/// Whether records accepted now are to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deliver,
    /// Kept on this machine, with the reason shown in the journal.
    LocalOnly(&'static str),
}

impl Decision {
    /// `deliver` or `local-only: <why>` (the status and journal wording).
    pub fn describe(&self) -> String {
        match self {
            Decision::Deliver => "deliver".into(),
            Decision::LocalOnly(why) => format!("local-only: {why}"),
        }
    }
}

pub const WHY_DO_NOT_TRACK: &str = "DO_NOT_TRACK=1";
pub const WHY_AIRGAP: &str = "airgap";
pub const WHY_NO_SERVER: &str = "no server configured";
pub const WHY_DISABLED: &str = "delivery disabled (record_server_delivery_enabled=false)";
pub const WHY_NOT_OPTED_IN: &str = "not opted in";
pub const WHY_DEBUG: &str = "debug";

/// Decides for the current configuration and opt-in state.
pub fn decide(cfg: &Config) -> Decision {
    if cfg.do_not_track {
        return Decision::LocalOnly(WHY_DO_NOT_TRACK);
    }
    if cfg.airgap {
        return Decision::LocalOnly(WHY_AIRGAP);
    }
    if cfg.server.is_none() && cfg.otlp.is_none() {
        return Decision::LocalOnly(WHY_NO_SERVER);
    }
    if !cfg.record_server_delivery_enabled {
        return Decision::LocalOnly(WHY_DISABLED);
    }
    if !cfg.opt_in_file().exists() {
        return Decision::LocalOnly(WHY_NOT_OPTED_IN);
    }
    if cfg.debug {
        return Decision::LocalOnly(WHY_DEBUG);
    }
    Decision::Deliver
}

/// Whether payloads are scrubbed (true unless the opt-out file exists).
pub fn scrubbing(cfg: &Config) -> bool {
    !cfg.no_privacy_filters_file().exists()
}

/// One plain sentence for `telemctl status`: which mode is in force and why.
pub fn explain(d: &Decision, cfg: &Config) -> String {
    let server = cfg.server.as_ref().map(|u| u.to_string()).unwrap_or_default();
    match d {
        Decision::Deliver => {
            let to = match (&cfg.server, &cfg.otlp) {
                (Some(_), Some(o)) => format!("{server} and over OTLP to {}", o.url),
                (None, Some(o)) => format!("OTLP {}", o.url),
                _ => server,
            };
            format!("UPLOAD: records are sent to {to} (opted in with {})", cfg.opt_in_file().display())
        }
        Decision::LocalOnly(why) => {
            let because = match *why {
                WHY_DO_NOT_TRACK => "DO_NOT_TRACK is set in the collector's environment".to_string(),
                WHY_AIRGAP => "airgap = true in the configuration".to_string(),
                WHY_NO_SERVER => "no server (nor otlp_endpoint) is configured".to_string(),
                WHY_DISABLED => "record_server_delivery_enabled = false".to_string(),
                WHY_NOT_OPTED_IN => {
                    format!("this machine is not opted in (`telemctl opt-in` creates {})", cfg.opt_in_file().display())
                }
                WHY_DEBUG => "debug = true: each request is logged instead of sent".to_string(),
                other => other.to_string(),
            };
            format!("LOCAL ONLY: nothing leaves this machine, because {because}")
        }
    }
}

/// `telemctl opt-in`: creates the opt-in file.
pub fn opt_in(cfg: &Config) -> std::io::Result<()> {
    std::fs::create_dir_all(&cfg.etc_dir)?;
    std::fs::write(cfg.opt_in_file(), b"")
}

/// `telemctl opt-out`: removes the opt-in file.
pub fn opt_out(cfg: &Config) -> std::io::Result<()> {
    match std::fs::remove_file(cfg.opt_in_file()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_leaves_without_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config { etc_dir: dir.path().into(), ..Config::default() };
        cfg.server = Some("https://example.com/".parse().unwrap());
        assert_eq!(decide(&cfg), Decision::LocalOnly("not opted in"));
        opt_in(&cfg).unwrap();
        assert_eq!(decide(&cfg), Decision::Deliver);
        cfg.record_server_delivery_enabled = false;
        assert!(matches!(decide(&cfg), Decision::LocalOnly(w) if w.contains("disabled")));
        cfg.record_server_delivery_enabled = true;
        opt_out(&cfg).unwrap();
        opt_out(&cfg).unwrap();
        assert_eq!(decide(&cfg), Decision::LocalOnly("not opted in"));
    }

    #[test]
    fn dnt_airgap_no_server_and_debug_win_over_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let base = Config {
            etc_dir: dir.path().into(),
            server: Some("https://example.com/".parse().unwrap()),
            ..Config::default()
        };
        opt_in(&base).unwrap();
        assert_eq!(decide(&base), Decision::Deliver);
        let cases = [
            (Config { do_not_track: true, airgap: true, ..base.clone() }, "local-only: DO_NOT_TRACK=1"),
            (Config { airgap: true, ..base.clone() }, "local-only: airgap"),
            (Config { server: None, debug: true, ..base.clone() }, "local-only: no server configured"),
            (Config { debug: true, ..base.clone() }, "local-only: debug"),
        ];
        for (cfg, want) in cases {
            let d = decide(&cfg);
            assert_eq!(d.describe(), want);
            assert!(explain(&d, &cfg).starts_with("LOCAL ONLY"), "{}", explain(&d, &cfg));
        }
        assert!(explain(&Decision::Deliver, &base).starts_with("UPLOAD"));
    }

    #[test]
    fn scrubbing_is_on_unless_the_original_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config { etc_dir: dir.path().into(), ..Config::default() };
        assert!(scrubbing(&cfg));
        std::fs::write(cfg.no_privacy_filters_file(), b"").unwrap();
        assert!(!scrubbing(&cfg));
    }
}
