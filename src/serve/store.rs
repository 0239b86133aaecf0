//! The files of one served repository, and the rules of each role.
//!
//! | Role | Read, list | Create a file | Replace a file | Delete a file |
//! |---|---|---|---|---|
//! | `read` | yes | no | no | no |
//! | `append` | yes | yes, except `config` and `keys` | only its own lock files | only its own lock files |
//! | `admin` | yes | yes | yes, except packs, index files, snapshots and audit entries | yes |
//!
//! Packs, index files and snapshots are named by the BLAKE3 hash of their
//! bytes, and audit entries by its first 16 hex characters, so the server
//! checks the hash on every write, and no role can replace them with other
//! bytes. Writing the bytes that a file already has
//! succeeds for every writing role, so that a client can retry a write whose
//! response it never received.
//!
//! A lock's owner is the client that created it through this server. The
//! server records it in `locks/.owner-<name>` next to the lock, a name that
//! no listing shows and no request can reach.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::config::Role;
use super::paths::FileKind;
use crate::repository::{Backend, LocalBackend};

/// Failure of a request on a repository, with the message for the client.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    /// 400: the body does not match the file's name.
    BadRequest(String),
    /// 403: the role does not allow the operation.
    Forbidden(String),
    /// 404: the file does not exist.
    NotFound(String),
    /// 409: the file exists with other bytes, and the role may not replace it.
    Conflict(String),
    /// 416: the requested range ends after the end of the file.
    RangeNotSatisfiable(String),
    /// 507: the server's disk is full.
    NoSpace(String),
    /// 500: any other failure. The message for the client leaves out the
    /// server's paths, which the server logs instead.
    Internal(String),
}

/// Outcome of a successful write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The file did not exist before.
    Created,
    /// An existing file was replaced.
    Replaced,
    /// The file already had these bytes.
    Unchanged,
}

/// One repository directory served under a name.
pub struct RepositoryStore {
    name: String,
    root: PathBuf,
    backend: LocalBackend,
    /// Held while a lock file and its owner record change, so that the two
    /// always change together.
    locks: Mutex<()>,
}

impl std::fmt::Debug for RepositoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RepositoryStore({} at {})",
            self.name,
            self.root.display()
        )
    }
}

/// Returns the path of the owner record of a lock file.
fn owner_path(lock_path: &str) -> String {
    let name = lock_path.strip_prefix("locks/").expect("lock path");
    format!("locks/.owner-{name}")
}

impl RepositoryStore {
    /// Serves the directory `root` under `name`.
    pub fn new(name: &str, root: &Path) -> Self {
        Self {
            name: name.to_string(),
            root: root.to_path_buf(),
            backend: LocalBackend::new(root),
            locks: Mutex::new(()),
        }
    }

    /// Returns the directory of the repository.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io_error(&self, operation: &str, path: &str, error: io::Error) -> StoreError {
        match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                StoreError::NotFound(format!("{path} not found in repository {}", self.name))
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                tracing::error!("{operation} {path} in {}: {error}", self.name);
                StoreError::NoSpace(format!(
                    "the server's disk is full: {operation} {path} in repository {} failed",
                    self.name
                ))
            }
            _ => {
                tracing::error!("{operation} {path} in {}: {error}", self.name);
                StoreError::Internal(format!(
                    "{operation} {path} in repository {} failed on the server; its log has the cause",
                    self.name
                ))
            }
        }
    }

    /// Reads a whole file.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        self.backend
            .read(path)
            .map_err(|e| self.io_error("read", path, e))
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_range(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.backend.read_at(path, offset, len).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StoreError::RangeNotSatisfiable(format!(
                    "{path} is shorter than {offset} + {len} bytes"
                ))
            } else {
                self.io_error("read", path, e)
            }
        })
    }

    /// Returns the size of a file.
    pub fn size(&self, path: &str) -> Result<u64, StoreError> {
        self.backend
            .size(path)
            .map_err(|e| self.io_error("stat", path, e))
    }

    /// Lists a directory, or everything below it with `recursive`.
    pub fn list(&self, dir: &str, recursive: bool) -> Result<Vec<String>, StoreError> {
        let result = if recursive {
            self.backend.list_recursive(dir)
        } else {
            self.backend.list(dir)
        };
        result.map_err(|e| self.io_error("list", dir, e))
    }

    fn rejection(&self, client: &str, role: Role, action: &str, hint: &str) -> String {
        format!(
            "client {client} has the {role} role in repository {}, which may not {action}; {hint}",
            self.name
        )
    }

    /// Writes a file as `client` with `role`.
    pub fn write(
        &self,
        client: &str,
        role: Role,
        kind: FileKind,
        path: &str,
        bytes: &[u8],
    ) -> Result<Written, StoreError> {
        // A reader takes its own locks, so that a prune waits for its restore
        // or mount, and leaves an audit entry like every client.
        if role == Role::Read && !matches!(kind, FileKind::Lock | FileKind::Audit) {
            return Err(StoreError::Forbidden(self.rejection(
                client,
                role,
                &format!("write {path}"),
                "adding data needs a client with the append or admin role",
            )));
        }
        if kind == FileKind::Lock {
            return self.write_lock(client, role, path, bytes);
        }
        // `config` and `keys` decide who can open the repository, so only
        // admin creates them (with `init`).
        let may_create = role == Role::Admin || !matches!(kind, FileKind::Config | FileKind::Keys);
        if may_create {
            if let Some(name) = kind.content_hash(path) {
                let actual = blake3::hash(bytes).to_hex();
                // An audit entry's name holds only the start of the hash.
                if name.is_empty() || !actual.as_str().starts_with(name) {
                    // Other bytes for an existing file are an attempt to
                    // replace it, and get the same status (409).
                    if self.exists(path)? {
                        return Err(self.reject_replace(client, role, kind, path));
                    }
                    return Err(StoreError::BadRequest(format!(
                        "the body of {path} has the BLAKE3 hash {actual}, not its name"
                    )));
                }
            }
            match self.backend.create_new(path, bytes) {
                Ok(()) => return Ok(Written::Created),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io_error("write", path, e)),
            }
        }
        match self.read(path) {
            Ok(existing) if existing == bytes => return Ok(Written::Unchanged),
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => {
                return Err(StoreError::Forbidden(self.rejection(
                    client,
                    role,
                    &format!("create {path}"),
                    "init needs a client with the admin role",
                )));
            }
            Err(e) => return Err(e),
        }
        if role == Role::Admin && !kind.is_content_addressed() {
            self.backend
                .write_atomic(path, bytes)
                .map_err(|e| self.io_error("write", path, e))?;
            return Ok(Written::Replaced);
        }
        Err(self.reject_replace(client, role, kind, path))
    }

    fn exists(&self, path: &str) -> Result<bool, StoreError> {
        match self.backend.size(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error("stat", path, e)),
        }
    }

    fn reject_replace(&self, client: &str, role: Role, kind: FileKind, path: &str) -> StoreError {
        let hint = match kind {
            FileKind::Keys => "key changes need a client with the admin role",
            FileKind::Config => "the config is written once, by init",
            _ => "files named by the hash of their bytes are never replaced",
        };
        StoreError::Conflict(format!(
            "{path} exists with other content: {}",
            self.rejection(client, role, &format!("replace {path}"), hint)
        ))
    }

    fn write_lock(
        &self,
        client: &str,
        role: Role,
        path: &str,
        bytes: &[u8],
    ) -> Result<Written, StoreError> {
        let _guard = self.locks.lock().expect("lock files mutex");
        let owner = owner_path(path);
        if self.exists(path)? {
            self.check_lock_owner(client, role, path, "replace")?;
            self.backend
                .write_atomic(path, bytes)
                .map_err(|e| self.io_error("write", path, e))?;
            return Ok(Written::Replaced);
        }
        // The owner record goes first: a crash between the two writes leaves
        // a record without a lock, which the next lock of that name replaces.
        self.backend
            .write_atomic(&owner, client.as_bytes())
            .map_err(|e| self.io_error("write", &owner, e))?;
        self.backend
            .create_new(path, bytes)
            .map_err(|e| self.io_error("write", path, e))?;
        Ok(Written::Created)
    }

    /// Fails unless `client` may change the existing lock file at `path`.
    fn check_lock_owner(
        &self,
        client: &str,
        role: Role,
        path: &str,
        action: &str,
    ) -> Result<(), StoreError> {
        if role == Role::Admin {
            return Ok(());
        }
        let owner = match self.backend.read(&owner_path(path)) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io_error("read", &owner_path(path), e)),
        };
        if owner.as_deref() == Some(client) {
            return Ok(());
        }
        let holder = match owner {
            Some(other) => format!("it belongs to client {other}"),
            None => "it was not created through this server".to_string(),
        };
        Err(StoreError::Forbidden(format!(
            "{path}: {holder}, and {}",
            self.rejection(
                client,
                role,
                &format!("{action} the locks of others"),
                "`cairn unlock` needs a client with the admin role"
            )
        )))
    }

    /// Deletes a file as `client` with `role`.
    pub fn delete(
        &self,
        client: &str,
        role: Role,
        kind: FileKind,
        path: &str,
    ) -> Result<(), StoreError> {
        if kind == FileKind::Lock {
            let _guard = self.locks.lock().expect("lock files mutex");
            self.size(path)?;
            self.check_lock_owner(client, role, path, "delete")?;
            self.backend
                .remove(path)
                .map_err(|e| self.io_error("delete", path, e))?;
            match self.backend.remove(&owner_path(path)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error("delete", &owner_path(path), e)),
            }
            return Ok(());
        }
        if role != Role::Admin {
            return Err(StoreError::Forbidden(self.rejection(
                client,
                role,
                &format!("delete {path}"),
                "forget, prune and repair need a client with the admin role",
            )));
        }
        self.backend
            .remove(path)
            .map_err(|e| self.io_error("delete", path, e))
    }

    /// Removes the temporary files of writes that never finished, as
    /// `prune` does. Admin only, because it is safe only while no client writes.
    pub fn remove_temporary_files(&self, client: &str, role: Role) -> Result<u64, StoreError> {
        if role != Role::Admin {
            return Err(StoreError::Forbidden(self.rejection(
                client,
                role,
                "remove temporary files",
                "prune needs a client with the admin role",
            )));
        }
        self.backend
            .remove_temporary_files()
            .map_err(|e| self.io_error("remove temporary files in", "the repository", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "locks/5d0c7a1e2b3f4a69";

    fn pack(bytes: &[u8]) -> String {
        let hash = blake3::hash(bytes).to_hex();
        format!("data/{}/{hash}", &hash[..2])
    }

    fn store() -> (tempfile::TempDir, RepositoryStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RepositoryStore::new("main", dir.path());
        (dir, store)
    }

    #[test]
    fn append_creates_but_never_replaces_or_deletes() {
        let (_dir, store) = store();
        let path = pack(b"pack one");
        let append =
            |bytes: &[u8]| store.write("alpha", Role::Append, FileKind::Pack, &path, bytes);

        assert_eq!(append(b"pack one"), Ok(Written::Created));
        assert_eq!(append(b"pack one"), Ok(Written::Unchanged));
        assert!(matches!(append(b"pack two"), Err(StoreError::Conflict(_))));
        let unnamed = store.write("alpha", Role::Append, FileKind::Pack, &pack(b"x"), b"y");
        assert!(
            matches!(unnamed, Err(StoreError::BadRequest(_))),
            "{unnamed:?}"
        );
        assert!(matches!(
            store.delete("alpha", Role::Append, FileKind::Pack, &path),
            Err(StoreError::Forbidden(_))
        ));
        assert_eq!(store.read(&path).unwrap(), b"pack one");
    }

    #[test]
    fn only_admin_replaces_keys() {
        let (_dir, store) = store();
        let created = store.write("alpha", Role::Append, FileKind::Keys, "keys", b"old");
        assert!(
            matches!(created, Err(StoreError::Forbidden(_))),
            "{created:?}"
        );
        store
            .write("operator", Role::Admin, FileKind::Keys, "keys", b"old")
            .unwrap();
        let same = store.write("alpha", Role::Append, FileKind::Keys, "keys", b"old");
        assert_eq!(same, Ok(Written::Unchanged));

        let rejected = store.write("alpha", Role::Append, FileKind::Keys, "keys", b"new");
        let Err(StoreError::Conflict(message)) = rejected else {
            panic!("append replaced keys: {rejected:?}");
        };
        assert!(message.contains("append role"), "{message}");
        assert_eq!(store.read("keys").unwrap(), b"old");

        let replaced = store.write("operator", Role::Admin, FileKind::Keys, "keys", b"new");
        assert_eq!(replaced, Ok(Written::Replaced));
        assert_eq!(store.read("keys").unwrap(), b"new");
    }

    #[test]
    fn read_role_cannot_write() {
        let (_dir, store) = store();
        let result = store.write("viewer", Role::Read, FileKind::Config, "config", b"x");
        assert!(
            matches!(result, Err(StoreError::Forbidden(_))),
            "{result:?}"
        );
    }

    #[test]
    fn append_manages_only_own_locks() {
        let (_dir, store) = store();
        let lock = |client: &str, bytes: &[u8]| {
            store.write(client, Role::Append, FileKind::Lock, LOCK, bytes)
        };

        assert_eq!(lock("alpha", b"taken"), Ok(Written::Created));
        assert_eq!(lock("alpha", b"refreshed"), Ok(Written::Replaced));
        assert!(matches!(
            lock("beta", b"stolen"),
            Err(StoreError::Forbidden(_))
        ));
        assert!(matches!(
            store.delete("beta", Role::Append, FileKind::Lock, LOCK),
            Err(StoreError::Forbidden(_))
        ));
        assert_eq!(store.read(LOCK).unwrap(), b"refreshed");
        assert_eq!(store.list("locks", false).unwrap(), ["5d0c7a1e2b3f4a69"]);

        store
            .delete("alpha", Role::Append, FileKind::Lock, LOCK)
            .unwrap();
        assert!(store.list("locks", false).unwrap().is_empty());
        assert!(
            !store.root().join(owner_path(LOCK)).exists(),
            "owner record left behind"
        );
    }

    #[test]
    fn lock_without_owner_record_needs_admin() {
        let (dir, store) = store();
        std::fs::create_dir_all(dir.path().join("locks")).unwrap();
        std::fs::write(dir.path().join(LOCK), b"written on the server").unwrap();

        let rejected = store.delete("alpha", Role::Append, FileKind::Lock, LOCK);
        let Err(StoreError::Forbidden(message)) = rejected else {
            panic!("append deleted a foreign lock: {rejected:?}");
        };
        assert!(
            message.contains("not created through this server"),
            "{message}"
        );
        store
            .delete("operator", Role::Admin, FileKind::Lock, LOCK)
            .unwrap();
    }

    #[test]
    fn missing_file_is_not_found() {
        let (_dir, store) = store();
        assert!(matches!(store.read("config"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.delete("operator", Role::Admin, FileKind::Config, "config"),
            Err(StoreError::NotFound(_))
        ));
    }
}
