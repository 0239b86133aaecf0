//! The key file: named slots, each holding the repository's key material sealed
//! to the slot's X25519 public key, and the slot's private and signing keys
//! wrapped under a key derived from that slot's password (see
//! `crypto::material`). Removed slots leave their public keys behind as retired
//! keys, so that their audit log entries can still be verified.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CAIRNKEY"
//! 8       ...   postcard encoding of KeyFile
//! ```

use serde::{Deserialize, Serialize};

use crate::crypto::{
    self, BackupOnlyMaterial, CryptoError, KdfParams, KeyMaterial, SealedMaterial, SlotSecret,
};
use crate::tree::Timestamp;

const KEY_MAGIC: &[u8; 8] = b"CAIRNKEY";
/// Most key slots accepted in one key file.
const MAX_SLOTS: usize = 64;
/// Largest key file accepted when reading, 1 MiB.
const MAX_KEY_FILE_LEN: usize = 1 << 20;
/// Most retired keys kept in one key file. Each costs about 110 bytes plus its
/// name, so the limit keeps the file far below [`MAX_KEY_FILE_LEN`].
const MAX_RETIRED: usize = 4096;

/// What a key slot's password gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotKind {
    /// The whole key material: every operation.
    Full,
    /// [`BackupOnlyMaterial`]: new backups only; nothing stored can be opened.
    BackupOnly,
}

impl SlotKind {
    /// Returns the name that `key list` shows.
    pub fn label(self) -> &'static str {
        match self {
            SlotKind::Full => "full",
            SlotKind::BackupOnly => "backup-only",
        }
    }
}

/// One named key slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeySlot {
    /// Slot name, unique within the file.
    pub name: String,
    /// What the slot's material is.
    pub kind: SlotKind,
    /// When the slot was added.
    pub created: Timestamp,
    /// `user@host` that added the slot.
    pub created_by: String,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Argon2id salt.
    pub salt: [u8; 16],
    /// AES-256-GCM-SIV nonce of the wrapped slot secret.
    pub nonce: [u8; 12],
    /// The slot's X25519 private key, the key material's anchor and the slot's
    /// Ed25519 secret key, wrapped under the password-derived key, tag included.
    pub wrapped: Vec<u8>,
    /// The slot's X25519 public key.
    pub public: [u8; 32],
    /// The slot's Ed25519 public key, which verifies its audit log entries.
    pub signing_public: [u8; 32],
    /// MAC of both public keys under a key derived from the key material, which
    /// shows that a key holder added the slot.
    pub public_mac: [u8; 32],
    /// The key material, or for a backup-only slot its [`BackupOnlyMaterial`],
    /// sealed to `public`.
    pub material: SealedMaterial,
}

/// The public keys of a slot that was removed, or replaced by `key passwd`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetiredKey {
    /// Name of the slot.
    pub name: String,
    /// When the slot was removed or replaced.
    pub retired: Timestamp,
    /// The slot's X25519 public key.
    pub public: [u8; 32],
    /// The slot's Ed25519 public key, which verifies its old audit log entries.
    pub signing_public: [u8; 32],
    /// The slot's MAC, unchanged.
    pub public_mac: [u8; 32],
}

impl RetiredKey {
    fn from_slot(slot: &KeySlot) -> Self {
        Self {
            name: slot.name.clone(),
            retired: Timestamp::now(),
            public: slot.public,
            signing_public: slot.signing_public,
            public_mac: slot.public_mac,
        }
    }
}

/// All key slots of a repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    /// Repository id; must match the config.
    pub repo_id: [u8; 16],
    /// Slots in the order they were added.
    pub slots: Vec<KeySlot>,
    /// Public keys of removed and replaced slots, oldest first.
    pub retired: Vec<RetiredKey>,
}

/// The material that a slot's password unlocks.
#[derive(Clone, Debug)]
pub enum Unlocked {
    /// The repository's key material.
    Full(KeyMaterial),
    /// What a backup-only slot holds.
    BackupOnly(BackupOnlyMaterial),
}

/// Key material, slot name and signing key that one slot's password unlocks.
#[derive(Debug)]
pub struct UnlockedSlot {
    /// What the slot holds.
    pub material: Unlocked,
    /// Name of the slot.
    pub name: String,
    /// The slot's Ed25519 secret key.
    pub signing: [u8; 32],
}

/// A signing public key that the key file binds to a slot name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundSigningKey {
    /// Name of the slot.
    pub name: String,
    /// Ed25519 public key.
    pub signing_public: [u8; 32],
    /// True for a retired key, false for a current slot.
    pub retired: bool,
}

/// Associated data of a slot's wrapped secret: binds it to the repository and
/// the slot name.
fn slot_binding(repo_id: &[u8; 16], name: &str) -> Vec<u8> {
    let mut binding = b"cairn key slot".to_vec();
    binding.extend_from_slice(repo_id);
    binding.extend_from_slice(name.as_bytes());
    binding
}

/// Associated data of a slot's sealed key material.
fn material_binding(repo_id: &[u8; 16], name: &str) -> Vec<u8> {
    let mut binding = b"cairn key material".to_vec();
    binding.extend_from_slice(repo_id);
    binding.extend_from_slice(name.as_bytes());
    binding
}

impl KeyFile {
    /// Adds a slot that opens `material` with `password`.
    pub fn add_password_slot(
        &mut self,
        name: &str,
        password: &[u8],
        material: &KeyMaterial,
        kdf: KdfParams,
    ) -> Result<(), CryptoError> {
        self.add_slot(name, password, material, SlotKind::Full, kdf)
    }

    /// Adds a slot of `kind` that opens with `password`. A backup-only slot
    /// gets only [`KeyMaterial::backup_only`] of `material`.
    pub fn add_slot(
        &mut self,
        name: &str,
        password: &[u8],
        material: &KeyMaterial,
        kind: SlotKind,
        kdf: KdfParams,
    ) -> Result<(), CryptoError> {
        let mut salt = [0u8; 16];
        rand::RngExt::fill(&mut rand::rng(), &mut salt);
        let kek = kdf.derive(password, &salt)?;
        let (private, public) = crypto::generate_slot_key_pair();
        let (signing, signing_public) = crypto::generate_signing_key_pair();
        let binding = material_binding(&self.repo_id, name);
        let (anchor, sealed) = match kind {
            SlotKind::Full => (
                material.anchor(),
                crypto::seal_material(&public, &binding, material)?,
            ),
            SlotKind::BackupOnly => {
                let backup_only = material.backup_only();
                (
                    backup_only.anchor(),
                    crypto::seal_material(&public, &binding, &backup_only)?,
                )
            }
        };
        let secret = SlotSecret {
            private,
            anchor,
            signing,
        };
        let (nonce, wrapped) =
            crypto::wrap_slot_secret(&kek, &slot_binding(&self.repo_id, name), &secret)?;
        let user = crate::meta::current_user_name();
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        self.slots.push(KeySlot {
            name: name.to_string(),
            kind,
            created: Timestamp::now(),
            created_by: format!("{user}@{host}"),
            kdf,
            salt,
            nonce,
            wrapped,
            public,
            signing_public,
            public_mac: material.slot_public_mac(&self.repo_id, name, &public, &signing_public),
            material: sealed,
        });
        Ok(())
    }

    /// Seals `material` anew to every slot's public key, replacing what each
    /// slot held. No password is needed, and a slot that was removed before gets
    /// nothing. Fails before changing anything if a slot's public key does not
    /// carry a MAC from this key material, as when someone without the key
    /// material added the slot to receive the new material.
    pub fn reseal_material(&mut self, material: &KeyMaterial) -> Result<(), CryptoError> {
        for slot in &self.slots {
            if !slot_mac_matches(material, &self.repo_id, slot) {
                return Err(CryptoError::Malformed(format!(
                    "key slot {:?} was not added with this repository's key material; remove it with `cairn key remove` if nobody you trust added it",
                    slot.name
                )));
            }
        }
        let backup_only = material.backup_only();
        for slot in &mut self.slots {
            let binding = material_binding(&self.repo_id, &slot.name);
            slot.material = match slot.kind {
                SlotKind::Full => crypto::seal_material(&slot.public, &binding, material)?,
                SlotKind::BackupOnly => {
                    crypto::seal_material(&slot.public, &binding, &backup_only)?
                }
            };
        }
        Ok(())
    }

    /// Tries each slot with the password and returns the key material of the
    /// first full slot that accepts it, and that slot's name. `Authentication`
    /// means that no slot accepts the password. A slot that accepts it but whose
    /// key material does not open or does not match its anchor is damage
    /// (`Malformed`), because its private key opened with the password. A
    /// backup-only slot that accepts the password is an error too, since it
    /// holds no key material.
    pub fn unlock(&self, password: &[u8]) -> Result<(KeyMaterial, String), CryptoError> {
        let unlocked = self.unlock_slot(password)?;
        match unlocked.material {
            Unlocked::Full(material) => Ok((material, unlocked.name)),
            Unlocked::BackupOnly(_) => Err(CryptoError::BackupOnly("key material")),
        }
    }

    /// Unlocks like [`KeyFile::unlock`], also a backup-only slot, and returns
    /// the slot's signing key too.
    pub fn unlock_slot(&self, password: &[u8]) -> Result<UnlockedSlot, CryptoError> {
        for slot in &self.slots {
            // A slot with unusable parameters must not lock out the others.
            let kek = match slot.kdf.derive(password, &slot.salt) {
                Ok(kek) => kek,
                Err(e) => {
                    tracing::warn!("skipping key slot {:?}: {e}", slot.name);
                    continue;
                }
            };
            let binding = slot_binding(&self.repo_id, &slot.name);
            let Ok(secret) = crypto::unwrap_slot_secret(&kek, &binding, &slot.nonce, &slot.wrapped)
            else {
                continue;
            };
            let binding = material_binding(&self.repo_id, &slot.name);
            let does_not_open = |e: CryptoError| {
                CryptoError::Malformed(format!(
                    "the key material of slot {:?} does not open: {e}",
                    slot.name
                ))
            };
            let replaced = || {
                CryptoError::Malformed(format!(
                    "the key material of slot {:?} was replaced: it does not match the anchor that the password protects",
                    slot.name
                ))
            };
            // Anyone can seal material to a public key, so only material with the
            // identity and first epoch that the password protects is accepted.
            let material = match slot.kind {
                SlotKind::Full => {
                    let material: KeyMaterial = crypto::open_material(
                        &secret.private,
                        &slot.public,
                        &binding,
                        &slot.material,
                    )
                    .map_err(does_not_open)?;
                    if material.anchor() != secret.anchor
                        || !slot_mac_matches(&material, &self.repo_id, slot)
                    {
                        return Err(replaced());
                    }
                    Unlocked::Full(material)
                }
                SlotKind::BackupOnly => {
                    let material: BackupOnlyMaterial = crypto::open_material(
                        &secret.private,
                        &slot.public,
                        &binding,
                        &slot.material,
                    )
                    .map_err(does_not_open)?;
                    if material.anchor() != secret.anchor {
                        return Err(replaced());
                    }
                    Unlocked::BackupOnly(material)
                }
            };
            let signing_public = ed25519_dalek::SigningKey::from_bytes(&secret.signing)
                .verifying_key()
                .to_bytes();
            if signing_public != slot.signing_public {
                return Err(CryptoError::Malformed(format!(
                    "the signing public key of slot {:?} does not belong to its secret key",
                    slot.name
                )));
            }
            return Ok(UnlockedSlot {
                material,
                name: slot.name.clone(),
                signing: secret.signing,
            });
        }
        Err(CryptoError::Authentication)
    }

    /// Returns the signing public keys of the current and retired slots whose
    /// MAC matches `material`, current slots first. Keys without a matching MAC
    /// were not added by a key holder and are left out.
    pub fn bound_signing_keys(&self, material: &KeyMaterial) -> Vec<BoundSigningKey> {
        let current = self
            .slots
            .iter()
            .filter(|slot| slot_mac_matches(material, &self.repo_id, slot))
            .map(|slot| BoundSigningKey {
                name: slot.name.clone(),
                signing_public: slot.signing_public,
                retired: false,
            });
        let retired = self
            .retired
            .iter()
            .filter(|key| {
                material.slot_public_mac(&self.repo_id, &key.name, &key.public, &key.signing_public)
                    == key.public_mac
            })
            .map(|key| BoundSigningKey {
                name: key.name.clone(),
                signing_public: key.signing_public,
                retired: true,
            });
        current.chain(retired).collect()
    }

    /// Moves a slot's public keys to the retired list.
    fn retire(&mut self, slot: &KeySlot) -> Result<(), super::RepoError> {
        if self.retired.len() >= MAX_RETIRED {
            return Err(super::RepoError::KeySlot(format!(
                "the key file already keeps the maximum of {MAX_RETIRED} retired keys, which verify old audit log entries"
            )));
        }
        self.retired.push(RetiredKey::from_slot(slot));
        Ok(())
    }

    /// Encodes the key file with its magic.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = KEY_MAGIC.to_vec();
        out.extend_from_slice(&postcard::to_allocvec(self).expect("key file encodes"));
        out
    }

    /// Decodes a key file.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() > MAX_KEY_FILE_LEN || bytes.len() < 8 || &bytes[..8] != KEY_MAGIC {
            return Err(CryptoError::Malformed("not a cairn key file".into()));
        }
        let file: KeyFile =
            postcard::from_bytes(&bytes[8..]).map_err(|e| CryptoError::Malformed(e.to_string()))?;
        // Each slot costs a key derivation of up to seconds, so a forged file with
        // thousands of slots would make every open hang.
        if file.slots.len() > MAX_SLOTS {
            return Err(CryptoError::Malformed(format!(
                "{} key slots, more than the {MAX_SLOTS} allowed",
                file.slots.len()
            )));
        }
        if file.retired.len() > MAX_RETIRED {
            return Err(CryptoError::Malformed(format!(
                "{} retired keys, more than the {MAX_RETIRED} allowed",
                file.retired.len()
            )));
        }
        Ok(file)
    }
}

impl super::Repository {
    /// Returns the name of the key slot whose password opened the repository.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// Reads the key file.
    pub fn key_file(&self) -> Result<KeyFile, super::RepoError> {
        let bytes = self.backend().read("keys")?;
        KeyFile::decode(&bytes).map_err(|e| super::RepoError::Damaged {
            object: format!("key file of {}", self.location()),
            detail: e.to_string(),
        })
    }

    fn write_key_file(&self, file: &KeyFile) -> Result<(), super::RepoError> {
        self.write_file("keys", &file.encode())
    }

    /// Adds a key slot of `kind` named `name` that opens the repository with
    /// `password`, and returns its signing public key.
    pub fn add_key(
        &self,
        name: &str,
        password: &[u8],
        kind: SlotKind,
    ) -> Result<[u8; 32], super::RepoError> {
        let material = self.full_material("add keys")?;
        validate_slot_name(name)?;
        let mut file = self.key_file()?;
        if file.slots.iter().any(|s| s.name == name) {
            return Err(super::RepoError::KeySlot(format!(
                "a key named {name:?} already exists: choose another name, or remove it first"
            )));
        }
        if file.slots.len() >= MAX_SLOTS {
            return Err(super::RepoError::KeySlot(format!(
                "the key file already contains the maximum of {MAX_SLOTS} keys: remove one first"
            )));
        }
        file.add_slot(name, password, material, kind, KdfParams::DEFAULT)
            .map_err(|e| super::RepoError::KeySlot(e.to_string()))?;
        let signing_public = file.slots.last().expect("slot just added").signing_public;
        self.write_key_file(&file)?;
        Ok(signing_public)
    }

    /// Removes the key slot `name`; its password stops working at once. The last
    /// full slot cannot be removed either, because the repository could never be
    /// read again while backup-only keys went on adding unrestorable backups.
    pub fn remove_key(&self, name: &str) -> Result<(), super::RepoError> {
        self.require_full_key("remove keys")?;
        let mut file = self.key_file()?;
        let Some(position) = file.slots.iter().position(|s| s.name == name) else {
            return Err(super::RepoError::KeySlot(format!(
                "no key named {name:?}: run `cairn key list` to see the names"
            )));
        };
        if file.slots.len() == 1 {
            return Err(super::RepoError::KeySlot(format!(
                "{name:?} is the only key: add another with `cairn key add` before removing it"
            )));
        }
        let full = |slot: &KeySlot| slot.kind == SlotKind::Full;
        if full(&file.slots[position]) && file.slots.iter().filter(|s| full(s)).count() == 1 {
            return Err(super::RepoError::KeySlot(format!(
                "cannot remove {name:?}: it is the only full key, and without it the repository could not be read while backup-only keys kept adding backups that cannot be restored; add another full key with `cairn key add` first"
            )));
        }
        let removed = file.slots.remove(position);
        file.retire(&removed)?;
        self.write_key_file(&file)
    }

    /// Replaces the password of the slot that opened the repository. The slot
    /// gets new key pairs, and the old public keys are retired. Returns the new
    /// signing public key.
    pub fn change_password(&self, password: &[u8]) -> Result<[u8; 32], super::RepoError> {
        let material = self.full_material(
            "change its password; a full key holder can remove it and add it again",
        )?;
        let mut file = self.key_file()?;
        let Some(position) = file.slots.iter().position(|s| s.name == self.slot) else {
            return Err(super::RepoError::KeySlot(format!(
                "the key {:?} that opened the repository was removed meanwhile",
                self.slot
            )));
        };
        let old = file.slots.remove(position);
        file.retire(&old)?;
        file.add_slot(&old.name, password, material, old.kind, KdfParams::DEFAULT)
            .map_err(|e| super::RepoError::KeySlot(e.to_string()))?;
        let new = file.slots.pop().expect("slot just added");
        let signing_public = new.signing_public;
        file.slots.insert(
            position,
            KeySlot {
                created: old.created,
                created_by: old.created_by,
                ..new
            },
        );
        self.write_key_file(&file)?;
        Ok(signing_public)
    }
}

impl super::Repository {
    /// Adds a new encryption epoch to the key material and seals the material
    /// anew in every slot. Returns the new epoch number.
    ///
    /// The key material is unlocked again from the key file with `password`, so
    /// that an epoch added by another process since this one opened the
    /// repository is kept. Objects written afterwards by a newly opened
    /// repository are sealed under the new epoch. This `Repository` keeps sealing
    /// under the epoch it was opened with, and so do processes that opened the
    /// repository before.
    pub fn rotate_key(&self, password: &[u8]) -> Result<u32, super::RepoError> {
        self.require_full_key("rotate the key")?;
        let mut file = self.key_file()?;
        let (mut material, _) = match file.unlock(password) {
            Ok(unlocked) => unlocked,
            Err(CryptoError::Authentication) => {
                return Err(super::RepoError::WrongPassword(self.location()));
            }
            Err(e) => {
                return Err(super::RepoError::Damaged {
                    object: format!("key file of {}", self.location()),
                    detail: e.to_string(),
                });
            }
        };
        let epoch = material
            .add_epoch()
            .map_err(|e| super::RepoError::KeySlot(format!("cannot rotate the key: {e}")))?;
        file.reseal_material(&material)
            .map_err(|e| super::RepoError::KeySlot(format!("cannot rotate the key: {e}")))?;
        self.write_key_file(&file)?;
        Ok(epoch)
    }
}

fn slot_mac_matches(material: &KeyMaterial, repo_id: &[u8; 16], slot: &KeySlot) -> bool {
    material.slot_public_mac(repo_id, &slot.name, &slot.public, &slot.signing_public)
        == slot.public_mac
}

fn validate_slot_name(name: &str) -> Result<(), super::RepoError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if valid {
        Ok(())
    } else {
        Err(super::RepoError::KeySlot(format!(
            "invalid key name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
        )))
    }
}
