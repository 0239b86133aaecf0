//! Key derivation and authenticated encryption of every stored object.
//!
//! A repository's secrets are its key material (see [`material`]): an identity
//! secret and one or more encryption epochs. Purpose-bound subkeys come from them
//! through `blake3::derive_key`: the chunk-id, tree-id and chunker keys from the
//! identity secret, and the encryption and config MAC keys from each epoch's
//! secret. The key material never leaves memory unwrapped.
//!
//! Every sealed object has one of two layouts (see `docs/format.md`). Objects
//! sealed under a symmetric key of an epoch:
//!
//! ```text
//! offset  size  field
//! 0       1     object format version (2)
//! 1       4     epoch number, u32 little endian: selects the epoch's keys
//! 5       16    salt: random, selects the per-object AES key
//! 21      12    nonce: random
//! 33      n+16  AES-256-GCM-SIV ciphertext of the payload, tag last
//! ```
//!
//! Chunks, trees and snapshots that a backup-only key writes are sealed to the
//! epoch's content public key instead, under a key agreed with an X25519 key
//! pair that the writing process makes once and never stores:
//!
//! ```text
//! offset  size  field
//! 0       1     object format version (3)
//! 1       4     epoch number, u32 little endian
//! 5       32    the writer's ephemeral X25519 public key
//! 37      16    salt
//! 53      12    nonce
//! 65      n+16  AES-256-GCM-SIV ciphertext of the payload, tag last
//! ```
//!
//! The payload starts with a compression byte (0 = stored, 1 = zstd).

mod material;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};

pub use self::material::{
    BackupOnlyEpoch, BackupOnlyMaterial, EpochSecret, KeyMaterial, MAX_EPOCHS, SealedMaterial,
    SlotMaterial, SlotSecret, generate_signing_key_pair, generate_slot_key_pair, open_material,
    seal_material, unwrap_slot_secret, wrap_slot_secret,
};

/// Version byte of an object sealed under a symmetric key.
pub const OBJECT_VERSION: u8 = 2;
/// Version byte of an object sealed to an epoch's content public key.
pub const PUBLIC_OBJECT_VERSION: u8 = 3;
/// Bytes before the ciphertext: version, epoch, salt and nonce.
pub const SEAL_HEADER_LEN: usize = 1 + 4 + 16 + 12;
/// Bytes before the ciphertext of an object sealed to a public key: the
/// header above and the ephemeral public key.
pub const PUBLIC_SEAL_HEADER_LEN: usize = SEAL_HEADER_LEN + 32;
/// Bytes of the authentication tag at the end of a sealed object.
const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its payload at most: header and tag.
pub const SEAL_OVERHEAD: usize = PUBLIC_SEAL_HEADER_LEN + TAG_LEN;
/// Most session keys of public-key objects that one [`Keys`] remembers.
const MAX_REMEMBERED_SESSIONS: usize = 4096;

/// Kind of a sealed object. It is part of the associated data, so an object of
/// one kind is never accepted as another. Chunks, trees, snapshots and audit
/// log entries hold content, names or paths and are sealed under the data and
/// metadata keys; the other kinds only name blobs and files, and are sealed
/// under the index key, which backup-only keys hold too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ObjectKind {
    /// A chunk of file content.
    Chunk = 1,
    /// A directory tree.
    Tree = 2,
    /// The encrypted header at the end of a pack.
    PackHeader = 3,
    /// An index file.
    Index = 4,
    /// A snapshot file.
    Snapshot = 5,
    /// Reserved for key material inside a key slot, which is sealed with its own
    /// binding instead (see `docs/format.md`, section 5).
    KeySlot = 6,
    /// A lock file.
    Lock = 7,
    /// An entry of the audit log.
    AuditEntry = 8,
}

/// Errors of sealing, opening and key handling.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, or the bytes were changed.
    #[error("authentication failed: the data was changed or belongs elsewhere")]
    Authentication,
    /// The object is shorter than its fixed header, or has an unknown version.
    #[error("malformed sealed object: {0}")]
    Malformed(String),
    /// Compression or decompression failed.
    #[error("compression failed: {0}")]
    Compression(String),
    /// The key derivation function rejected its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The object names an epoch that the key material does not contain, as
    /// when it was written after a rotation that this material predates.
    #[error("sealed under key epoch {0}, which the key material does not contain")]
    UnknownEpoch(u32),
    /// A backup-only key was asked to open content, which only full keys can.
    #[error(
        "a backup-only key cannot open stored {0}: only a full key holds the keys that decrypt it"
    )]
    BackupOnly(&'static str),
}

impl ObjectKind {
    /// Returns true for the kinds that hold file content, names or paths:
    /// chunks, trees, snapshots and audit log entries.
    pub fn holds_content(self) -> bool {
        matches!(
            self,
            ObjectKind::Chunk | ObjectKind::Tree | ObjectKind::Snapshot | ObjectKind::AuditEntry
        )
    }

    fn noun(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "file content",
            ObjectKind::Tree => "directory trees",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::AuditEntry => "audit log entries",
            _ => "objects",
        }
    }
}

/// The keys of one epoch.
#[derive(Clone)]
struct EpochKeys {
    epoch: u32,
    /// Seals index files, pack headers, locks and audit log entries.
    index: [u8; 32],
    /// X25519 public key to which backup-only keys seal content.
    content_public: [u8; 32],
    /// The keys that open content; `None` for a backup-only key.
    content: Option<ContentKeys>,
}

/// The keys of one epoch that only full keys hold.
#[derive(Clone)]
struct ContentKeys {
    data: [u8; 32],
    metadata: [u8; 32],
    /// X25519 private key of `content_public`.
    private: [u8; 32],
}

/// Session keys by epoch and the writer's ephemeral public key.
type SessionCache = HashMap<(u32, [u8; 32]), [u8; 32]>;

/// The key under which a backup-only process seals its content: agreed between
/// an ephemeral X25519 key pair, whose private key is dropped at once, and the
/// newest epoch's content public key.
struct SealSession {
    epoch: u32,
    ephemeral: [u8; 32],
    key: [u8; 32],
}

/// The subkeys of a repository, derived from its key material or from a
/// backup-only key's material. `Debug` is redacted.
#[derive(Clone)]
pub struct Keys {
    /// Repository id, bound into every object's associated data.
    pub repo_id: [u8; 16],
    chunk_id: [u8; 32],
    tree_id: [u8; 32],
    chunker: [u8; 32],
    config_mac: [u8; 32],
    /// One entry per epoch, in ascending order. The last one seals.
    epochs: Vec<EpochKeys>,
    /// Set for a backup-only key: the session that seals its content.
    session: Option<Arc<SealSession>>,
    /// Session keys of public-key objects opened so far, by epoch and
    /// ephemeral public key, so that each writer costs one key agreement.
    sessions: Arc<Mutex<SessionCache>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keys(repo {}, epoch {}{}, <redacted>)",
            hex::encode(self.repo_id),
            self.current_epoch(),
            if self.is_backup_only() {
                ", backup-only"
            } else {
                ""
            }
        )
    }
}

impl Keys {
    /// Derives all subkeys from validated key material.
    pub fn derive(repo_id: [u8; 16], material: &KeyMaterial) -> Self {
        let identity = |context: &str| blake3::derive_key(context, &material.identity);
        let epochs = material
            .epochs
            .iter()
            .map(|epoch| {
                let derive = |context: &str| blake3::derive_key(context, &epoch.secret);
                EpochKeys {
                    epoch: epoch.epoch,
                    index: derive(material::INDEX_KEY_CONTEXT),
                    content_public: epoch.content_public(),
                    content: Some(ContentKeys {
                        data: derive("cairn 2026-12 v2 chunk encryption"),
                        metadata: derive("cairn 2026-12 v2 metadata encryption"),
                        private: epoch.content_private(),
                    }),
                }
            })
            .collect();
        Self {
            repo_id,
            chunk_id: identity("cairn 2026-12 v2 chunk id"),
            tree_id: identity("cairn 2026-12 v2 tree id"),
            chunker: identity("cairn 2026-12 v2 chunker gear table"),
            config_mac: blake3::derive_key(
                material::CONFIG_MAC_CONTEXT,
                &material.epochs[0].secret,
            ),
            epochs,
            session: None,
            sessions: Arc::default(),
        }
    }

    /// Derives the subkeys of a backup-only key, and starts the session that
    /// seals its content to the newest epoch's content public key.
    pub fn derive_backup_only(
        repo_id: [u8; 16],
        material: &BackupOnlyMaterial,
    ) -> Result<Self, CryptoError> {
        let identity = |context: &str| blake3::derive_key(context, &material.identity);
        let epochs: Vec<EpochKeys> = material
            .epochs
            .iter()
            .map(|epoch| EpochKeys {
                epoch: epoch.epoch,
                index: epoch.index,
                content_public: epoch.content_public,
                content: None,
            })
            .collect();
        let newest = epochs.last().ok_or_else(|| {
            CryptoError::Malformed("backup-only key material without an epoch".into())
        })?;
        let ephemeral_secret = StaticSecret::from(material::random_secret());
        let ephemeral = PublicKey::from(&ephemeral_secret).to_bytes();
        let shared = ephemeral_secret.diffie_hellman(&PublicKey::from(newest.content_public));
        let key = session_key(&shared, &ephemeral, &newest.content_public, newest.epoch)?;
        let session = SealSession {
            epoch: newest.epoch,
            ephemeral,
            key,
        };
        Ok(Self {
            repo_id,
            chunk_id: identity("cairn 2026-12 v2 chunk id"),
            tree_id: identity("cairn 2026-12 v2 tree id"),
            chunker: identity("cairn 2026-12 v2 chunker gear table"),
            config_mac: material.config_mac,
            epochs,
            session: Some(Arc::new(session)),
            sessions: Arc::default(),
        })
    }

    /// Returns true for the keys of a backup-only key slot, which seal new
    /// content but open none.
    pub fn is_backup_only(&self) -> bool {
        self.session.is_some()
    }

    /// Returns the epoch that seals new objects.
    pub fn current_epoch(&self) -> u32 {
        self.current().epoch
    }

    fn current(&self) -> &EpochKeys {
        self.epochs.last().expect("key material has an epoch")
    }

    fn epoch(&self, epoch: u32) -> Result<&EpochKeys, CryptoError> {
        self.epochs
            .binary_search_by_key(&epoch, |keys| keys.epoch)
            .map(|position| &self.epochs[position])
            .map_err(|_| CryptoError::UnknownEpoch(epoch))
    }

    /// Returns true when both keys come from the same identity secret, so that
    /// the same content has the same chunk and tree ids under both.
    pub fn same_identity(&self, other: &Keys) -> bool {
        self.chunk_id == other.chunk_id
            && self.tree_id == other.tree_id
            && self.chunker == other.chunker
    }

    /// Computes the id of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> crate::id::ChunkId {
        crate::id::ChunkId(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    /// Computes the id of an encoded tree: keyed BLAKE3 under a key of its own.
    pub fn tree_id(&self, encoded: &[u8]) -> crate::id::TreeId {
        crate::id::TreeId(*blake3::keyed_hash(&self.tree_id, encoded).as_bytes())
    }

    /// Computes the MAC that authenticates the repository config, under the
    /// config MAC key of the oldest epoch. `init` writes the config with its only
    /// epoch, and no epoch is ever removed, so later epochs do not change it.
    pub fn config_mac(&self, encoded: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.config_mac, encoded).as_bytes()
    }

    /// Fills a 256-entry gear table for the chunker from the chunker key, so that
    /// cut points depend on a secret.
    pub fn gear_table(&self) -> Vec<u64> {
        let mut reader = blake3::Hasher::new_keyed(&self.chunker).finalize_xof();
        let mut bytes = [0u8; 256 * 8];
        reader.fill(&mut bytes);
        bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte slice")))
            .collect()
    }

    /// Compresses (when that helps) and encrypts a payload under the newest
    /// epoch.
    ///
    /// `id` is bound into the associated data: pass the content id for chunks and
    /// trees, and all zeros for objects whose file name is the hash of their bytes.
    pub fn seal(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        plaintext: &[u8],
        compression_level: i32,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.seal_into(kind, id, plaintext, compression_level, &mut out)?;
        Ok(out)
    }

    /// Seals like [`Keys::seal`], but writes the sealed object into `out` and
    /// replaces its contents. A caller that passes the same buffer for many
    /// objects saves an allocation per object, and the payload is compressed
    /// and encrypted in place instead of being copied between buffers.
    pub fn seal_into(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        plaintext: &[u8],
        compression_level: i32,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.seal_body(kind, id, plaintext.len(), out, |body| {
            // The room is one byte short of the plaintext, so zstd fails
            // unless the compressed form is strictly shorter.
            let compressed_len = if compression_level > 0 && plaintext.len() > 64 {
                compress_into(
                    plaintext,
                    compression_level,
                    &mut body[..plaintext.len() - 1],
                )
            } else {
                None
            };
            match compressed_len {
                Some(len) => (1, len),
                None => {
                    body[..plaintext.len()].copy_from_slice(plaintext);
                    (0, plaintext.len())
                }
            }
        })
    }

    /// Seals a payload that [`Keys::open_payload`] returned, as it is, under the
    /// newest epoch. A copy to another repository uses it to keep the source's
    /// compression instead of compressing every blob again.
    pub fn seal_payload(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        payload: &Payload,
    ) -> Result<Vec<u8>, CryptoError> {
        let (flag, body) = (payload.0[0], &payload.0[1..]);
        let mut out = Vec::new();
        self.seal_body(kind, id, body.len(), &mut out, |room| {
            room[..body.len()].copy_from_slice(body);
            (flag, body.len())
        })?;
        Ok(out)
    }

    /// Writes a sealed object into `out`: the header, then the compression byte
    /// and body that `fill` writes into room for `max_body` bytes and returns,
    /// encrypted, then the tag.
    fn seal_body(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        max_body: usize,
        out: &mut Vec<u8>,
        fill: impl FnOnce(&mut [u8]) -> (u8, usize),
    ) -> Result<(), CryptoError> {
        let current = self.current();
        let (version, epoch, ephemeral, key) = match (&self.session, kind.holds_content()) {
            (Some(session), true) => (
                PUBLIC_OBJECT_VERSION,
                session.epoch,
                Some(session.ephemeral),
                &session.key,
            ),
            _ => (
                OBJECT_VERSION,
                current.epoch,
                None,
                current.symmetric_key(kind)?,
            ),
        };
        let header_len = if ephemeral.is_some() {
            PUBLIC_SEAL_HEADER_LEN
        } else {
            SEAL_HEADER_LEN
        };
        let body_start = header_len + 1;
        // Every byte up to the final length is written below, so `resize` only
        // zeroes the part of a reused buffer that grows.
        out.resize(body_start + max_body + TAG_LEN, 0);

        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        let mut rng = rand::rng();
        rng.fill(&mut salt);
        rng.fill(&mut nonce);
        out[0] = version;
        out[1..5].copy_from_slice(&epoch.to_le_bytes());
        if let Some(ephemeral) = ephemeral {
            out[5..37].copy_from_slice(&ephemeral);
        }
        out[header_len - 28..header_len - 12].copy_from_slice(&salt);
        out[header_len - 12..header_len].copy_from_slice(&nonce);

        let (flag, body_len) = fill(&mut out[body_start..body_start + max_body]);
        out[header_len] = flag;
        let payload_end = body_start + body_len;

        // Each object gets its own key from a random salt, and GCM-SIV stays
        // safe if a nonce ever repeats, so no nonce counter has to be kept.
        let cipher = object_cipher(key, &salt);
        let aad = self.associated_data(kind, id, version, epoch);
        let tag = cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &aad,
                (&mut out[header_len..payload_end]).into(),
            )
            .map_err(|_| CryptoError::Malformed("payload too large to encrypt".into()))?;
        out.truncate(payload_end);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts and decompresses a sealed object with the keys of the epoch
    /// named in its header.
    ///
    /// `max_len` bounds the decompressed size, so that a damaged object cannot make
    /// the reader allocate without limit.
    pub fn open(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        sealed: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_payload(kind, id, sealed)?.into_plaintext(max_len)
    }

    /// Decrypts a sealed object like [`Keys::open`] and returns its payload
    /// still compressed.
    pub fn open_payload(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        sealed: &[u8],
    ) -> Result<Payload, CryptoError> {
        let header_len = match sealed.first() {
            Some(&OBJECT_VERSION) => SEAL_HEADER_LEN,
            Some(&PUBLIC_OBJECT_VERSION) => PUBLIC_SEAL_HEADER_LEN,
            Some(other) => {
                return Err(CryptoError::Malformed(format!(
                    "unknown object version {other}"
                )));
            }
            None => return Err(CryptoError::Malformed("empty object".into())),
        };
        if sealed.len() < header_len + 16 + 1 {
            return Err(CryptoError::Malformed(format!(
                "{} bytes is shorter than the {} byte minimum",
                sealed.len(),
                header_len + 16 + 1
            )));
        }
        let version = sealed[0];
        let epoch = sealed_epoch(sealed).expect("length checked above");
        let keys = self.epoch(epoch)?;
        let session;
        let key = if version == PUBLIC_OBJECT_VERSION {
            if !kind.holds_content() {
                return Err(CryptoError::Malformed(format!(
                    "a {kind:?} object sealed to a public key"
                )));
            }
            let ephemeral: [u8; 32] = sealed[5..37].try_into().expect("32-byte slice");
            session = self.open_session(keys, kind, ephemeral)?;
            &session
        } else {
            keys.symmetric_key(kind)?
        };
        let salt: [u8; 16] = sealed[header_len - 28..header_len - 12]
            .try_into()
            .expect("16-byte slice");
        let nonce: [u8; 12] = sealed[header_len - 12..header_len]
            .try_into()
            .expect("12-byte slice");
        let mut payload = sealed[header_len..].to_vec();

        let cipher = object_cipher(key, &salt);
        let aad = self.associated_data(kind, id, version, epoch);
        cipher
            .decrypt_in_place(&Nonce::from(nonce), &aad, &mut payload)
            .map_err(|_| CryptoError::Authentication)?;
        match payload.first() {
            Some(0 | 1) => Ok(Payload(payload)),
            Some(other) => Err(CryptoError::Malformed(format!(
                "unknown compression byte {other}"
            ))),
            None => Err(CryptoError::Malformed("empty payload".into())),
        }
    }

    /// Returns the session key of an object sealed to `keys`' content public
    /// key by the writer whose ephemeral public key is `ephemeral`.
    fn open_session(
        &self,
        keys: &EpochKeys,
        kind: ObjectKind,
        ephemeral: [u8; 32],
    ) -> Result<[u8; 32], CryptoError> {
        let content = keys
            .content
            .as_ref()
            .ok_or(CryptoError::BackupOnly(kind.noun()))?;
        let mut sessions = self.sessions.lock().expect("session cache lock");
        if let Some(key) = sessions.get(&(keys.epoch, ephemeral)) {
            return Ok(*key);
        }
        let shared =
            StaticSecret::from(content.private).diffie_hellman(&PublicKey::from(ephemeral));
        let key = session_key(&shared, &ephemeral, &keys.content_public, keys.epoch)?;
        if sessions.len() >= MAX_REMEMBERED_SESSIONS {
            sessions.clear();
        }
        sessions.insert((keys.epoch, ephemeral), key);
        Ok(key)
    }

    fn associated_data(&self, kind: ObjectKind, id: &[u8; 32], version: u8, epoch: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(5 + 16 + 1 + 32 + 1 + 4);
        aad.extend_from_slice(b"cairn");
        aad.extend_from_slice(&self.repo_id);
        aad.push(kind as u8);
        aad.extend_from_slice(id);
        aad.push(version);
        aad.extend_from_slice(&epoch.to_le_bytes());
        aad
    }
}

/// The decrypted payload of a sealed object: a compression byte, 0 for stored
/// and 1 for zstd, then the body.
pub struct Payload(Vec<u8>);

impl Payload {
    /// Returns the plaintext, decompressing the body if needed; `max_len`
    /// bounds its size, so that a damaged object cannot make the reader
    /// allocate without limit.
    pub fn plaintext(&self, max_len: usize) -> Result<Vec<u8>, CryptoError> {
        if self.0[0] == 1 {
            return decompress_bounded(&self.0[1..], max_len);
        }
        check_stored_len(self.0.len() - 1, max_len)?;
        Ok(self.0[1..].to_vec())
    }

    /// Returns the plaintext like [`Payload::plaintext`], reusing the
    /// payload's buffer for a stored body.
    pub fn into_plaintext(mut self, max_len: usize) -> Result<Vec<u8>, CryptoError> {
        if self.0[0] == 1 {
            return decompress_bounded(&self.0[1..], max_len);
        }
        check_stored_len(self.0.len() - 1, max_len)?;
        self.0.remove(0);
        Ok(self.0)
    }
}

fn check_stored_len(len: usize, max_len: usize) -> Result<(), CryptoError> {
    if len > max_len {
        return Err(CryptoError::Malformed(format!(
            "payload of {len} bytes exceeds the {max_len} byte limit"
        )));
    }
    Ok(())
}

impl EpochKeys {
    /// Returns the symmetric key that seals objects of `kind`, or an error for
    /// content when only the index key is held.
    fn symmetric_key(&self, kind: ObjectKind) -> Result<&[u8; 32], CryptoError> {
        if !kind.holds_content() {
            return Ok(&self.index);
        }
        let content = self
            .content
            .as_ref()
            .ok_or(CryptoError::BackupOnly(kind.noun()))?;
        Ok(match kind {
            ObjectKind::Chunk => &content.data,
            _ => &content.metadata,
        })
    }
}

/// Derives the key of a public-key seal from the X25519 shared secret, both
/// public keys and the epoch, and rejects a shared secret that a low-order
/// point forced.
fn session_key(
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; 32],
    content_public: &[u8; 32],
    epoch: u32,
) -> Result<[u8; 32], CryptoError> {
    if !shared.was_contributory() {
        return Err(CryptoError::Authentication);
    }
    let mut hasher =
        blake3::Hasher::new_derive_key("cairn 2026-12 v4 content sealed to a public key");
    hasher.update(shared.as_bytes());
    hasher.update(ephemeral);
    hasher.update(content_public);
    hasher.update(&epoch.to_le_bytes());
    Ok(*hasher.finalize().as_bytes())
}

/// Returns the epoch number in a sealed object's header, or `None` when the bytes
/// are too short to hold a header.
pub fn sealed_epoch(sealed: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = sealed.get(1..5)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

thread_local! {
    /// One zstd context per thread and level: creating a context clears several
    /// hundred kilobytes of tables, which dominates the cost for small chunks.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `plaintext` with zstd into `out` and returns the compressed
/// length, or `None` when the data looks incompressible, compression fails or
/// the result does not fit in `out`.
fn compress_into(plaintext: &[u8], level: i32, out: &mut [u8]) -> Option<usize> {
    if !looks_compressible(plaintext) {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((l, _)) if *l == level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = slot.as_mut()?;
        compressor.compress_to_buffer(plaintext, out).ok()
    })
}

/// Inputs shorter than this skip the sample test and are always compressed, so
/// small files such as most source files keep their compression.
const SAMPLE_MIN_INPUT: usize = 128 << 10;
/// Number and length of the samples that [`looks_compressible`] tries.
const SAMPLE_COUNT: usize = 8;
const SAMPLE_LEN: usize = 8 << 10;
/// A sample counts as compressible when zstd level 1 saves at least this many
/// hundredths of its size.
const SAMPLE_MIN_SAVING_PERCENT: usize = 3;

thread_local! {
    /// zstd level 1 context and output buffer for the samples.
    static SAMPLER: std::cell::RefCell<Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Returns false when zstd is unlikely to shrink `plaintext`, because each of
/// [`SAMPLE_COUNT`] samples spread evenly over it saves less than
/// [`SAMPLE_MIN_SAVING_PERCENT`] percent at zstd level 1. One compressible
/// sample is enough to return true, so data that is only partly compressible
/// is still compressed.
///
/// zstd level 3 still scans incompressible input for matches, at about 3 GB/s
/// on one core of the benchmark machine in `docs/benchmarks.md` (`zstd -b3` on
/// 500 MiB of random bytes). For such input the samples cover 64 KiB, a
/// sixteenth of an average chunk. For compressible input the first 8 KiB
/// sample usually decides.
fn looks_compressible(plaintext: &[u8]) -> bool {
    if plaintext.len() < SAMPLE_MIN_INPUT {
        return true;
    }
    SAMPLER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let Ok(compressor) = zstd::bulk::Compressor::new(1) else {
                return true;
            };
            *slot = Some((compressor, vec![0; SAMPLE_LEN]));
        }
        let Some((compressor, scratch)) = slot.as_mut() else {
            return true;
        };
        let room = SAMPLE_LEN - SAMPLE_LEN * SAMPLE_MIN_SAVING_PERCENT / 100;
        let stride = (plaintext.len() - SAMPLE_LEN) / (SAMPLE_COUNT - 1);
        (0..SAMPLE_COUNT).any(|i| {
            let sample = &plaintext[i * stride..i * stride + SAMPLE_LEN];
            // zstd fails as soon as its output outgrows `room`.
            compressor
                .compress_to_buffer(sample, &mut scratch[..room])
                .is_ok()
        })
    })
}

fn object_cipher(key: &[u8; 32], salt: &[u8; 16]) -> Aes256GcmSiv {
    let object_key = blake3::keyed_hash(key, salt);
    Aes256GcmSiv::new_from_slice(object_key.as_bytes()).expect("32-byte key")
}

thread_local! {
    /// One zstd decompression context per thread: creating one clears its
    /// tables, which cost as much as decompressing a small chunk.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses zstd data, failing once the output would exceed `max_len` bytes.
///
/// Frames that state their decompressed size, as every frame cairn writes does,
/// go through a context kept per thread into a buffer of that size. Other
/// frames are streamed.
pub fn decompress_bounded(input: &[u8], max_len: usize) -> Result<Vec<u8>, CryptoError> {
    use std::io::Read;

    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(input) {
        if size > max_len as u64 {
            return Err(CryptoError::Malformed(format!(
                "decompressed size {size} exceeds the {max_len} byte limit"
            )));
        }
        let mut out = Vec::with_capacity(size as usize);
        let written = DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let decompressor = match &mut *slot {
                Some(decompressor) => decompressor,
                empty => empty.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress_to_buffer(input, &mut out)
        });
        return match written {
            Ok(n) if n as u64 == size => Ok(out),
            Ok(n) => Err(CryptoError::Malformed(format!(
                "{n} bytes decompressed where the frame states {size}"
            ))),
            Err(e) => Err(CryptoError::Compression(e.to_string())),
        };
    }

    let decoder = zstd::stream::read::Decoder::new(input)
        .map_err(|e| CryptoError::Compression(e.to_string()))?;
    let mut out = Vec::new();
    let read = decoder
        .take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CryptoError::Compression(e.to_string()))?;
    if read > max_len {
        return Err(CryptoError::Malformed(format!(
            "decompressed size exceeds the {max_len} byte limit"
        )));
    }
    Ok(out)
}

/// Argon2id parameters of one key slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl KdfParams {
    /// Parameters for new slots: 64 MiB, 3 passes, 4 lanes, which takes about a
    /// quarter of a second on one modern core and makes guessing expensive.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    /// Upper bounds accepted when reading a key file, so that a forged slot cannot
    /// make `open` allocate many gigabytes.
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_PARALLELISM: u32 = 64;

    /// Derives the 32-byte key-encryption key from a password and salt.
    pub fn derive(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32], CryptoError> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(CryptoError::Kdf(format!(
                "parameters out of range: {} KiB, {} passes",
                self.memory_kib, self.iterations
            )));
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(password, salt, &mut out)
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive([7; 16], &KeyMaterial::generate())
    }

    #[test]
    fn seal_open_round_trip() {
        let keys = keys();
        let data = b"hello hello hello hello hello hello hello hello hello hello hello hello";
        let id = keys.chunk_id(data);
        let sealed = keys.seal(ObjectKind::Chunk, &id.0, data, 3).unwrap();
        let opened = keys
            .open(ObjectKind::Chunk, &id.0, &sealed, 1 << 20)
            .unwrap();
        assert_eq!(opened, data);
    }

    #[test]
    fn resealed_payload_keeps_compression() {
        let source = keys();
        let dest = keys();
        let compressible = b"a line that repeats\n".repeat(500);
        let mut random = vec![0u8; 10_000];
        rand::rng().fill(&mut random[..]);
        for (name, plain) in [("compressible", compressible), ("random", random)] {
            let id = [9; 32];
            let sealed = source.seal(ObjectKind::Chunk, &id, &plain, 3).unwrap();
            let payload = source
                .open_payload(ObjectKind::Chunk, &id, &sealed)
                .unwrap();
            assert_eq!(payload.plaintext(1 << 20).unwrap(), plain, "{name}");
            let resealed = dest.seal_payload(ObjectKind::Chunk, &id, &payload).unwrap();
            assert_eq!(resealed.len(), sealed.len(), "{name}: body sealed as it is");
            let opened = dest.open(ObjectKind::Chunk, &id, &resealed, 1 << 20);
            assert_eq!(opened.unwrap(), plain, "{name}");
            let wrong_keys = source.open(ObjectKind::Chunk, &id, &resealed, 1 << 20);
            assert!(
                wrong_keys.is_err(),
                "{name}: the source's keys open the copy"
            );
        }
    }

    #[test]
    fn seal_hides_plaintext() {
        let keys = keys();
        let data = b"a line of plain text that must not appear";
        let sealed = keys.seal(ObjectKind::Chunk, &[0; 32], data, 0).unwrap();
        assert!(!sealed.windows(data.len()).any(|w| w == data));
    }

    #[test]
    fn open_rejects_flipped_byte() {
        let keys = keys();
        let sealed = keys
            .seal(ObjectKind::Tree, &[1; 32], b"tree bytes", 3)
            .unwrap();
        for position in [0, 5, 20, SEAL_HEADER_LEN + 2, sealed.len() - 1] {
            let mut damaged = sealed.clone();
            damaged[position] ^= 0x40;
            assert!(
                keys.open(ObjectKind::Tree, &[1; 32], &damaged, 1 << 20)
                    .is_err()
            );
        }
    }

    #[test]
    fn open_rejects_other_kind_or_id() {
        let keys = keys();
        let sealed = keys
            .seal(ObjectKind::Tree, &[1; 32], b"tree bytes", 3)
            .unwrap();
        assert!(
            keys.open(ObjectKind::Snapshot, &[1; 32], &sealed, 1 << 20)
                .is_err()
        );
        assert!(
            keys.open(ObjectKind::Tree, &[2; 32], &sealed, 1 << 20)
                .is_err()
        );
    }

    #[test]
    fn open_rejects_wrong_key() {
        let sealed = keys()
            .seal(ObjectKind::Chunk, &[0; 32], b"secret", 0)
            .unwrap();
        assert!(matches!(
            keys().open(ObjectKind::Chunk, &[0; 32], &sealed, 1 << 20),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn open_bounds_decompressed_size() {
        let keys = keys();
        let data = vec![0u8; 1 << 20];
        let sealed = keys.seal(ObjectKind::Chunk, &[0; 32], &data, 3).unwrap();
        assert!(
            keys.open(ObjectKind::Chunk, &[0; 32], &sealed, 1000)
                .is_err()
        );
    }

    #[test]
    fn decompression_checks_both_kinds_of_frame() {
        let texts: Vec<Vec<u8>> = (1..=4).map(|n| b"cairn ".repeat(1000 * n)).collect();
        // The context kept per thread serves frames of different sizes in turn.
        for text in texts.iter().chain(texts.iter().rev()) {
            let sized = zstd::bulk::compress(text, 3).unwrap();
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&sized).unwrap(),
                Some(text.len() as u64)
            );
            assert_eq!(&decompress_bounded(&sized, text.len()).unwrap(), text);
            assert!(decompress_bounded(&sized, text.len() - 1).is_err());

            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            std::io::Write::write_all(&mut encoder, text).unwrap();
            let streamed = encoder.finish().unwrap();
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
                None
            );
            assert_eq!(&decompress_bounded(&streamed, text.len()).unwrap(), text);
            assert!(decompress_bounded(&streamed, text.len() - 1).is_err());
        }
        let sized = zstd::bulk::compress(&texts[0], 3).unwrap();
        assert!(decompress_bounded(&sized[..sized.len() - 1], 1 << 20).is_err());
    }

    #[test]
    fn open_uses_epoch_of_header() {
        let mut material = KeyMaterial::generate();
        let old = Keys::derive([7; 16], &material);
        let before = old
            .seal(ObjectKind::Snapshot, &[0; 32], b"before", 0)
            .unwrap();
        material.add_epoch().unwrap();
        let new = Keys::derive([7; 16], &material);
        let after = new
            .seal(ObjectKind::Snapshot, &[0; 32], b"after", 0)
            .unwrap();

        assert_eq!(sealed_epoch(&before), Some(0));
        assert_eq!(sealed_epoch(&after), Some(1));
        let opened = new
            .open(ObjectKind::Snapshot, &[0; 32], &before, 100)
            .unwrap();
        assert_eq!(opened, b"before");
        assert!(matches!(
            old.open(ObjectKind::Snapshot, &[0; 32], &after, 100),
            Err(CryptoError::UnknownEpoch(1))
        ));
    }

    #[test]
    fn open_rejects_changed_epoch() {
        let mut material = KeyMaterial::generate();
        material.add_epoch().unwrap();
        let keys = Keys::derive([7; 16], &material);
        let mut sealed = keys.seal(ObjectKind::Tree, &[1; 32], b"tree", 0).unwrap();
        sealed[1] = 0;
        assert!(matches!(
            keys.open(ObjectKind::Tree, &[1; 32], &sealed, 100),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn identity_decides_ids_not_epochs() {
        let a = KeyMaterial::generate();
        let b = KeyMaterial::with_identity(a.identity);
        let a = Keys::derive([1; 16], &a);
        let b = Keys::derive([2; 16], &b);
        assert!(a.same_identity(&b));
        assert_eq!(a.chunk_id(b"data"), b.chunk_id(b"data"));
        assert_eq!(a.gear_table(), b.gear_table());
        let sealed = a.seal(ObjectKind::Chunk, &[0; 32], b"data", 0).unwrap();
        assert!(b.open(ObjectKind::Chunk, &[0; 32], &sealed, 100).is_err());
        assert!(!a.same_identity(&keys()));
    }

    #[test]
    fn backup_only_keys_seal_content_that_only_full_keys_open() {
        let mut material = KeyMaterial::generate();
        material.add_epoch().unwrap();
        let full = Keys::derive([7; 16], &material);
        let writer = Keys::derive_backup_only([7; 16], &material.backup_only()).unwrap();
        assert!(writer.is_backup_only() && !full.is_backup_only());
        assert_eq!(writer.chunk_id(b"data"), full.chunk_id(b"data"));
        assert_eq!(writer.config_mac(b"config"), full.config_mac(b"config"));

        let data = b"file content that the writer must not read back again";
        let id = writer.chunk_id(data);
        let sealed = writer.seal(ObjectKind::Chunk, &id.0, data, 3).unwrap();
        assert_eq!(sealed[0], PUBLIC_OBJECT_VERSION);
        assert_eq!(sealed_epoch(&sealed), Some(1));
        assert_eq!(
            full.open(ObjectKind::Chunk, &id.0, &sealed, 1 << 20)
                .unwrap(),
            data
        );
        assert!(matches!(
            writer.open(ObjectKind::Chunk, &id.0, &sealed, 1 << 20),
            Err(CryptoError::BackupOnly(_))
        ));
        let by_full = full.seal(ObjectKind::Tree, &[1; 32], b"tree", 0).unwrap();
        assert_eq!(by_full[0], OBJECT_VERSION);
        assert!(matches!(
            writer.open(ObjectKind::Tree, &[1; 32], &by_full, 100),
            Err(CryptoError::BackupOnly(_))
        ));

        // Index kinds stay symmetric under the index key, which both hold.
        let index = writer
            .seal(ObjectKind::Index, &[0; 32], b"index", 0)
            .unwrap();
        assert_eq!(index[0], OBJECT_VERSION);
        assert_eq!(
            full.open(ObjectKind::Index, &[0; 32], &index, 100).unwrap(),
            b"index"
        );
        let index = full.seal(ObjectKind::Index, &[0; 32], b"index", 0).unwrap();
        assert_eq!(
            writer
                .open(ObjectKind::Index, &[0; 32], &index, 100)
                .unwrap(),
            b"index"
        );
    }

    #[test]
    fn public_key_objects_reject_changed_ephemeral_and_kind() {
        let material = KeyMaterial::generate();
        let full = Keys::derive([7; 16], &material);
        let writer = Keys::derive_backup_only([7; 16], &material.backup_only()).unwrap();
        let sealed = writer
            .seal(ObjectKind::Snapshot, &[0; 32], b"snapshot", 0)
            .unwrap();
        assert!(
            full.open(ObjectKind::Snapshot, &[0; 32], &sealed, 100)
                .is_ok()
        );
        for position in [5, 36, 40, sealed.len() - 1] {
            let mut damaged = sealed.clone();
            damaged[position] ^= 1;
            assert!(
                full.open(ObjectKind::Snapshot, &[0; 32], &damaged, 100)
                    .is_err()
            );
        }
        // An ephemeral key of all zeros is a low-order point.
        let mut low_order = sealed.clone();
        low_order[5..37].fill(0);
        assert!(matches!(
            full.open(ObjectKind::Snapshot, &[0; 32], &low_order, 100),
            Err(CryptoError::Authentication)
        ));
        let mut as_lock = sealed.clone();
        as_lock[0] = PUBLIC_OBJECT_VERSION;
        assert!(
            full.open(ObjectKind::Lock, &[0; 32], &as_lock, 100)
                .is_err()
        );
    }

    #[test]
    fn seal_into_reuses_one_buffer_for_both_header_layouts() {
        let material = KeyMaterial::generate();
        let full = Keys::derive([7; 16], &material);
        let writer = Keys::derive_backup_only([7; 16], &material.backup_only()).unwrap();
        let compressible = vec![b'a'; 300 << 10];
        let mut random = vec![0u8; 300 << 10];
        rand::rng().fill(&mut random[..]);
        let mut out = Vec::new();
        // Long objects first, so that the short ones that follow must drop the
        // stale bytes left in the buffer.
        for (keys, kind, data) in [
            (&writer, ObjectKind::Chunk, &random[..]),
            (&full, ObjectKind::Chunk, &random[..]),
            (&writer, ObjectKind::Chunk, &compressible[..]),
            (&writer, ObjectKind::Index, &b"index entries"[..]),
            (&full, ObjectKind::Tree, &compressible[..1000]),
            (&writer, ObjectKind::Snapshot, &random[..65]),
        ] {
            keys.seal_into(kind, &[3; 32], data, 3, &mut out).unwrap();
            assert_eq!(full.open(kind, &[3; 32], &out, 1 << 20).unwrap(), data);
        }
        // The random chunk is stored, the repeated bytes are compressed.
        writer
            .seal_into(ObjectKind::Chunk, &[3; 32], &random, 3, &mut out)
            .unwrap();
        assert_eq!(out.len(), random.len() + 1 + SEAL_OVERHEAD);
        writer
            .seal_into(ObjectKind::Chunk, &[3; 32], &compressible, 3, &mut out)
            .unwrap();
        assert!(out.len() < 1000);
    }

    #[test]
    fn gear_table_depends_on_key() {
        assert_ne!(keys().gear_table(), keys().gear_table());
        assert_eq!(keys().gear_table().len(), 256);
    }
}
