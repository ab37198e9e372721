//! Wiring: opens the stores, binds the sockets, starts every stage, and
//! handles signals (SIGHUP reloads, SIGTERM/SIGINT stop cleanly).

use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::config::{BadConfig, Config};
use crate::journal::{Journal, JournalError};
use crate::spool::{Spool, SpoolError};
use crate::state::State;
use crate::store;
use crate::{control, delivery, identity, ingest};

use crate::store::COMMITTERS;
/// Submissions queued between ingest and the commit stage.
pub const SUBMIT_QUEUE: usize = 1024;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] BadConfig),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("cannot create {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {path}: {source} (is another collector running? check socket_path)")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Raises the open-file limit to its hard maximum (probe connections).
fn raise_nofile() {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The listening socket systemd passed (LISTEN_FDS/LISTEN_PID), if any.
fn activated_listener() -> Option<std::os::unix::net::UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    // SAFETY: fstat on fd 3 into a local struct.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(3, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        tracing::warn!("LISTEN_FDS is set but fd 3 is not a socket; binding socket_path instead");
        return None;
    }
    // SAFETY: systemd hands us fd 3 as an open listening socket.
    let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    Some(l)
}

fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    let berr = |source| DaemonError::Bind { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::Dir { path: dir.into(), source })?;
    }
    // A socket left by a dead daemon; a live one answers connect.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(berr(std::io::Error::new(std::io::ErrorKind::AddrInUse, "a collector is already listening there")));
    }
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).map_err(berr)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(berr)?;
    l.set_nonblocking(true).map_err(berr)?;
    Ok(l)
}

/// Senders waiting to be accepted (the kernel caps it at
/// `net.core.somaxconn`). At the connection cap the daemon stops
/// accepting, and a sender's blocking `connect` waits in this queue.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Sets the probe socket's listen backlog to [`LISTEN_BACKLOG`] (calling
/// `listen` again on a listening socket changes its backlog, also for a
/// socket systemd passed).
fn widen_backlog(l: &std::os::unix::net::UnixListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a socket we own.
    if unsafe { libc::listen(l.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        tracing::warn!("cannot widen the listen backlog: {}", std::io::Error::last_os_error());
    }
}

fn mkdir(p: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(p).map_err(|source| DaemonError::Dir { path: p.into(), source })
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    // glibc's allocator, for a small resident set (target < 20 MB):
    // - two arenas: the daemon has few busy threads, and per-thread arenas
    //   would keep freed batches resident;
    // - buffers of 128 KiB and more (spool blocks, read-backs, read
    //   buffers) always mmap'd, so they go back to the system when freed
    //   instead of leaving holes in the heap that small records cannot
    //   fill (the default threshold rises to the largest freed buffer):
    //   peak RSS 18.7 -> 16.0 MB end to end, same throughput.
    // SAFETY: mallopt only tunes glibc's allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 10);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_nofile();
    // Before any file is opened, so fd 3 is still systemd's.
    let activated = activated_listener();
    for d in [&cfg.spool_dir, &cfg.journal_dir, &cfg.state_dir] {
        mkdir(d)?;
    }
    let (journal, journal_thread) =
        Journal::open_with(&cfg.journal_dir, Some(crate::journal::Retention::from_config(&cfg)))?;
    let expire_before = telemetry::record::now_unix().saturating_sub(cfg.record_expiry.as_secs());
    let (spool, mut recovered) = Spool::open(&cfg.spool_dir, expire_before)?;
    spool.set_cap(cfg.spool_max_bytes);
    spool.set_destinations(crate::spool::Dest::mask(&cfg));
    if recovered.records > 0 || recovered.torn > 0 {
        tracing::info!(
            "spool: {} record(s) in {} block(s) recovered, {} torn write(s) removed",
            recovered.records,
            recovered.segments,
            recovered.torn
        );
    }
    // The anonymous level's id: made now, kept in memory only.
    let session = telemetry::MachineId::random();
    let mid = identity::for_level(&cfg, &session, SystemTime::now())?;
    tracing::info!(
        "privacy_level = {}; {}; payload scrubbing {}",
        cfg.privacy_level.as_str(),
        crate::consent::decide(&cfg).describe(),
        if crate::consent::scrubbing(&cfg) { "on" } else { "off (opt-in-no-privacy-filters)" }
    );
    let listener = match activated {
        Some(l) => {
            tracing::info!("using the socket passed by systemd");
            l.set_nonblocking(true).map_err(|source| DaemonError::Bind { path: cfg.socket_path.clone(), source })?;
            l
        }
        None => bind(&cfg.socket_path, 0o666)?,
    };
    widen_backlog(&listener);
    let control_l = bind(&cfg.control_socket(), 0o600)?;
    let blackbox_l = bind(&cfg.blackbox_socket(), 0o600)?;
    let pid_file = cfg.pid_file();
    let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));

    let (cfg_tx, cfg_rx) = watch::channel(Arc::new(cfg.clone()));
    let mut state = State::new(cfg_rx, spool, journal.clone(), mid, session);
    state.host_went_down = crate::running::host_went_down(&cfg.state_dir, &state.boot_id);
    if let Some(boot) = &state.host_went_down {
        tracing::warn!("{}", crate::running::warning(boot));
    }
    if let Err(e) = crate::running::mark(&cfg.state_dir, &state.boot_id) {
        tracing::warn!(
            "cannot write {}: {e}; a power loss under this run will not be reported at the next start",
            crate::running::path(&cfg.state_dir).display()
        );
    }
    let shared = Arc::new(state);
    shared.wake_delivery.set_destinations(crate::spool::Dest::mask(&cfg));
    store::settle::expired(
        &shared,
        crate::spool::Expired {
            items: std::mem::take(&mut recovered.expired),
            files: std::mem::take(&mut recovered.expired_files),
        },
    );
    journal_unjournaled(&shared, &cfg, recovered.newest, recovered.records > 0);
    // The black box: old finished recordings go, a running one continues.
    crate::blackbox::retention::prune(
        shared.blackbox.root(),
        cfg.blackbox_retention_days,
        telemetry::blackbox::wall_ns(),
    );
    if let Err(e) = shared.blackbox.resume(&shared.boot_id) {
        tracing::error!("blackbox: cannot continue the running recording: {e}");
    }
    let (bb_stop, bb_rx) = std::sync::mpsc::channel::<()>();
    let bb_thread = {
        let s = shared.clone();
        std::thread::Builder::new().name("blackbox".into()).spawn(move || crate::blackbox::run_thread(s, bb_rx)).ok()
    };

    // Two event loops. The pipeline's (one thread, "pipeline"): the probe
    // socket's accept loop, its connection tasks and the delivery loops, so
    // a lone record is read, committed (see `ingest::burst`), posted and
    // settled without waking another thread. The rest (control, black box
    // feeds, signals) on a pool of one worker ("collector"), which may
    // block in place. A work-stealing pool of two for everything woke its
    // idle worker for each task that became ready, and a delivery loop on
    // a thread of its own was woken (an eventfd write, an IPI) for each
    // record: together about a third of a lone record's CPU.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("collector")
        .build()
        .map_err(DaemonError::Runtime)?;
    let pipeline_rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DaemonError::Runtime)?;

    let (sub_tx, sub_rx) = async_channel::bounded(SUBMIT_QUEUE);
    let committers: Vec<_> = (0..COMMITTERS)
        .filter_map(|i| {
            let (s, r) = (shared.clone(), sub_rx.clone());
            std::thread::Builder::new().name(format!("commit-{i}")).spawn(move || store::committer(s, r)).ok()
        })
        .collect();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (pipeline_done, pipeline_ended) = tokio::sync::oneshot::channel::<()>();
    let pipeline_thread = {
        let (shared, stop_rx, socket) = (shared.clone(), stop_rx.clone(), cfg.socket_path.clone());
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                pipeline_rt.block_on(async {
                    let deliver: Vec<_> = crate::spool::Dest::ALL
                        .iter()
                        .map(|d| tokio::spawn(delivery::run(shared.clone(), *d, stop_rx.clone())))
                        .collect();
                    match tokio::net::UnixListener::from_std(listener) {
                        Ok(l) => ingest::serve(l, shared, sub_tx, stop_rx).await,
                        Err(source) => tracing::error!("{}", DaemonError::Bind { path: socket, source }),
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(deliver)).await;
                });
                let _ = pipeline_done.send(());
                // Connections still open keep their sender; give them a
                // moment, then go.
                pipeline_rt.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(DaemonError::Runtime)?
    };
    let result = rt.block_on(async {
        let control_l = tokio::net::UnixListener::from_std(control_l)
            .map_err(|source| DaemonError::Bind { path: cfg.control_socket(), source })?;
        let blackbox_l = tokio::net::UnixListener::from_std(blackbox_l)
            .map_err(|source| DaemonError::Bind { path: cfg.blackbox_socket(), source })?;
        tokio::spawn(crate::blackbox::feed::serve(blackbox_l, shared.clone(), stop_rx.clone()));
        let (reload_tx, mut reload_rx) = mpsc::channel::<control::ReloadDone>(4);
        tokio::spawn(control::serve(control_l, shared.clone(), reload_tx));
        // Hourly machine id check.
        let s2 = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            tick.tick().await;
            loop {
                tick.tick().await;
                let c = s2.config();
                match identity::for_level(&c, &s2.session_id, SystemTime::now()) {
                    Ok(id) => *s2.machine_id.lock().unwrap_or_else(|p| p.into_inner()) = id,
                    Err(e) => tracing::error!("machine id: {e}"),
                }
            }
        });
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
        tracing::info!(
            "telem-collector {} listening on {} (config: {})",
            env!("CARGO_PKG_VERSION"),
            cfg.socket_path.display(),
            cfg.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into())
        );
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let _ = reload(&cfg_tx, &shared).await;
                }
                Some(done) = reload_rx.recv() => {
                    let _ = done.send(reload(&cfg_tx, &shared).await);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping: no new connections; finishing what was received");
        let _ = stop_tx.send(true);
        let _ = pipeline_ended.await;
        Ok::<(), DaemonError>(())
    });
    // Connections still open keep their sender; give them a moment, then go.
    rt.shutdown_timeout(Duration::from_secs(2));
    // (Also when the loop above ended early, with an error.)
    let _ = stop_tx.send(true);
    let _ = pipeline_thread.join();
    for c in committers {
        let _ = c.join();
    }
    // The recording stays running (it continues at the next start); what
    // was written is fsync'd.
    drop(bb_stop);
    if let Some(t) = bb_thread {
        let _ = t.join();
    }
    // Files whose records were all delivered go back to the pool now, so
    // the next start does not find (and send) them again.
    shared.spool.settle(Duration::from_secs(2));
    drop(shared);
    drop(journal);
    let _ = journal_thread.join();
    let _ = std::fs::remove_file(&pid_file);
    // Everything is synced: a power loss from now on loses nothing.
    crate::running::clear(&cfg.state_dir);
    let _ = std::fs::remove_file(cfg.control_socket());
    let _ = std::fs::remove_file(cfg.blackbox_socket());
    result
}

/// Journals spooled records whose first entry a crash cut off: the spool
/// had them durably (they were acknowledged), the journal writer had not
/// written their lines yet when the process died.
///
/// Also applies the fates the journal's end has for recovered records
/// ([`crate::spool::Spool::apply_finals`]): a record a destination took
/// before the restart is not sent to it again (the spool keeps blocks
/// whole; fates cut off by the crash still mean at least once).
fn journal_unjournaled(shared: &State, cfg: &Config, newest: Vec<crate::spool::Item>, spooled: bool) {
    use crate::journal::Fate;
    use crate::spool::Item;
    if newest.is_empty() && !spooled {
        return;
    }
    let tail = match crate::journal::tail(&cfg.journal_dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot read the end of the journal to check it against the spool: {e}");
            return;
        }
    };
    let left = shared.spool.apply_finals(&tail.finals);
    if left > 0 {
        tracing::info!(
            "spool: {left} recovered record(s) were final at every destination already (journal); not sent again"
        );
    }
    // Only records at least as new as the journal's end can be missing
    // from it (older ones may have been pruned or rotated away). The spool
    // does not keep the boot a record was accepted in; after a crash (not
    // a power loss) it is this one.
    let missing: Vec<(Item, Fate)> = newest
        .into_iter()
        .filter(|i| tail.newest.is_none_or(|t| i.accepted + 2 >= t) && !tail.ids.contains(&i.record_id))
        .map(|item| {
            let fate = if item.counted { Fate::Spooled } else { Fate::RateLimitedSpooled };
            (item, fate)
        })
        .collect();
    store::settle::recovered(shared, missing, cfg.record_retention_enabled);
}

/// Re-reads the configuration file and puts it in force (consent
/// re-decided, see [`State::consent_changed`]); why not, when it is
/// refused (the running configuration is kept).
async fn reload(cfg_tx: &watch::Sender<Arc<Config>>, shared: &State) -> Result<(), String> {
    let old = shared.config();
    match Config::load(old.file.as_deref()) {
        Ok(new) => {
            for (what, a, b) in [
                ("socket_path", &old.socket_path, &new.socket_path),
                ("spool_dir", &old.spool_dir, &new.spool_dir),
                ("journal_dir", &old.journal_dir, &new.journal_dir),
                ("state_dir", &old.state_dir, &new.state_dir),
            ] {
                if a != b {
                    tracing::warn!("{what} changed; it takes effect at the next start");
                }
            }
            shared.limiter().reconfigure(&new);
            shared.spool.set_cap(new.spool_max_bytes);
            match identity::for_level(&new, &shared.session_id, SystemTime::now()) {
                Ok(id) => *shared.machine_id.lock().unwrap_or_else(|p| p.into_inner()) = id,
                Err(e) => tracing::error!("machine id after reload: {e}; keeping the previous one"),
            }
            let new = Arc::new(new);
            shared
                .consent_changed(|| {
                    shared.spool.set_destinations(crate::spool::Dest::mask(&new));
                    shared.wake_delivery.set_destinations(crate::spool::Dest::mask(&new));
                    drop(cfg_tx.send(new))
                })
                .await;
            tracing::info!("configuration reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            Err(format!("reload refused, keeping the running configuration: {e}"))
        }
    }
}
