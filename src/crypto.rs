//! Key derivation and authenticated encryption of every stored object.
//!
//! A repository's secrets are its key material (see [`material`]): an identity
//! secret and one or more encryption epochs. Purpose-bound subkeys come from them
//! through `blake3::derive_key`: the chunk-id, tree-id and chunker keys from the
//! identity secret, and the encryption and config MAC keys from each epoch's
//! secret. The key material never leaves memory unwrapped.
//!
//! Every sealed object has this layout (see `docs/format.md`):
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
//! The payload starts with a compression byte (0 = stored, 1 = zstd).

mod material;

use std::fmt;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::material::{
    EpochSecret, KeyMaterial, MAX_EPOCHS, SealedMaterial, SlotSecret, generate_signing_key_pair,
    generate_slot_key_pair, open_material, seal_material, unwrap_slot_secret, wrap_slot_secret,
};

/// Version byte at the start of every sealed object.
pub const OBJECT_VERSION: u8 = 2;
/// Bytes before the ciphertext: version, epoch, salt and nonce.
pub const SEAL_HEADER_LEN: usize = 1 + 4 + 16 + 12;
/// Bytes of the authentication tag at the end of a sealed object.
const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its payload: header and tag.
pub const SEAL_OVERHEAD: usize = SEAL_HEADER_LEN + TAG_LEN;

/// Kind of a sealed object. It is part of the associated data, so an object of
/// one kind is never accepted as another.
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
}

/// The encryption and config MAC keys of one epoch.
#[derive(Clone)]
struct EpochKeys {
    epoch: u32,
    data: [u8; 32],
    metadata: [u8; 32],
    config_mac: [u8; 32],
}

/// The subkeys of a repository, derived from its key material. `Debug` is
/// redacted.
#[derive(Clone)]
pub struct Keys {
    /// Repository id, bound into every object's associated data.
    pub repo_id: [u8; 16],
    chunk_id: [u8; 32],
    tree_id: [u8; 32],
    chunker: [u8; 32],
    /// One entry per epoch, in ascending order. The last one seals.
    epochs: Vec<EpochKeys>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keys(repo {}, epoch {}, <redacted>)",
            hex::encode(self.repo_id),
            self.current_epoch()
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
                    data: derive("cairn 2026-12 v2 chunk encryption"),
                    metadata: derive("cairn 2026-12 v2 metadata encryption"),
                    config_mac: derive("cairn 2026-12 v2 config mac"),
                }
            })
            .collect();
        Self {
            repo_id,
            chunk_id: identity("cairn 2026-12 v2 chunk id"),
            tree_id: identity("cairn 2026-12 v2 tree id"),
            chunker: identity("cairn 2026-12 v2 chunker gear table"),
            epochs,
        }
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
        *blake3::keyed_hash(&self.epochs[0].config_mac, encoded).as_bytes()
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
        let body_start = SEAL_HEADER_LEN + 1;
        // Every byte up to the final length is written below, so `resize` only
        // zeroes the part of a reused buffer that grows.
        out.resize(body_start + plaintext.len() + TAG_LEN, 0);

        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        let mut rng = rand::rng();
        rng.fill(&mut salt);
        rng.fill(&mut nonce);
        let epoch = self.current();
        out[0] = OBJECT_VERSION;
        out[1..5].copy_from_slice(&epoch.epoch.to_le_bytes());
        out[5..21].copy_from_slice(&salt);
        out[21..SEAL_HEADER_LEN].copy_from_slice(&nonce);

        // The output room is one byte short of the plaintext, so zstd fails
        // unless the compressed form is strictly shorter.
        let compressed_len = if compression_level > 0 && plaintext.len() > 64 {
            let room = &mut out[body_start..body_start + plaintext.len() - 1];
            compress_into(plaintext, compression_level, room)
        } else {
            None
        };
        let body_len = match compressed_len {
            Some(len) => {
                out[SEAL_HEADER_LEN] = 1;
                len
            }
            None => {
                out[SEAL_HEADER_LEN] = 0;
                out[body_start..body_start + plaintext.len()].copy_from_slice(plaintext);
                plaintext.len()
            }
        };
        let payload_end = body_start + body_len;

        // Each object gets its own key from a random salt, and GCM-SIV stays
        // safe if a nonce ever repeats, so no nonce counter has to be kept.
        let cipher = object_cipher(epoch.key_for(kind), &salt);
        let aad = self.associated_data(kind, id, epoch.epoch);
        let tag = cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &aad,
                (&mut out[SEAL_HEADER_LEN..payload_end]).into(),
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
        if sealed.len() < SEAL_OVERHEAD + 1 {
            return Err(CryptoError::Malformed(format!(
                "{} bytes is shorter than the {} byte minimum",
                sealed.len(),
                SEAL_OVERHEAD + 1
            )));
        }
        if sealed[0] != OBJECT_VERSION {
            return Err(CryptoError::Malformed(format!(
                "unknown object version {}",
                sealed[0]
            )));
        }
        let epoch = sealed_epoch(sealed).expect("length checked above");
        let salt: [u8; 16] = sealed[5..21].try_into().expect("16-byte slice");
        let nonce: [u8; 12] = sealed[21..33].try_into().expect("12-byte slice");
        let mut payload = sealed[SEAL_HEADER_LEN..].to_vec();

        let keys = self.epoch(epoch)?;
        let cipher = object_cipher(keys.key_for(kind), &salt);
        let aad = self.associated_data(kind, id, epoch);
        cipher
            .decrypt_in_place(&Nonce::from(nonce), &aad, &mut payload)
            .map_err(|_| CryptoError::Authentication)?;

        match payload.first() {
            Some(0) => {
                payload.remove(0);
                if payload.len() > max_len {
                    return Err(CryptoError::Malformed(format!(
                        "payload of {} bytes exceeds the {max_len} byte limit",
                        payload.len()
                    )));
                }
                Ok(payload)
            }
            Some(1) => decompress_bounded(&payload[1..], max_len),
            Some(other) => Err(CryptoError::Malformed(format!(
                "unknown compression byte {other}"
            ))),
            None => Err(CryptoError::Malformed("empty payload".into())),
        }
    }

    fn associated_data(&self, kind: ObjectKind, id: &[u8; 32], epoch: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(5 + 16 + 1 + 32 + 1 + 4);
        aad.extend_from_slice(b"cairn");
        aad.extend_from_slice(&self.repo_id);
        aad.push(kind as u8);
        aad.extend_from_slice(id);
        aad.push(OBJECT_VERSION);
        aad.extend_from_slice(&epoch.to_le_bytes());
        aad
    }
}

impl EpochKeys {
    fn key_for(&self, kind: ObjectKind) -> &[u8; 32] {
        match kind {
            ObjectKind::Chunk => &self.data,
            _ => &self.metadata,
        }
    }
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

/// Decompresses zstd data, failing once the output would exceed `max_len` bytes.
pub fn decompress_bounded(input: &[u8], max_len: usize) -> Result<Vec<u8>, CryptoError> {
    use std::io::Read;

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
    fn gear_table_depends_on_key() {
        assert_ne!(keys().gear_table(), keys().gear_table());
        assert_eq!(keys().gear_table().len(), 256);
    }
}
