//! Repository locks with leases: shared for writers that add data, exclusive for
//! prune, which deletes it.
//!
//! A lock is a sealed file `locks/<16 hex>` that its owner rewrites every
//! [`REFRESH_INTERVAL`]. A lock whose last refresh is older than [`STALE_AFTER`],
//! or whose owner ran on this host under a process id that no longer exists, is
//! stale: other processes ignore it and may delete it. The owner checks its own
//! lease before each commit and gives up when the lease has lapsed, so a process
//! that was paused past the stale limit cannot commit on top of a prune that
//! went ahead without it.
//!
//! | held \ wanted | shared | exclusive |
//! |---------------|--------|-----------|
//! | shared        | yes    | waits     |
//! | exclusive     | waits  | waits     |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::{Backend, RepoError, Repository, damaged};
use crate::crypto::{Keys, ObjectKind};
use crate::tree::Timestamp;

/// How often the owner rewrites its lock file.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// A lock not refreshed for this long is stale. Hosts whose clocks differ by more
/// than this minus [`REFRESH_INTERVAL`] can take a live lock for stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Largest lock file accepted when reading.
const MAX_LOCK_LEN: usize = 64 << 10;

/// The contents of a lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// True for prune and other operations that delete data.
    pub exclusive: bool,
    /// Command that holds the lock, such as `backup`.
    pub operation: String,
    /// Host name of the owner.
    pub hostname: String,
    /// Process id of the owner.
    pub pid: u32,
    /// When the lock was taken.
    pub created: Timestamp,
    /// When the owner last rewrote the lock.
    pub refreshed: Timestamp,
}

impl LockInfo {
    /// True when the owner has stopped refreshing the lock, or is known dead.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        if now.secs - self.refreshed.secs > STALE_AFTER.as_secs() as i64 {
            return true;
        }
        if self.hostname == crate::backup::local_hostname() && self.pid != std::process::id() {
            // Signal 0 checks that the process exists without affecting it.
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None);
            return matches!(alive, Err(nix::errno::Errno::ESRCH));
        }
        false
    }

    /// Describes the owner for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}) on {} pid {}, taken {}, refreshed {}",
            self.operation,
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.hostname,
            self.pid,
            self.created.to_rfc3339(),
            self.refreshed.to_rfc3339()
        )
    }
}

/// Decodes the plaintext of a lock file.
pub fn decode_lock(plain: &[u8]) -> Result<LockInfo, postcard::Error> {
    postcard::from_bytes(plain)
}

fn seal(keys: &Keys, info: &LockInfo) -> Vec<u8> {
    let plain = postcard::to_allocvec(info).expect("lock encodes");
    keys.seal(ObjectKind::Lock, &[0; 32], &plain, 0)
        .expect("lock seals")
}

/// A lock file's name and its decoded contents, or why they could not be read.
pub type LockEntry = (String, Result<LockInfo, RepoError>);

/// Reads all lock files; unreadable ones are reported as `Err` with their name.
pub fn read_locks(repo: &Repository) -> Result<Vec<LockEntry>, RepoError> {
    let mut out = Vec::new();
    for name in repo.backend().list("locks")? {
        let path = format!("locks/{name}");
        let info = match repo.backend().read(&path) {
            Ok(bytes) => repo
                .keys()
                .open(ObjectKind::Lock, &[0; 32], &bytes, MAX_LOCK_LEN)
                .map_err(|e| damaged(format!("lock {name}"), e))
                .and_then(|plain| {
                    decode_lock(&plain).map_err(|e| damaged(format!("lock {name}"), e))
                }),
            // Removed between listing and reading: its owner released it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e.into()),
        };
        out.push((name, info));
    }
    Ok(out)
}

struct LeaseState {
    last_refresh: Instant,
    error: Option<String>,
    /// Set when another process deleted the lock file, taking it for stale.
    removed: bool,
}

/// A lock file that this process holds.
struct HeldLock {
    backend: Arc<dyn Backend>,
    path: String,
    stop: Arc<AtomicBool>,
}

/// The locks this process holds, so that a process stopped by a signal can
/// remove them before it exits.
static HELD: Mutex<Vec<HeldLock>> = Mutex::new(Vec::new());

/// Stops refreshing and removes every lock file that this process holds. For
/// a process about to exit without unwinding, such as on SIGINT: its locks
/// would otherwise block a prune until they turn stale.
pub fn release_held_locks() {
    let held = std::mem::take(&mut *HELD.lock().expect("held locks lock"));
    for lock in held {
        lock.stop.store(true, Ordering::SeqCst);
        if let Err(e) = lock.backend.remove(&lock.path) {
            tracing::warn!("failed to remove lock {}: {e}", lock.path);
        }
    }
}

/// A held lock. Dropping it stops the refresh thread and deletes the lock file.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    path: String,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<LeaseState>>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LockGuard({})", self.path)
    }
}

impl LockGuard {
    /// Fails when the lease has lapsed: the lock was not refreshed for longer than
    /// the stale limit, so another process may have removed it and deleted data.
    /// Call before committing anything that refers to existing data.
    pub fn check(&self) -> Result<(), RepoError> {
        let state = self.state.lock().expect("lease lock");
        if state.removed {
            return Err(RepoError::LockLost(format!(
                "lock {} was removed by another process",
                self.path
            )));
        }
        let margin = REFRESH_INTERVAL * 2;
        if state.last_refresh.elapsed() + margin > STALE_AFTER {
            return Err(RepoError::LockLost(format!(
                "lock {} was last refreshed {} s ago{}",
                self.path,
                state.last_refresh.elapsed().as_secs(),
                state
                    .error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        HELD.lock()
            .expect("held locks lock")
            .retain(|held| held.path != self.path);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.refresher.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        if let Err(e) = self.backend.remove(&self.path) {
            tracing::warn!("failed to remove lock {}: {e}", self.path);
        }
    }
}

impl Repository {
    /// Takes a shared lock, waiting up to `wait` while an exclusive lock is held.
    pub fn lock_shared(&self, operation: &str, wait: Duration) -> Result<LockGuard, RepoError> {
        self.lock(operation, false, wait)
    }

    /// Takes an exclusive lock, waiting up to `wait` while any other lock is held.
    pub fn lock_exclusive(&self, operation: &str, wait: Duration) -> Result<LockGuard, RepoError> {
        self.lock(operation, true, wait)
    }

    fn lock(
        &self,
        operation: &str,
        exclusive: bool,
        wait: Duration,
    ) -> Result<LockGuard, RepoError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let now = Timestamp::now();
            let info = LockInfo {
                exclusive,
                operation: operation.to_string(),
                hostname: crate::backup::local_hostname(),
                pid: std::process::id(),
                created: now,
                refreshed: now,
            };
            let name = format!("{:016x}", rand::rng().random::<u64>());
            let path = format!("locks/{name}");
            // Registered before it is written, so that a signal that arrives
            // from here on removes it.
            let stop = Arc::new(AtomicBool::new(false));
            HELD.lock().expect("held locks lock").push(HeldLock {
                backend: self.shared_backend(),
                path: path.clone(),
                stop: stop.clone(),
            });
            let unregister = |path: &str| {
                HELD.lock()
                    .expect("held locks lock")
                    .retain(|held| held.path != path);
            };
            // Write first, then look: of two processes that race, at least one
            // sees the other's lock and backs off.
            let conflict = self
                .write_file(&path, &seal(self.keys(), &info))
                .and_then(|()| self.find_conflict(&name, exclusive));
            let holder = match conflict {
                Ok(None) => return Ok(self.start_lease(path, info, stop)),
                Ok(Some(holder)) => holder,
                Err(e) => {
                    unregister(&path);
                    let _ = self.backend().remove(&path);
                    return Err(e);
                }
            };
            unregister(&path);
            self.backend().remove(&path)?;
            if started.elapsed() >= wait {
                return Err(RepoError::Locked(holder));
            }
            tracing::info!("waiting for lock held by {holder}");
            let jitter = Duration::from_millis(rand::rng().random_range(0..200));
            std::thread::sleep(delay + jitter);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn find_conflict(&self, own: &str, exclusive: bool) -> Result<Option<String>, RepoError> {
        let now = Timestamp::now();
        for (name, info) in read_locks(self)? {
            if name == own {
                continue;
            }
            match info {
                Ok(info) if info.is_stale(now) => {
                    tracing::info!("removing stale lock {name}: {}", info.describe());
                    let _ = self.backend().remove(&format!("locks/{name}"));
                }
                Ok(info) if exclusive || info.exclusive => return Ok(Some(info.describe())),
                Ok(_) => {}
                Err(e) => {
                    // A lock that does not decrypt blocks exclusive access, because
                    // its owner cannot be told apart from a live one.
                    if exclusive {
                        return Ok(Some(format!(
                            "unreadable lock {name} ({e}); remove it with `cairn unlock --remove-all` if no cairn process runs"
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    fn start_lease(&self, path: String, mut info: LockInfo, stop: Arc<AtomicBool>) -> LockGuard {
        let state = Arc::new(Mutex::new(LeaseState {
            last_refresh: Instant::now(),
            error: None,
            removed: false,
        }));
        let backend = self.shared_backend();
        let keys = self.keys().clone();
        let refresher = {
            let (stop, state, backend, path) =
                (stop.clone(), state.clone(), backend.clone(), path.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(REFRESH_INTERVAL);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // A lock that vanished was removed as stale by another process,
                    // which may have acted on that; writing it back would hide it.
                    if let Err(e) = backend.size(&path)
                        && e.kind() == std::io::ErrorKind::NotFound
                    {
                        tracing::error!("lock {path} was removed by another process");
                        state.lock().expect("lease lock").removed = true;
                        break;
                    }
                    info.refreshed = Timestamp::now();
                    let result = backend.write_atomic(&path, &seal(&keys, &info));
                    let mut state = state.lock().expect("lease lock");
                    match result {
                        Ok(()) => {
                            state.last_refresh = Instant::now();
                            state.error = None;
                        }
                        Err(e) => {
                            tracing::warn!("failed to refresh lock {path}: {e}");
                            state.error = Some(e.to_string());
                        }
                    }
                }
            })
        };
        LockGuard {
            backend,
            path,
            stop,
            state,
            refresher: Some(refresher),
        }
    }
}
