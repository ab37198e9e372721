//! Retention: finished recordings whose stop is older than
//! `blackbox_retention_days` (default 14) are deleted, at collector start
//! and daily. Running recordings are bounded by their own `--max-age`
//! and `--max-size` instead.

use std::path::Path;

/// Deletes the finished recordings under `root` stopped more than `days`
/// days before `now_wall_ns`; their ids.
pub fn prune(root: &Path, days: u32, now_wall_ns: u64) -> Vec<String> {
    let horizon = now_wall_ns.saturating_sub(u64::from(days) * 86_400 * 1_000_000_000);
    let metas = match super::list_metas(root) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("blackbox retention: {e}");
            return Vec::new();
        }
    };
    let mut gone = Vec::new();
    for m in metas {
        if m.stopped_wall_ns.is_some_and(|s| s < horizon) {
            match super::delete(root, &m.id) {
                Ok(()) => {
                    tracing::info!("blackbox: recording {} deleted (stopped over {days} days ago)", m.id);
                    gone.push(m.id);
                }
                Err(e) => tracing::warn!("blackbox retention: {e}"),
            }
        }
    }
    gone
}
