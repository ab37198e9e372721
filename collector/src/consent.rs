//! Stage: consent, the one place that decides whether a record may leave
//! the machine. By default nothing does: the user opts in by creating
//! `etc_dir/opt-in` (`telemctl opt-in`). Records that stay are journaled as
//! `local-only: <why>`. (The privacy issue extends this module.)

use crate::config::Config;

/// Whether records accepted now are to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deliver,
    /// Kept on this machine, with the reason shown in the journal.
    LocalOnly(&'static str),
}

/// Decides for the current configuration and opt-in state.
pub fn decide(cfg: &Config) -> Decision {
    if !cfg.record_server_delivery_enabled {
        return Decision::LocalOnly("delivery disabled (record_server_delivery_enabled=false)");
    }
    if !cfg.opt_in_file().exists() {
        return Decision::LocalOnly("not opted in");
    }
    if cfg.server.is_none() {
        return Decision::LocalOnly("no server configured");
    }
    Decision::Deliver
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
}
