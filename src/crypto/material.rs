//! Key material, and how a key slot stores it.
//!
//! The key material has two parts. The identity secret keys the chunk ids, the
//! tree ids and the chunker's gear table, and never changes, so repositories
//! that share it (made with `init --like`) give the same content the same ids.
//! The encryption epochs each carry a secret from which the encryption keys and
//! the config MAC key derive. `key rotate` appends an epoch, and everything
//! written afterwards is sealed under the newest one.
//!
//! Every key slot stores the whole key material, sealed to the slot's X25519
//! public key. The slot's private key is wrapped under the key that Argon2id
//! derives from the slot's password. Sealing to a public key is what lets
//! `key rotate` hand a new epoch to every slot while knowing only one password.
//! A removed slot's public key is gone, so nothing sealed later reaches it.
//!
//! Each slot also has an Ed25519 key pair that signs the slot's audit log
//! entries. Its secret key is wrapped with the X25519 private key, and its
//! public key is bound to the key material by the same MAC as the X25519 public
//! key, so that nobody without the key material can swap in a key of their own.
//!
//! A public key lets anyone seal material, so the wrapped private key carries an
//! anchor next to it: a hash of the identity secret and the first epoch, which no
//! rotation changes. Material that does not match the anchor is rejected, so an
//! attacker who can write the key file but holds no key material cannot make a
//! client write under keys the attacker chose.

use std::fmt;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::CryptoError;

/// Maximum number of encryption epochs in one key material. Each costs 33 to 37 bytes in
/// every slot, and the key file is limited to 1 MiB with up to 64 slots.
pub const MAX_EPOCHS: usize = 256;

/// One encryption epoch: its number and its secret. `Debug` is redacted.
#[derive(Clone, Serialize, Deserialize)]
pub struct EpochSecret {
    /// Epoch number, recorded in the header of every object sealed under it.
    pub epoch: u32,
    /// 32 random bytes.
    pub secret: [u8; 32],
}

impl fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochSecret({}, <redacted>)", self.epoch)
    }
}

/// The secrets that every key slot of a repository contains. `Debug` is redacted.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// Secret of the chunk-id, tree-id and chunker keys.
    pub identity: [u8; 32],
    /// Encryption epochs in ascending order of their numbers. The last one
    /// seals new objects.
    pub epochs: Vec<EpochSecret>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epochs: Vec<u32> = self.epochs.iter().map(|e| e.epoch).collect();
        write!(f, "KeyMaterial(epochs {epochs:?}, <redacted>)")
    }
}

pub(crate) fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    rand::rng().fill(&mut secret);
    secret
}

impl KeyMaterial {
    /// Generates a random identity secret and a random epoch 0.
    pub fn generate() -> Self {
        Self::with_identity(random_secret())
    }

    /// Generates a random epoch 0 for an identity secret taken from another
    /// repository, so that both compute the same chunk and tree ids.
    pub fn with_identity(identity: [u8; 32]) -> Self {
        Self {
            identity,
            epochs: vec![EpochSecret {
                epoch: 0,
                secret: random_secret(),
            }],
        }
    }

    /// Returns the epoch that seals new objects.
    pub fn newest(&self) -> &EpochSecret {
        self.epochs
            .last()
            .expect("validated key material has an epoch")
    }

    /// Appends a random epoch numbered one above the newest, and returns its
    /// number.
    pub fn add_epoch(&mut self) -> Result<u32, CryptoError> {
        if self.epochs.len() >= MAX_EPOCHS {
            return Err(CryptoError::Malformed(format!(
                "the key material already has the maximum of {MAX_EPOCHS} epochs"
            )));
        }
        let epoch = self.newest().epoch.checked_add(1).ok_or_else(|| {
            CryptoError::Malformed("the newest epoch number is the largest possible".into())
        })?;
        self.epochs.push(EpochSecret {
            epoch,
            secret: random_secret(),
        });
        Ok(epoch)
    }

    /// Checks that there is at least one epoch, at most [`MAX_EPOCHS`], and that
    /// the numbers ascend strictly.
    pub fn validate(&self) -> Result<(), CryptoError> {
        validate_epoch_numbers(self.epochs.iter().map(|e| e.epoch))
    }

    /// Computes the anchor: a hash of the parts that no rotation changes, the
    /// identity secret and the first epoch.
    pub fn anchor(&self) -> [u8; 32] {
        self.derive_from_fixed_parts("cairn 2026-12 v2 key material anchor")
    }

    /// Computes the MAC of a slot's X25519 and Ed25519 public keys, which shows
    /// that a holder of this key material added the slot. `key rotate` seals new
    /// material only to slots whose MAC matches, so that nobody without key
    /// material can add a slot to the key file and receive the next epoch, and
    /// `audit verify` accepts signatures only from keys whose MAC matches.
    pub fn slot_public_mac(
        &self,
        repo_id: &[u8; 16],
        name: &str,
        public: &[u8; 32],
        signing_public: &[u8; 32],
    ) -> [u8; 32] {
        let key = self.derive_from_fixed_parts("cairn 2026-12 v2 key slot public key mac");
        let mut hasher = blake3::Hasher::new_keyed(&key);
        hasher.update(repo_id);
        hasher.update(public);
        hasher.update(signing_public);
        hasher.update(name.as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Derives 32 bytes for `context` from the identity secret and the first
    /// epoch, which no rotation changes.
    fn derive_from_fixed_parts(&self, context: &str) -> [u8; 32] {
        let first = &self.epochs[0];
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(&self.identity);
        hasher.update(&first.epoch.to_le_bytes());
        hasher.update(&first.secret);
        *hasher.finalize().as_bytes()
    }
}

/// What a backup-only key slot holds instead of the key material: enough to
/// chunk, compute ids, read the index and seal new content, and nothing that
/// opens stored content. `Debug` is redacted.
///
/// The identity secret gives the same chunk and tree ids as a full key, so new
/// backups deduplicate against what is stored. The index key of each epoch
/// opens index files, pack headers, locks and audit log entries, which name
/// blobs but hold no content. Chunks, trees and snapshots are sealed to the
/// newest epoch's content public key; its private key derives from the epoch
/// secret, which only full keys hold.
#[derive(Clone, Serialize, Deserialize)]
pub struct BackupOnlyMaterial {
    /// Secret of the chunk-id, tree-id and chunker keys.
    pub identity: [u8; 32],
    /// Config MAC key of the first epoch, which checks the config.
    pub config_mac: [u8; 32],
    /// One entry per epoch of the full key material, in the same order.
    pub epochs: Vec<BackupOnlyEpoch>,
}

/// The part of one encryption epoch that a backup-only key holds.
#[derive(Clone, Serialize, Deserialize)]
pub struct BackupOnlyEpoch {
    /// Epoch number.
    pub epoch: u32,
    /// Index key of the epoch, derived from its secret.
    pub index: [u8; 32],
    /// X25519 public key of the epoch's content key pair.
    pub content_public: [u8; 32],
}

impl fmt::Debug for BackupOnlyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epochs: Vec<u32> = self.epochs.iter().map(|e| e.epoch).collect();
        write!(f, "BackupOnlyMaterial(epochs {epochs:?}, <redacted>)")
    }
}

/// Derivation context of an epoch's index key.
pub const INDEX_KEY_CONTEXT: &str = "cairn 2026-12 v4 index encryption";
/// Derivation context of an epoch's config MAC key.
pub const CONFIG_MAC_CONTEXT: &str = "cairn 2026-12 v2 config mac";
/// Derivation context of an epoch's X25519 content private key.
const CONTENT_PRIVATE_CONTEXT: &str = "cairn 2026-12 v4 content private key";

impl EpochSecret {
    /// Derives the X25519 private key to which backup-only keys seal content.
    pub fn content_private(&self) -> [u8; 32] {
        StaticSecret::from(blake3::derive_key(CONTENT_PRIVATE_CONTEXT, &self.secret)).to_bytes()
    }

    /// Derives the X25519 public key to which backup-only keys seal content.
    pub fn content_public(&self) -> [u8; 32] {
        PublicKey::from(&StaticSecret::from(self.content_private())).to_bytes()
    }
}

impl KeyMaterial {
    /// Returns what a backup-only key slot holds of this key material.
    pub fn backup_only(&self) -> BackupOnlyMaterial {
        BackupOnlyMaterial {
            identity: self.identity,
            config_mac: blake3::derive_key(CONFIG_MAC_CONTEXT, &self.epochs[0].secret),
            epochs: self
                .epochs
                .iter()
                .map(|epoch| BackupOnlyEpoch {
                    epoch: epoch.epoch,
                    index: blake3::derive_key(INDEX_KEY_CONTEXT, &epoch.secret),
                    content_public: epoch.content_public(),
                })
                .collect(),
        }
    }
}

impl BackupOnlyMaterial {
    /// Computes the anchor of a backup-only slot: a hash of the parts that no
    /// rotation changes, the identity secret, the config MAC key and the first
    /// epoch. Only a full key holder can make material with a given anchor.
    pub fn anchor(&self) -> [u8; 32] {
        let first = &self.epochs[0];
        let mut hasher = blake3::Hasher::new_derive_key("cairn 2026-12 v4 backup-only anchor");
        hasher.update(&self.identity);
        hasher.update(&self.config_mac);
        hasher.update(&first.epoch.to_le_bytes());
        hasher.update(&first.index);
        hasher.update(&first.content_public);
        *hasher.finalize().as_bytes()
    }
}

/// Key material of either kind, as a slot stores it.
pub trait SlotMaterial: Serialize + serde::de::DeserializeOwned {
    /// Checks the epoch count and order.
    fn validate(&self) -> Result<(), CryptoError>;
}

impl SlotMaterial for KeyMaterial {
    fn validate(&self) -> Result<(), CryptoError> {
        KeyMaterial::validate(self)
    }
}

impl SlotMaterial for BackupOnlyMaterial {
    fn validate(&self) -> Result<(), CryptoError> {
        validate_epoch_numbers(self.epochs.iter().map(|e| e.epoch))
    }
}

/// Checks that there is at least one epoch, at most [`MAX_EPOCHS`], and that
/// the numbers ascend strictly.
fn validate_epoch_numbers(numbers: impl Iterator<Item = u32>) -> Result<(), CryptoError> {
    let numbers: Vec<u32> = numbers.collect();
    if numbers.is_empty() || numbers.len() > MAX_EPOCHS {
        return Err(CryptoError::Malformed(format!(
            "key material with {} epochs; 1 to {MAX_EPOCHS} are valid",
            numbers.len()
        )));
    }
    if numbers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(CryptoError::Malformed(
            "key material epochs are not in ascending order".into(),
        ));
    }
    Ok(())
}

/// Key material sealed to one slot's X25519 public key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedMaterial {
    /// Public key of the ephemeral X25519 key pair used for this seal.
    pub ephemeral: [u8; 32],
    /// AES-256-GCM-SIV nonce.
    pub nonce: [u8; 12],
    /// Ciphertext of `postcard(KeyMaterial)`, tag last.
    pub ciphertext: Vec<u8>,
}

/// Generates a slot key pair and returns the private and the public key.
pub fn generate_slot_key_pair() -> ([u8; 32], [u8; 32]) {
    let private = StaticSecret::from(random_secret());
    let public = PublicKey::from(&private);
    (private.to_bytes(), public.to_bytes())
}

/// Generates a slot's Ed25519 signing key pair and returns the 32-byte secret
/// key (the seed of RFC 8032) and the public key.
pub fn generate_signing_key_pair() -> ([u8; 32], [u8; 32]) {
    let secret = random_secret();
    let public = ed25519_dalek::SigningKey::from_bytes(&secret)
        .verifying_key()
        .to_bytes();
    (secret, public)
}

/// The secrets that a key slot wraps under its password-derived key.
pub struct SlotSecret {
    /// X25519 private key, which opens the sealed key material.
    pub private: [u8; 32],
    /// Anchor of the key material that the slot must contain.
    pub anchor: [u8; 32],
    /// Ed25519 secret key, which signs the slot's audit log entries.
    pub signing: [u8; 32],
}

impl fmt::Debug for SlotSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlotSecret(<redacted>)")
    }
}

/// Length of a wrapped slot secret's plaintext: private key, anchor and
/// signing key.
const SLOT_SECRET_LEN: usize = 3 * 32;

/// Derives the AES key of a material seal from the X25519 shared secret and both
/// public keys, and rejects a shared secret that a low-order point forced.
fn material_cipher(
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; 32],
    public: &[u8; 32],
) -> Result<Aes256GcmSiv, CryptoError> {
    if !shared.was_contributory() {
        return Err(CryptoError::Authentication);
    }
    let mut hasher = blake3::Hasher::new_derive_key("cairn 2026-12 v2 key slot material");
    hasher.update(shared.as_bytes());
    hasher.update(ephemeral);
    hasher.update(public);
    Ok(Aes256GcmSiv::new_from_slice(hasher.finalize().as_bytes()).expect("32-byte key"))
}

/// Seals key material to a slot's public key. `binding` is authenticated as
/// associated data.
pub fn seal_material<M: SlotMaterial>(
    public: &[u8; 32],
    binding: &[u8],
    material: &M,
) -> Result<SealedMaterial, CryptoError> {
    let ephemeral_secret = StaticSecret::from(random_secret());
    let ephemeral = PublicKey::from(&ephemeral_secret).to_bytes();
    let shared = ephemeral_secret.diffie_hellman(&PublicKey::from(*public));
    let cipher = material_cipher(&shared, &ephemeral, public)?;

    let mut nonce = [0u8; 12];
    rand::rng().fill(&mut nonce);
    let mut ciphertext = postcard::to_allocvec(material).expect("key material encodes");
    cipher
        .encrypt_in_place(&Nonce::from(nonce), binding, &mut ciphertext)
        .map_err(|_| CryptoError::Authentication)?;
    Ok(SealedMaterial {
        ephemeral,
        nonce,
        ciphertext,
    })
}

/// Opens key material sealed to the key pair `private` and `public`, and
/// validates it.
pub fn open_material<M: SlotMaterial>(
    private: &[u8; 32],
    public: &[u8; 32],
    binding: &[u8],
    sealed: &SealedMaterial,
) -> Result<M, CryptoError> {
    let shared = StaticSecret::from(*private).diffie_hellman(&PublicKey::from(sealed.ephemeral));
    let cipher = material_cipher(&shared, &sealed.ephemeral, public)?;
    let mut buffer = sealed.ciphertext.clone();
    cipher
        .decrypt_in_place(&Nonce::from(sealed.nonce), binding, &mut buffer)
        .map_err(|_| CryptoError::Authentication)?;
    let material: M =
        postcard::from_bytes(&buffer).map_err(|e| CryptoError::Malformed(e.to_string()))?;
    material.validate()?;
    Ok(material)
}

/// Wraps a slot's secrets under a password-derived key. Returns the random
/// nonce and the 112-byte ciphertext.
pub fn wrap_slot_secret(
    kek: &[u8; 32],
    binding: &[u8],
    secret: &SlotSecret,
) -> Result<([u8; 12], Vec<u8>), CryptoError> {
    let mut nonce = [0u8; 12];
    rand::rng().fill(&mut nonce);
    let cipher = Aes256GcmSiv::new_from_slice(kek).expect("32-byte key");
    let mut buffer = Vec::with_capacity(SLOT_SECRET_LEN + 16);
    buffer.extend_from_slice(&secret.private);
    buffer.extend_from_slice(&secret.anchor);
    buffer.extend_from_slice(&secret.signing);
    cipher
        .encrypt_in_place(&Nonce::from(nonce), binding, &mut buffer)
        .map_err(|_| CryptoError::Authentication)?;
    Ok((nonce, buffer))
}

/// Unwraps a slot's secrets. A wrong password fails with `Authentication`.
pub fn unwrap_slot_secret(
    kek: &[u8; 32],
    binding: &[u8],
    nonce: &[u8; 12],
    wrapped: &[u8],
) -> Result<SlotSecret, CryptoError> {
    let cipher = Aes256GcmSiv::new_from_slice(kek).expect("32-byte key");
    let mut buffer = wrapped.to_vec();
    cipher
        .decrypt_in_place(&Nonce::from(*nonce), binding, &mut buffer)
        .map_err(|_| CryptoError::Authentication)?;
    if buffer.len() != SLOT_SECRET_LEN {
        return Err(CryptoError::Malformed(format!(
            "wrapped slot secret of {} bytes, expected {SLOT_SECRET_LEN}",
            buffer.len()
        )));
    }
    let part = |index: usize| -> [u8; 32] {
        buffer[index * 32..(index + 1) * 32]
            .try_into()
            .expect("32-byte slice")
    };
    Ok(SlotSecret {
        private: part(0),
        anchor: part(1),
        signing: part(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_material_opens_with_slot_key() {
        let material = KeyMaterial::generate();
        let (private, public) = generate_slot_key_pair();
        let sealed = seal_material(&public, b"slot", &material).unwrap();
        let opened: KeyMaterial = open_material(&private, &public, b"slot", &sealed).unwrap();
        assert_eq!(opened.identity, material.identity);
        assert_eq!(opened.newest().secret, material.newest().secret);
    }

    #[test]
    fn sealed_material_rejects_other_slot() {
        let material = KeyMaterial::generate();
        let (_, public) = generate_slot_key_pair();
        let (other_private, other_public) = generate_slot_key_pair();
        let sealed = seal_material(&public, b"slot", &material).unwrap();
        assert!(
            open_material::<KeyMaterial>(&other_private, &other_public, b"slot", &sealed).is_err()
        );
    }

    #[test]
    fn sealed_material_rejects_other_binding() {
        let material = KeyMaterial::generate();
        let (private, public) = generate_slot_key_pair();
        let sealed = seal_material(&public, b"slot a", &material).unwrap();
        assert!(open_material::<KeyMaterial>(&private, &public, b"slot b", &sealed).is_err());
    }

    #[test]
    fn add_epoch_keeps_anchor() {
        let mut material = KeyMaterial::generate();
        let anchor = material.anchor();
        assert_eq!(material.add_epoch().unwrap(), 1);
        assert_eq!(material.add_epoch().unwrap(), 2);
        assert_eq!(material.anchor(), anchor);
        assert_eq!(material.epochs.len(), 3);
        material.validate().unwrap();
    }

    #[test]
    fn anchor_differs_between_materials() {
        let identity = [5; 32];
        let a = KeyMaterial::with_identity(identity);
        let b = KeyMaterial::with_identity(identity);
        assert_ne!(a.anchor(), b.anchor());
    }

    #[test]
    fn validate_rejects_unordered_epochs() {
        let mut material = KeyMaterial::generate();
        material.add_epoch().unwrap();
        material.epochs.swap(0, 1);
        assert!(material.validate().is_err());
        material.epochs.clear();
        assert!(material.validate().is_err());
    }

    /// The sizes that `docs/format.md` gives for a new repository's key slot.
    #[test]
    fn sizes_match_format_doc() {
        let material = KeyMaterial::generate();
        assert_eq!(postcard::to_allocvec(&material).unwrap().len(), 66);
        let (private, public) = generate_slot_key_pair();
        let sealed = seal_material(&public, b"slot", &material).unwrap();
        assert_eq!(sealed.ciphertext.len(), 82);
        let secret = SlotSecret {
            private,
            anchor: [2; 32],
            signing: [3; 32],
        };
        let (_, wrapped) = wrap_slot_secret(&[1; 32], b"slot", &secret).unwrap();
        assert_eq!(wrapped.len(), 112);
    }

    #[test]
    fn slot_secret_rejects_wrong_key() {
        let secret = SlotSecret {
            private: [2; 32],
            anchor: [3; 32],
            signing: [4; 32],
        };
        let (nonce, wrapped) = wrap_slot_secret(&[1; 32], b"slot", &secret).unwrap();
        let opened = unwrap_slot_secret(&[1; 32], b"slot", &nonce, &wrapped).unwrap();
        assert_eq!(opened.private, [2; 32]);
        assert_eq!(opened.anchor, [3; 32]);
        assert_eq!(opened.signing, [4; 32]);
        assert!(unwrap_slot_secret(&[9; 32], b"slot", &nonce, &wrapped).is_err());
    }
}
