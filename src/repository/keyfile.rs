//! The key file: named slots, each wrapping the repository's root secret under a
//! key derived from that slot's password.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CAIRNKEY"
//! 8       ...   postcard encoding of KeyFile
//! ```

use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError, KdfParams, RootSecret};
use crate::tree::Timestamp;

const KEY_MAGIC: &[u8; 8] = b"CAIRNKEY";
/// Most key slots accepted in one key file.
const MAX_SLOTS: usize = 64;
/// Largest key file accepted when reading, 1 MiB.
const MAX_KEY_FILE_LEN: usize = 1 << 20;

/// One named key slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeySlot {
    /// Slot name, unique within the file.
    pub name: String,
    /// When the slot was added.
    pub created: Timestamp,
    /// `user@host` that added the slot.
    pub created_by: String,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Argon2id salt.
    pub salt: [u8; 16],
    /// AES-256-GCM-SIV nonce of the wrapped secret.
    pub nonce: [u8; 12],
    /// The wrapped root secret, tag included.
    pub wrapped: Vec<u8>,
}

/// All key slots of a repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    /// Repository id; must match the config.
    pub repo_id: [u8; 16],
    /// Slots in the order they were added.
    pub slots: Vec<KeySlot>,
}

fn slot_binding(repo_id: &[u8; 16], name: &str) -> Vec<u8> {
    let mut binding = b"cairn key slot".to_vec();
    binding.extend_from_slice(repo_id);
    binding.extend_from_slice(name.as_bytes());
    binding
}

impl KeyFile {
    /// Adds a slot that wraps `root` under `password`.
    pub fn add_password_slot(
        &mut self,
        name: &str,
        password: &[u8],
        root: &RootSecret,
        kdf: KdfParams,
    ) -> Result<(), CryptoError> {
        let mut salt = [0u8; 16];
        rand::RngExt::fill(&mut rand::rng(), &mut salt);
        let kek = kdf.derive(password, &salt)?;
        let (nonce, wrapped) = crypto::wrap_root(&kek, &slot_binding(&self.repo_id, name), root)?;
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        self.slots.push(KeySlot {
            name: name.to_string(),
            created: Timestamp::now(),
            created_by: format!("{user}@{host}"),
            kdf,
            salt,
            nonce,
            wrapped,
        });
        Ok(())
    }

    /// Tries each slot with the password and returns the root secret of the first
    /// that accepts it; `Authentication` means none did.
    pub fn unlock(&self, password: &[u8]) -> Result<(RootSecret, String), CryptoError> {
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
            if let Ok(root) = crypto::unwrap_root(&kek, &binding, &slot.nonce, &slot.wrapped) {
                return Ok((root, slot.name.clone()));
            }
        }
        Err(CryptoError::Authentication)
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

    /// Adds a key slot named `name` that opens the repository with `password`.
    pub fn add_key(&self, name: &str, password: &[u8]) -> Result<(), super::RepoError> {
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
        file.add_password_slot(name, password, &self.root, KdfParams::DEFAULT)
            .map_err(|e| super::RepoError::KeySlot(e.to_string()))?;
        self.write_key_file(&file)
    }

    /// Removes the key slot `name`; its password stops working at once. The last
    /// slot cannot be removed, since the repository could never be opened again.
    pub fn remove_key(&self, name: &str) -> Result<(), super::RepoError> {
        let mut file = self.key_file()?;
        let before = file.slots.len();
        file.slots.retain(|s| s.name != name);
        if file.slots.len() == before {
            return Err(super::RepoError::KeySlot(format!(
                "no key named {name:?}: run `cairn key list` to see the names"
            )));
        }
        if file.slots.is_empty() {
            return Err(super::RepoError::KeySlot(format!(
                "{name:?} is the only key: add another with `cairn key add` before removing it"
            )));
        }
        self.write_key_file(&file)
    }

    /// Replaces the password of the slot that opened the repository.
    pub fn change_password(&self, password: &[u8]) -> Result<(), super::RepoError> {
        let mut file = self.key_file()?;
        let Some(position) = file.slots.iter().position(|s| s.name == self.slot) else {
            return Err(super::RepoError::KeySlot(format!(
                "the key {:?} that opened the repository was removed meanwhile",
                self.slot
            )));
        };
        let old = file.slots.remove(position);
        file.add_password_slot(&old.name, password, &self.root, KdfParams::DEFAULT)
            .map_err(|e| super::RepoError::KeySlot(e.to_string()))?;
        let new = file.slots.pop().expect("slot just added");
        file.slots.insert(
            position,
            KeySlot {
                created: old.created,
                created_by: old.created_by,
                ..new
            },
        );
        self.write_key_file(&file)
    }
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
