//! The repository: config, key file, packs, index files and snapshots on a backend.
//!
//! Files, relative to the repository root:
//!
//! ```text
//! config                 format version, repository id, chunker parameters, MAC
//! keys                   key slots, each holding the key material
//! data/<2 hex>/<64 hex>  packs, named by the BLAKE3 hash of their bytes
//! index/<64 hex>         index files, named the same way
//! snapshots/<64 hex>     snapshot files, named the same way
//! ```
//!
//! Writes follow one order: packs, then the index files that list them, then the
//! snapshot that refers to their blobs. Each file is written atomically (a
//! renamed temporary file in a directory, one PUT in an S3 bucket), so a crash
//! leaves at worst unreferenced files.

pub mod backend;
pub mod http;
pub mod index;
mod keyfile;
pub mod location;
pub mod lock;
pub mod pack;
mod runs;
pub mod s3;
mod writer;

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;
use serde::{Deserialize, Serialize};

pub use self::backend::{Backend, LocalBackend};
use self::index::{Index, IndexBuilder, IndexRecord, MAX_INDEX_LEN};
pub use self::keyfile::{
    BoundSigningKey, KeyFile, KeySlot, RetiredKey, SlotKind, Unlocked, UnlockedSlot,
};
pub use self::location::Location;
use self::pack::BlobKind;
pub use self::runs::read_runs;
pub use self::writer::BlobWriter;
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{CryptoError, KdfParams, KeyMaterial, Keys, ObjectKind, Payload};
use crate::id::{ChunkId, IndexId, PackId, SnapshotId, TreeId};
use crate::snapshot::{MAX_SNAPSHOT_LEN, Snapshot};
use crate::tree::{MAX_TREE_LEN, Tree};

/// Repository format version written by this program, and the only one it reads.
pub const FORMAT_VERSION: u32 = 4;
/// A pack is closed once it reaches this size: 16 MiB, large enough that object
/// stores see few requests, small enough to rewrite cheaply during cleanup.
pub const PACK_TARGET_SIZE: usize = 16 << 20;
/// Magic bytes at the start of the config file.
const CONFIG_MAGIC: &[u8; 8] = b"CAIRNCFG";
/// Largest chunk plaintext accepted when reading, 64 MiB.
pub const MAX_CHUNK_LEN: usize = 64 << 20;

/// Errors of repository access. Messages name the object and the next step.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The directory or key prefix contains no repository.
    #[error("no cairn repository at {0}: run `cairn init` first, or check --repo")]
    NotFound(String),
    /// The repository location is invalid, or its storage cannot be used.
    #[error("{0}")]
    Location(String),
    /// `init` found an existing repository.
    #[error("a repository already exists at {0}")]
    AlreadyExists(String),
    /// No key slot accepts the password.
    #[error("wrong password for repository {0}: no key slot accepts it")]
    WrongPassword(String),
    /// The repository uses a format this program does not know.
    #[error(
        "repository {location} has format version {found}; this cairn reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// Repository location.
        location: String,
        /// Version found.
        found: u32,
    },
    /// A stored object is damaged, was tampered with or is malformed.
    #[error("damaged {object}: {detail}; run `cairn check` to see what it affects")]
    Damaged {
        /// The object, such as `pack 3fa1…` or `snapshot 9b2c…`.
        object: String,
        /// Description of the damage.
        detail: String,
    },
    /// A blob that the index does not list.
    #[error(
        "{0} not found in the repository's index: run `cairn check` to see what is missing, and `cairn repair index` if index files were lost or damaged"
    )]
    Missing(String),
    /// The storage has no room for a new file.
    #[error(
        "no space left in repository {location}: writing a file of {needed} bytes failed with {available} bytes free; free at least as much space as the new data still to be stored, which is more than this one file (prune, or move the repository), and run the command again; the repository stays readable"
    )]
    NoSpace {
        /// Repository location.
        location: String,
        /// Size of the file that could not be written.
        needed: u64,
        /// Free bytes reported by the storage, if known.
        available: String,
    },
    /// Another process holds a conflicting lock.
    #[error(
        "repository is locked by {0}; wait for it to finish, or if that process no longer runs, its lock turns stale 30 minutes after its last refresh"
    )]
    Locked(String),
    /// This process's own lock lapsed, so it must not commit.
    #[error("lost the repository lock ({0}); nothing was committed, run the command again")]
    LockLost(String),
    /// A path to back up cannot be used.
    #[error("{0}")]
    Source(String),
    /// A key slot operation was rejected.
    #[error("{0}")]
    KeySlot(String),
    /// A snapshot name matched no snapshot or more than one.
    #[error("{0}")]
    SnapshotSpec(String),
    /// The user stopped the command with SIGINT or SIGTERM. The message names
    /// what the command left behind.
    #[error("{0}")]
    Interrupted(String),
    /// A backup-only key was used for an operation that needs a full key.
    #[error(
        "key {key:?} is backup-only: it can add snapshots to {location} but cannot {operation}; run this with a full key (`cairn key list` shows each key's kind)"
    )]
    BackupOnly {
        /// Name of the key slot.
        key: String,
        /// Repository location.
        location: String,
        /// What was refused, such as `list snapshots`.
        operation: String,
    },
    /// A copy was asked to copy a repository onto itself.
    #[error(
        "{0} is both the source and the destination of the copy: give another repository with --to"
    )]
    SameRepository(String),
}

/// The authenticated, unencrypted repository settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version, [`FORMAT_VERSION`].
    pub version: u32,
    /// Random id, bound into every object's associated data.
    pub repo_id: [u8; 16],
    /// Chunk size limits.
    pub chunker: ChunkerParams,
    /// zstd level for chunks and trees.
    pub compression_level: i32,
}

/// Maximum number of trees that one [`Repository::prefetch_trees`] call loads:
/// a quarter of the tree cache, so that a prefetch does not push out the trees
/// in use.
pub const PREFETCH_TREES: usize = 1024;

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    keys: Keys,
    material: Unlocked,
    slot: String,
    signing: ed25519_dalek::SigningKey,
    chunker: Chunker,
    index: RwLock<Index>,
    trees: Mutex<LruCache<TreeId, Arc<Tree>>>,
    read_pool: std::sync::OnceLock<rayon::ThreadPool>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.backend.location())
    }
}

fn damaged(object: String, detail: impl ToString) -> RepoError {
    RepoError::Damaged {
        object,
        detail: detail.to_string(),
    }
}

/// Returns the name of a pack file.
pub fn pack_path(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{}", &hex[..2], hex)
}

impl Repository {
    /// Creates a repository in a local directory, with one key slot named `name`.
    pub fn init_local(path: &Path, password: &[u8], name: &str) -> Result<Self, RepoError> {
        Self::init(
            Self::new_local_backend(path)?,
            password,
            name,
            KdfParams::DEFAULT,
        )
    }

    /// Creates a repository in a local directory that shares the identity
    /// secret, chunker parameters and compression level of `like`, so that both
    /// give the same content the same chunk and tree ids. It gets its own
    /// repository id and its own encryption epoch.
    pub fn init_local_like(
        path: &Path,
        password: &[u8],
        name: &str,
        like: &Repository,
    ) -> Result<Self, RepoError> {
        Self::init_like(
            Self::new_local_backend(path)?,
            password,
            name,
            KdfParams::DEFAULT,
            like,
        )
    }

    fn new_local_backend(path: &Path) -> Result<Box<dyn Backend>, RepoError> {
        if path.join("config").exists() {
            return Err(RepoError::AlreadyExists(path.display().to_string()));
        }
        std::fs::create_dir_all(path)?;
        Ok(Box::new(LocalBackend::new(path)))
    }

    /// Creates a repository at `location`, with one key slot named `name`.
    pub fn init_at(location: &Location, password: &[u8], name: &str) -> Result<Self, RepoError> {
        if let Location::Local(path) = location {
            return Self::init_local(path, password, name);
        }
        let backend = location.connect()?;
        if Self::exists(backend.as_ref())? {
            return Err(RepoError::AlreadyExists(location.to_string()));
        }
        Self::init(backend, password, name, KdfParams::DEFAULT)
    }

    /// Creates a repository at `location` like [`Repository::init_local_like`].
    pub fn init_like_at(
        location: &Location,
        password: &[u8],
        name: &str,
        like: &Repository,
    ) -> Result<Self, RepoError> {
        if let Location::Local(path) = location {
            return Self::init_local_like(path, password, name, like);
        }
        let backend = location.connect()?;
        if Self::exists(backend.as_ref())? {
            return Err(RepoError::AlreadyExists(location.to_string()));
        }
        Self::init_like(backend, password, name, KdfParams::DEFAULT, like)
    }

    /// Returns true when the backend contains a repository, that is a `config`
    /// file. Failures other than a missing file are returned as errors.
    pub fn exists(backend: &dyn Backend) -> Result<bool, RepoError> {
        use std::io::ErrorKind;
        match backend.size("config") {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a repository on a backend, with one key slot.
    pub fn init(
        backend: Box<dyn Backend>,
        password: &[u8],
        name: &str,
        kdf: KdfParams,
    ) -> Result<Self, RepoError> {
        let settings = (ChunkerParams::DEFAULT, 3);
        Self::create(
            backend,
            password,
            name,
            kdf,
            KeyMaterial::generate(),
            settings,
        )
    }

    /// Creates a repository on a backend like [`Repository::init_local_like`].
    pub fn init_like(
        backend: Box<dyn Backend>,
        password: &[u8],
        name: &str,
        kdf: KdfParams,
        like: &Repository,
    ) -> Result<Self, RepoError> {
        let material = KeyMaterial::with_identity(like.full_material("share its keys")?.identity);
        let settings = (like.config.chunker, like.config.compression_level);
        Self::create(backend, password, name, kdf, material, settings)
    }

    fn create(
        backend: Box<dyn Backend>,
        password: &[u8],
        name: &str,
        kdf: KdfParams,
        material: KeyMaterial,
        (chunker, compression_level): (ChunkerParams, i32),
    ) -> Result<Self, RepoError> {
        let mut repo_id = [0u8; 16];
        rand::RngExt::fill(&mut rand::rng(), &mut repo_id);
        let keys = Keys::derive(repo_id, &material);
        let config = Config {
            version: FORMAT_VERSION,
            repo_id,
            chunker,
            compression_level,
        };

        let mut key_file = KeyFile {
            repo_id,
            slots: Vec::new(),
            retired: Vec::new(),
        };
        key_file
            .add_password_slot(name, password, &material, kdf)
            .map_err(|e| damaged("new key slot".into(), e))?;
        // Unlocking the new slot again is the only way to its signing key, and
        // costs one more key derivation.
        let unlocked = key_file
            .unlock_slot(password)
            .map_err(|e| damaged("new key slot".into(), e))?;
        backend.write_atomic("keys", &key_file.encode())?;
        backend.write_atomic("config", &encode_config(&config, &keys))?;
        Ok(Self::assemble(backend, config, keys, unlocked))
    }

    /// Opens a repository in a local directory.
    pub fn open_local(path: &Path, password: &[u8]) -> Result<Self, RepoError> {
        if !path.join("config").is_file() {
            return Err(RepoError::NotFound(path.display().to_string()));
        }
        Self::open(Box::new(LocalBackend::new(path)), password)
    }

    /// Opens a repository: unlocks a key slot with the password, checks the
    /// config's MAC and loads the index.
    pub fn open(backend: Box<dyn Backend>, password: &[u8]) -> Result<Self, RepoError> {
        let location = backend.location();
        let config_bytes = backend.read("config")?;
        let (config, mac) = decode_config(&config_bytes, &location)?;

        let key_bytes = backend.read("keys")?;
        let key_file = KeyFile::decode(&key_bytes)
            .map_err(|e| damaged(format!("key file of {location}"), e))?;
        if key_file.repo_id != config.repo_id {
            return Err(damaged(
                format!("key file of {location}"),
                "it belongs to another repository",
            ));
        }
        let unlocked = match key_file.unlock_slot(password) {
            Ok(unlocked) => unlocked,
            Err(CryptoError::Authentication) => return Err(RepoError::WrongPassword(location)),
            Err(e) => return Err(damaged(format!("key file of {location}"), e)),
        };
        let keys = match &unlocked.material {
            Unlocked::Full(material) => Keys::derive(config.repo_id, material),
            Unlocked::BackupOnly(material) => Keys::derive_backup_only(config.repo_id, material)
                .map_err(|e| damaged(format!("key file of {location}"), e))?,
        };
        // The MAC covers the stored bytes, so any change to the file is detected,
        // including bytes the decoder would ignore.
        let body = &config_bytes[CONFIG_MAGIC.len()..config_bytes.len() - 32];
        if keys.config_mac(body) != mac {
            return Err(damaged(
                format!("config of {location}"),
                "its MAC does not match",
            ));
        }
        config
            .chunker
            .validate()
            .map_err(|e| damaged(format!("config of {location}"), e))?;

        let repo = Self::assemble(backend, config, keys, unlocked);
        repo.load_index()?;
        Ok(repo)
    }

    fn assemble(
        backend: Box<dyn Backend>,
        config: Config,
        keys: Keys,
        unlocked: UnlockedSlot,
    ) -> Self {
        let chunker = Chunker::new(config.chunker, keys.gear_table());
        Self {
            backend: Arc::from(backend),
            config,
            keys,
            material: unlocked.material,
            slot: unlocked.name,
            signing: ed25519_dalek::SigningKey::from_bytes(&unlocked.signing),
            chunker,
            index: RwLock::new(Index::default()),
            trees: Mutex::new(LruCache::new(NonZeroUsize::new(4096).expect("nonzero"))),
            read_pool: std::sync::OnceLock::new(),
        }
    }

    /// Returns the storage backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Returns a shared handle to the storage backend, for background threads.
    pub fn shared_backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Returns the repository location for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Returns the keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Returns the config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Returns the key material, or `None` when a backup-only key opened the
    /// repository.
    pub fn material(&self) -> Option<&KeyMaterial> {
        match &self.material {
            Unlocked::Full(material) => Some(material),
            Unlocked::BackupOnly(_) => None,
        }
    }

    /// Returns true when a backup-only key opened the repository.
    pub fn is_backup_only(&self) -> bool {
        matches!(self.material, Unlocked::BackupOnly(_))
    }

    /// Returns the key material, or the error that names the key and
    /// `operation` when a backup-only key opened the repository.
    pub fn full_material(&self, operation: &str) -> Result<&KeyMaterial, RepoError> {
        self.material()
            .ok_or_else(|| self.backup_only_error(operation))
    }

    /// Fails with the error that names the key and `operation` when a
    /// backup-only key opened the repository.
    pub fn require_full_key(&self, operation: &str) -> Result<(), RepoError> {
        self.full_material(operation).map(|_| ())
    }

    fn backup_only_error(&self, operation: &str) -> RepoError {
        RepoError::BackupOnly {
            key: self.slot.clone(),
            location: self.location(),
            operation: operation.to_string(),
        }
    }

    /// Returns the Ed25519 signing key of the slot that opened the repository.
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.signing
    }

    /// Returns the keyed chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Gives read access to the in-memory index.
    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    pub(crate) fn add_index_record(&self, record: &IndexRecord) {
        self.index.write().expect("index lock").add_record(record);
    }

    /// Lists the index files.
    pub fn list_index_files(&self) -> Result<Vec<IndexId>, RepoError> {
        Ok(self
            .backend
            .list("index")?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect())
    }

    /// Reads, verifies and decrypts one index file.
    pub fn read_index_file(&self, id: &IndexId) -> Result<Vec<IndexRecord>, RepoError> {
        let object = format!("index file {}", id.short());
        let path = format!("index/{id}");
        if self.backend.size(&path)? > MAX_INDEX_LEN as u64 {
            return Err(damaged(object, "larger than any index file cairn writes"));
        }
        let bytes = self.backend.read(&path)?;
        if *blake3::hash(&bytes).as_bytes() != id.0 {
            return Err(damaged(object, "its contents do not match its name"));
        }
        let plain = self
            .keys
            .open(ObjectKind::Index, &[0; 32], &bytes, MAX_INDEX_LEN)
            .map_err(|e| damaged(object.clone(), e))?;
        index::decode_index(&plain).map_err(|e| damaged(object, e))
    }

    /// Returns a thread pool with one thread per read that the backend should
    /// have in flight ([`Backend::read_concurrency`]), for bulk reads.
    pub fn read_pool(&self) -> &rayon::ThreadPool {
        self.read_pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.backend.read_concurrency().max(1))
                .thread_name(|n| format!("cairn-read-{n}"))
                .build()
                .expect("a thread pool starts")
        })
    }

    /// Reads every index file into memory. A damaged index file is skipped with a
    /// warning, so that the blobs listed elsewhere stay readable; `check` reports it.
    ///
    /// Index files are read several at a time but merged in listing order, so a
    /// blob stored twice always resolves to the same pack.
    pub fn load_index(&self) -> Result<(), RepoError> {
        use rayon::prelude::*;

        let mut index = IndexBuilder::default();
        let ids = self.list_index_files()?;
        let batch = self.backend.read_concurrency().max(1) * 2;
        for ids in ids.chunks(batch) {
            let read: Vec<_> = self
                .read_pool()
                .install(|| ids.par_iter().map(|id| self.read_index_file(id)).collect());
            for (id, result) in ids.iter().zip(read) {
                match result {
                    Ok(records) => {
                        for record in records {
                            index.add_record(&record);
                        }
                    }
                    Err(e @ RepoError::Damaged { .. }) => tracing::warn!("{e}"),
                    // A prune replaced the index files between listing and reading; its
                    // new files, listed next time, hold the same blobs.
                    Err(RepoError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::debug!("index file {id} vanished while reading: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        *self.index.write().expect("index lock") = index.finish();
        Ok(())
    }

    /// Lists the packs stored in `data/`.
    pub fn list_packs(&self) -> Result<Vec<PackId>, RepoError> {
        let paths = self.backend.list_recursive("data")?;
        Ok(paths.iter().filter_map(|path| pack_id_of(path)).collect())
    }

    /// Lists the packs in storage like [`Repository::list_packs`], each with
    /// its size in bytes.
    pub fn list_pack_sizes(&self) -> Result<Vec<(PackId, u64)>, RepoError> {
        let files = self.backend.list_recursive_sizes("data")?;
        Ok(files
            .iter()
            .filter_map(|(path, size)| Some((pack_id_of(path)?, *size)))
            .collect())
    }

    /// Reads and decrypts a pack's header from the end of the pack.
    pub fn read_pack_header(&self, pack: &PackId) -> Result<Vec<pack::PackEntry>, RepoError> {
        let path = pack_path(pack);
        let object = format!("pack {}", pack.short());
        let size = self.backend.size(&path)?;
        let trailer = self.backend.read_at(&path, size.saturating_sub(4), 4)?;
        let trailer: [u8; 4] = trailer.try_into().expect("4 bytes");
        let (offset, len) =
            pack::header_location(size, trailer).map_err(|e| damaged(object.clone(), e))?;
        let sealed = self.backend.read_at(&path, offset, len)?;
        pack::decode_header(&self.keys, &sealed, offset).map_err(|e| damaged(object, e))
    }

    /// Adds packs that no index file lists, such as those of a backup that was
    /// killed, to a new index file, so that their blobs are reused rather than
    /// stored again. Returns the number of packs indexed.
    pub fn index_unindexed_packs(&self) -> Result<usize, RepoError> {
        let mut records = Vec::new();
        for pack in self.list_packs()? {
            if self.index().has_pack(&pack) {
                continue;
            }
            match self.read_pack_header(&pack) {
                Ok(entries) => records.push(IndexRecord { pack, entries }),
                Err(e) => tracing::warn!("not indexing pack {pack}: {e}"),
            }
        }
        if records.is_empty() {
            return Ok(0);
        }
        self.write_index_file(&records)?;
        for record in &records {
            self.add_index_record(record);
        }
        Ok(records.len())
    }

    /// Writes a repository file atomically, and turns a full disk into
    /// [`RepoError::NoSpace`] with the figures a user needs.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), RepoError> {
        match self.backend.write_atomic(name, bytes) {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::StorageFull
                    || e.kind() == std::io::ErrorKind::QuotaExceeded =>
            {
                Err(RepoError::NoSpace {
                    location: self.location(),
                    needed: bytes.len() as u64,
                    available: self
                        .backend
                        .free_space()
                        .map_or_else(|| "an unknown number of".into(), |b| b.to_string()),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes an index file listing the given packs.
    pub fn write_index_file(&self, records: &[IndexRecord]) -> Result<(IndexId, u64), RepoError> {
        let plain = postcard::to_allocvec(records).expect("index encodes");
        let sealed = self
            .keys
            .seal(ObjectKind::Index, &[0; 32], &plain, 3)
            .map_err(|e| damaged("new index file".into(), e))?;
        let id = IndexId(*blake3::hash(&sealed).as_bytes());
        self.write_file(&format!("index/{id}"), &sealed)?;
        Ok((id, sealed.len() as u64))
    }

    /// Reads and decrypts one blob, and checks that its plaintext hashes to its id.
    pub fn read_blob(&self, kind: BlobKind, id: &[u8; 32]) -> Result<Vec<u8>, RepoError> {
        let (sealed, pack) = self.read_sealed_blob(kind, id)?;
        self.open_blob(kind, id, &sealed, &pack)
    }

    /// Reads one blob like [`Repository::read_blob`] and returns its payload
    /// still compressed too, for sealing it again under other keys.
    pub fn read_blob_payload(
        &self,
        kind: BlobKind,
        id: &[u8; 32],
    ) -> Result<(Vec<u8>, Payload), RepoError> {
        let (sealed, pack) = self.read_sealed_blob(kind, id)?;
        self.open_blob_payload(kind, id, &sealed, &pack)
    }

    /// Reads one blob's sealed bytes and returns them with the pack they came
    /// from.
    fn read_sealed_blob(
        &self,
        kind: BlobKind,
        id: &[u8; 32],
    ) -> Result<(Vec<u8>, PackId), RepoError> {
        let what = match kind {
            BlobKind::Chunk => format!("chunk {}", hex::encode(&id[..4])),
            BlobKind::Tree => format!("tree {}", hex::encode(&id[..4])),
        };
        let mut location = match self.locate(id, &what) {
            Ok(location) => location,
            // The index may have been read while a prune swapped index files.
            Err(RepoError::Missing(_)) => {
                self.load_index()?;
                self.locate(id, &what)?
            }
            Err(e) => return Err(e),
        };
        let mut read = self.read_sealed(&location);
        if matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            // A prune may have repacked the blob since the index was loaded. It
            // writes the new index files before it deletes old packs, so reload once.
            self.load_index()?;
            location = self.locate(id, &what)?;
            read = self.read_sealed(&location);
        }
        let object = format!("{what} in pack {}", location.pack.short());
        let sealed = read.map_err(|e| match e.kind() {
            // The index lists the pack, so a missing pack file is damage.
            std::io::ErrorKind::NotFound => damaged(object, "its pack file is missing"),
            // Any other failure, such as an unreachable server, is not damage
            // to the repository's contents.
            error_kind => RepoError::Io(std::io::Error::new(
                error_kind,
                format!("reading {object} failed: {e}"),
            )),
        })?;
        Ok((sealed, location.pack))
    }

    /// Decrypts a sealed blob that was read from `pack`, and checks that its
    /// plaintext hashes to `id`.
    pub fn open_blob(
        &self,
        kind: BlobKind,
        id: &[u8; 32],
        sealed: &[u8],
        pack: &PackId,
    ) -> Result<Vec<u8>, RepoError> {
        self.open_blob_with(kind, id, sealed, pack, |payload, max| {
            payload.into_plaintext(max).map(|plain| (plain, ()))
        })
        .map(|(plain, ())| plain)
    }

    /// Opens a blob like [`Repository::open_blob`] and returns its payload
    /// still compressed too.
    fn open_blob_payload(
        &self,
        kind: BlobKind,
        id: &[u8; 32],
        sealed: &[u8],
        pack: &PackId,
    ) -> Result<(Vec<u8>, Payload), RepoError> {
        self.open_blob_with(kind, id, sealed, pack, |payload, max| {
            payload.plaintext(max).map(|plain| (plain, payload))
        })
    }

    /// Decrypts a blob, decodes its payload with `decode` and checks that the
    /// plaintext hashes to `id`.
    fn open_blob_with<T>(
        &self,
        kind: BlobKind,
        id: &[u8; 32],
        sealed: &[u8],
        pack: &PackId,
        decode: impl FnOnce(Payload, usize) -> Result<(Vec<u8>, T), CryptoError>,
    ) -> Result<(Vec<u8>, T), RepoError> {
        let object = || {
            let what = match kind {
                BlobKind::Chunk => "chunk",
                BlobKind::Tree => "tree",
            };
            format!("{what} {} in pack {}", hex::encode(&id[..4]), pack.short())
        };
        let max = match kind {
            BlobKind::Chunk => MAX_CHUNK_LEN,
            BlobKind::Tree => MAX_TREE_LEN,
        };
        let (plain, extra) = self
            .keys
            .open_payload(kind.object_kind(), id, sealed)
            .and_then(|payload| decode(payload, max))
            .map_err(|e| damaged(object(), e))?;
        let actual = match kind {
            BlobKind::Chunk => self.keys.chunk_id(&plain).0,
            BlobKind::Tree => self.keys.tree_id(&plain).0,
        };
        if &actual != id {
            return Err(damaged(object(), "its plaintext does not hash to its id"));
        }
        Ok((plain, extra))
    }

    fn locate(&self, id: &[u8; 32], what: &str) -> Result<index::BlobLocation, RepoError> {
        self.index()
            .get(id)
            .ok_or_else(|| RepoError::Missing(what.to_string()))
    }

    fn read_sealed(&self, location: &index::BlobLocation) -> std::io::Result<Vec<u8>> {
        self.backend.read_at(
            &pack_path(&location.pack),
            location.offset.into(),
            location.len as usize,
        )
    }

    /// Reads a chunk's plaintext.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        self.read_blob(BlobKind::Chunk, &id.0)
    }

    /// Reads, verifies and decodes one tree without going through the
    /// repository's tree cache, for callers that keep their own.
    pub fn load_tree_uncached(&self, id: &TreeId) -> Result<Tree, RepoError> {
        let plain = self.read_blob(BlobKind::Tree, &id.0)?;
        Tree::decode(&plain).map_err(|e| damaged(format!("tree {}", id.short()), e))
    }

    /// Loads the trees among `ids` that the tree cache lacks, and then their
    /// subtrees level by level, at most [`PREFETCH_TREES`] trees in all, so that
    /// the [`Repository::load_tree`] calls of a walk below `ids` find them
    /// there. Each level's trees are grouped by pack into few reads, several at
    /// once, which saves a round trip per directory on a server or object store.
    /// A tree that cannot be read is left out: loading it on its own then
    /// reports why.
    pub fn prefetch_trees<'a>(&self, ids: impl IntoIterator<Item = &'a TreeId>) {
        let mut budget = PREFETCH_TREES;
        let mut level = self.uncached_trees(ids.into_iter().copied(), budget);
        while !level.is_empty() {
            budget -= level.len();
            let loaded = self.load_tree_batch(&level);
            let subtrees: Vec<TreeId> = loaded
                .iter()
                .flat_map(|(_, tree)| tree.nodes.iter().filter_map(|node| node.subtree))
                .collect();
            {
                let mut cache = self.trees.lock().expect("tree cache lock");
                for (id, tree) in loaded {
                    cache.put(id, Arc::new(tree));
                }
            }
            level = self.uncached_trees(subtrees.into_iter(), budget);
        }
    }

    /// Returns the first `limit` distinct ids of `ids` that the tree cache lacks.
    fn uncached_trees(&self, ids: impl Iterator<Item = TreeId>, limit: usize) -> Vec<TreeId> {
        let cache = self.trees.lock().expect("tree cache lock");
        let mut seen = std::collections::HashSet::new();
        ids.filter(|id| !cache.contains(id) && seen.insert(*id))
            .take(limit)
            .collect()
    }

    /// Reads the trees `ids`, grouped by pack into merged reads on the read
    /// pool, and returns those that open and decode.
    fn load_tree_batch(&self, ids: &[TreeId]) -> Vec<(TreeId, Tree)> {
        let ids: Vec<[u8; 32]> = ids.iter().map(|id| id.0).collect();
        self.read_grouped(&ids, |id, sealed, pack| {
            let plain = self.open_blob(BlobKind::Tree, id, sealed, pack).ok()?;
            Some((TreeId(*id), Tree::decode(&plain).ok()?))
        })
    }

    /// Reads the chunks `ids` like [`Repository::load_tree_batch`] reads trees,
    /// and returns `each` of every chunk that opens, given its id, plaintext
    /// and payload. `each` runs on the read pool. A chunk that cannot be read
    /// is left out, so that reading it on its own reports why.
    pub fn read_chunks_ahead<T: Send>(
        &self,
        ids: &[ChunkId],
        each: impl Fn(ChunkId, Vec<u8>, Payload) -> T + Sync,
    ) -> Vec<T> {
        let ids: Vec<[u8; 32]> = ids.iter().map(|id| id.0).collect();
        self.read_grouped(&ids, |id, sealed, pack| {
            let (plain, payload) = self
                .open_blob_payload(BlobKind::Chunk, id, sealed, pack)
                .ok()?;
            Some(each(ChunkId(*id), plain, payload))
        })
    }

    /// Groups the blobs `ids` by pack, reads each pack's blobs in merged runs,
    /// several runs at once, and returns what `open` makes of each blob's
    /// sealed bytes. Blobs the index lacks, runs that cannot be read and blobs
    /// for which `open` returns `None` are left out.
    fn read_grouped<T: Send>(
        &self,
        ids: &[[u8; 32]],
        open: impl Fn(&[u8; 32], &[u8], &PackId) -> Option<T> + Sync,
    ) -> Vec<T> {
        use rayon::prelude::*;

        type PackBlobs = (PackId, Vec<([u8; 32], index::BlobLocation)>);
        let mut packs: Vec<PackBlobs> = Vec::new();
        {
            let index = self.index();
            let mut numbers: std::collections::HashMap<PackId, usize> = Default::default();
            for id in ids {
                let Some(location) = index.get(id) else {
                    continue;
                };
                let number = *numbers.entry(location.pack).or_insert_with(|| {
                    packs.push((location.pack, Vec::new()));
                    packs.len() - 1
                });
                packs[number].1.push((*id, location));
            }
        }
        let mut runs = Vec::new();
        for (pack, blobs) in &mut packs {
            blobs.sort_by_key(|(_, location)| location.offset);
            for run in read_runs(blobs, |(_, l)| (l.offset.into(), l.len.into())) {
                runs.push((*pack, run));
            }
        }
        self.read_pool().install(|| {
            runs.par_iter()
                .flat_map_iter(|(pack, run)| {
                    let start = u64::from(run[0].1.offset);
                    let last = &run[run.len() - 1].1;
                    let len = u64::from(last.offset) + u64::from(last.len) - start;
                    let bytes = match self.backend.read_at(&pack_path(pack), start, len as usize) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::debug!("reading ahead in pack {pack} failed: {e}");
                            return Vec::new();
                        }
                    };
                    run.iter()
                        .filter_map(|(id, location)| {
                            let at = (u64::from(location.offset) - start) as usize;
                            open(id, bytes.get(at..at + location.len as usize)?, pack)
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }

    /// Loads a directory tree, from a cache of recently used trees when possible.
    pub fn load_tree(&self, id: &TreeId) -> Result<Arc<Tree>, RepoError> {
        if let Some(tree) = self.trees.lock().expect("tree cache lock").get(id) {
            return Ok(tree.clone());
        }
        let tree = Arc::new(self.load_tree_uncached(id)?);
        self.trees
            .lock()
            .expect("tree cache lock")
            .put(*id, tree.clone());
        Ok(tree)
    }

    /// Lists snapshot ids in name order.
    pub fn list_snapshot_ids(&self) -> Result<Vec<SnapshotId>, RepoError> {
        Ok(self
            .backend
            .list("snapshots")?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect())
    }

    /// Reads, verifies and decrypts one snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, RepoError> {
        let object = format!("snapshot {}", id.short());
        let path = format!("snapshots/{id}");
        if self.backend.size(&path)? > MAX_SNAPSHOT_LEN as u64 {
            return Err(damaged(
                object,
                "larger than any snapshot file cairn writes",
            ));
        }
        let bytes = self.backend.read(&path)?;
        if *blake3::hash(&bytes).as_bytes() != id.0 {
            return Err(damaged(object, "its contents do not match its name"));
        }
        let plain = self
            .keys
            .open(ObjectKind::Snapshot, &[0; 32], &bytes, MAX_SNAPSHOT_LEN)
            .map_err(|e| damaged(object.clone(), e))?;
        Snapshot::decode(&plain).map_err(|e| damaged(object, e))
    }

    /// Loads every snapshot that can be read, oldest first, and logs a warning for
    /// each damaged one, so that one bad snapshot file does not stop listing,
    /// mounting or backing up. Commands that delete data use
    /// [`Repository::snapshots`], which fails instead.
    pub fn readable_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let mut all = Vec::new();
        for id in self.list_snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(snapshot) => all.push((id, snapshot)),
                Err(e @ RepoError::Damaged { .. }) => {
                    tracing::warn!("skipping {e}");
                }
                Err(e) => return Err(e),
            }
        }
        all.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(all)
    }

    /// Loads all snapshots, oldest first (ties broken by id); fails on the first
    /// damaged one.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let mut all = Vec::new();
        for id in self.list_snapshot_ids()? {
            all.push((id, self.load_snapshot(&id)?));
        }
        all.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(all)
    }

    /// Writes a snapshot; this is the commit point of a backup.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(SnapshotId, u64), RepoError> {
        let sealed = self
            .keys
            .seal(ObjectKind::Snapshot, &[0; 32], &snapshot.encode(), 3)
            .map_err(|e| damaged("new snapshot".into(), e))?;
        let id = SnapshotId(*blake3::hash(&sealed).as_bytes());
        self.write_file(&format!("snapshots/{id}"), &sealed)?;
        Ok((id, sealed.len() as u64))
    }

    /// Resolves a snapshot name: a full id, a unique id prefix, or `latest`.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot), RepoError> {
        if spec == "latest" {
            return self.readable_snapshots()?.pop().ok_or_else(|| {
                RepoError::SnapshotSpec(format!(
                    "no snapshot in {}: `latest` needs at least one backup",
                    self.location()
                ))
            });
        }
        let lower = spec.to_ascii_lowercase();
        let matches: Vec<SnapshotId> = self
            .list_snapshot_ids()?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id)?)),
            [] => Err(RepoError::SnapshotSpec(format!(
                "no snapshot matches {spec:?}: run `cairn snapshots` to list them"
            ))),
            _ => Err(RepoError::SnapshotSpec(format!(
                "{} snapshots start with {spec:?}: give more characters of the id",
                matches.len()
            ))),
        }
    }

    /// Starts writing blobs into new packs.
    pub fn blob_writer(&self) -> BlobWriter<'_> {
        BlobWriter::new(self)
    }
}

fn encode_config(config: &Config, keys: &Keys) -> Vec<u8> {
    let encoded = postcard::to_allocvec(config).expect("config encodes");
    let mut out = Vec::with_capacity(8 + encoded.len() + 32);
    out.extend_from_slice(CONFIG_MAGIC);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&keys.config_mac(&encoded));
    out
}

/// Decodes the config file's bytes and returns the settings and the stored MAC,
/// which the caller checks once the keys are known.
pub fn decode_config(bytes: &[u8], location: &str) -> Result<(Config, [u8; 32]), RepoError> {
    let object = format!("config of {location}");
    if bytes.len() < 8 + 32 + 1 || &bytes[..8] != CONFIG_MAGIC {
        return Err(damaged(
            object,
            "missing config magic; is this a cairn repository?",
        ));
    }
    let body = &bytes[8..bytes.len() - 32];
    let version: u32 = postcard::take_from_bytes::<u32>(body)
        .map_err(|e| damaged(object.clone(), e))?
        .0;
    if version != FORMAT_VERSION {
        return Err(RepoError::UnsupportedVersion {
            location: location.to_string(),
            found: version,
        });
    }
    let (config, rest): (Config, _) =
        postcard::take_from_bytes(body).map_err(|e| damaged(object.clone(), e))?;
    if !rest.is_empty() {
        return Err(damaged(object, "trailing bytes after the settings"));
    }
    if !(1..=22).contains(&config.compression_level) {
        return Err(damaged(
            object,
            format!(
                "compression level {} is outside 1 to 22",
                config.compression_level
            ),
        ));
    }
    let mac: [u8; 32] = bytes[bytes.len() - 32..].try_into().expect("32-byte slice");
    Ok((config, mac))
}

/// Returns the pack id of a path below `data/`, or `None` for other files.
/// Packs lie exactly one directory deep, in `data/<2 hex>/`.
fn pack_id_of(path: &str) -> Option<PackId> {
    let (_, name) = path.split_once('/')?;
    if name.contains('/') {
        return None;
    }
    name.parse().ok()
}
