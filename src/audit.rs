//! The audit log: one entry per operation on the repository, stored as
//! `audit/<20-digit sequence number>-<16 hex>`.
//!
//! Each entry is signed with the Ed25519 key of the slot that acted, then sealed
//! with the repository's metadata key, or by a backup-only key to the content
//! public key (object kind 8). It records the hashes of
//! the entries it follows, so the entries form a hash chain, and the 16 hex
//! characters of its name are the start of the BLAKE3 hash of its stored bytes.
//!
//! Two processes that append at the same time both write an entry with the
//! same sequence number, because the storage offers no create-if-absent.
//! Neither overwrites the other, since the names differ in their hash. The next
//! writer links to every entry that no other entry links to yet (the tips), so
//! the branches join again, and `verify` accepts entries that share a sequence
//! number.
//!
//! Plaintext of an entry:
//!
//! ```text
//! offset  size  field
//! 0       64    Ed25519 signature over "cairn audit entry" ‖ repo_id ‖ body
//! 64      n     body: postcard(AuditEntry)
//! ```

pub mod state;
mod verify;

use std::collections::HashSet;
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

pub use self::verify::{VerifyFailure, VerifyReport, verify};
use crate::crypto::{CryptoError, Keys, ObjectKind};
use crate::repository::{Backend, RepoError, Repository};
use crate::tree::Timestamp;

/// Directory of the audit log in the repository.
pub const AUDIT_DIR: &str = "audit";
/// Largest entry plaintext accepted when reading, 4 MiB: a `forget` of many
/// thousand snapshots lists each id.
pub const MAX_ENTRY_LEN: usize = 4 << 20;
/// Domain separation of the signed message.
const SIGNATURE_CONTEXT: &[u8] = b"cairn audit entry";
/// Length of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;
/// Hex characters of the entry hash in a file name.
const NAME_HASH_HEX: usize = 16;
/// A writer reads the entries of this many sequence numbers below the highest
/// one, to find entries of a concurrent writer that no entry links to yet.
const TIP_WINDOW: u64 = 2;
/// Argument names that make an entry bind a signing key to a slot name, as the
/// entries of `init`, `key add` and `key passwd` do.
pub const ARG_SLOT: &str = "slot";
/// See [`ARG_SLOT`].
pub const ARG_SIGNING_KEY: &str = "signing_key";

/// Errors of reading and writing the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The storage failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// An entry does not open or decode.
    #[error("audit entry {name}: {detail}")]
    Entry {
        /// File name of the entry.
        name: String,
        /// Description of the problem.
        detail: String,
    },
}

/// Result of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The operation succeeded.
    Ok,
    /// The operation failed, with the error message.
    Failed(String),
    /// The repository rejected the request before changing anything, such as
    /// when a lock is held, with the error message.
    Refused(String),
}

impl Outcome {
    /// Returns `ok`, `failed` or `refused`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Refused(_) => "refused",
        }
    }

    /// Returns the error message of a failed or refused operation.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(message) | Outcome::Refused(message) => Some(message),
        }
    }
}

/// One argument of an operation, such as `snapshot` and a snapshot id. A name
/// may repeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditArg {
    /// Argument name.
    pub name: String,
    /// Argument value.
    pub value: String,
}

/// The signed body of an audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number: 0 for the first entry, else one above the highest
    /// sequence number among the entries in `prev`.
    pub seq: u64,
    /// BLAKE3 hashes of the stored bytes of the entries that this one follows,
    /// usually one. Empty only for sequence number 0.
    pub prev: Vec<[u8; 32]>,
    /// When the entry was written.
    pub time: Timestamp,
    /// Name of the key slot that acted and signed.
    pub key: String,
    /// Host name of the process.
    pub host: String,
    /// `$USER` of the process.
    pub user: String,
    /// The command, such as `backup` or `key add`.
    pub operation: String,
    /// The arguments that matter: paths, snapshot ids, counts.
    pub args: Vec<AuditArg>,
    /// Result of the operation.
    pub outcome: Outcome,
}

impl AuditEntry {
    /// Returns the values of the arguments named `name`, in order.
    pub fn arg_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.args
            .iter()
            .filter(move |arg| arg.name == name)
            .map(|arg| arg.value.as_str())
    }
}

/// Operation, arguments and outcome of one command. The writer adds the
/// sequence number, links, time, key, host and user.
#[derive(Clone, Debug)]
pub struct Record {
    /// The command, such as `backup`.
    pub operation: String,
    /// Its arguments.
    pub args: Vec<AuditArg>,
    /// Its result.
    pub outcome: Outcome,
}

/// An entry read back and opened.
#[derive(Clone, Debug)]
pub struct OpenedEntry {
    /// The signed body.
    pub entry: AuditEntry,
    /// The exact body bytes that the signature covers.
    pub body: Vec<u8>,
    /// Ed25519 signature.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Returns the file name (without directory) of an entry.
pub fn entry_name(seq: u64, hash: &[u8; 32]) -> String {
    format!("{seq:020}-{}", &hex::encode(hash)[..NAME_HASH_HEX])
}

/// Splits an entry's file name into its sequence number and hash prefix, or
/// returns `None` for a name of another form.
pub fn parse_entry_name(name: &str) -> Option<(u64, &str)> {
    let (seq, hash) = name.split_once('-')?;
    let valid = seq.len() == 20
        && seq.bytes().all(|b| b.is_ascii_digit())
        && hash.len() == NAME_HASH_HEX
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !valid {
        return None;
    }
    Some((seq.parse().ok()?, hash))
}

/// Returns the message that an entry's signature covers.
fn signed_message(repo_id: &[u8; 16], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 16 + body.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(repo_id);
    message.extend_from_slice(body);
    message
}

/// Encodes `entry`, signs it with `signing` and seals it. Returns the bytes to
/// store.
pub fn seal_entry(
    keys: &Keys,
    signing: &SigningKey,
    entry: &AuditEntry,
) -> Result<Vec<u8>, CryptoError> {
    let body = postcard::to_allocvec(entry).expect("audit entry encodes");
    let signature = signing.sign(&signed_message(&keys.repo_id, &body));
    let mut plaintext = Vec::with_capacity(SIGNATURE_LEN + body.len());
    plaintext.extend_from_slice(&signature.to_bytes());
    plaintext.extend_from_slice(&body);
    keys.seal(ObjectKind::AuditEntry, &[0; 32], &plaintext, 3)
}

/// Opens and decodes a stored entry. The signature is returned, not checked.
pub fn open_entry(keys: &Keys, stored: &[u8]) -> Result<OpenedEntry, CryptoError> {
    let plaintext = keys.open(ObjectKind::AuditEntry, &[0; 32], stored, MAX_ENTRY_LEN)?;
    if plaintext.len() < SIGNATURE_LEN {
        return Err(CryptoError::Malformed(format!(
            "audit entry of {} bytes is shorter than a signature",
            plaintext.len()
        )));
    }
    let (signature, body) = plaintext.split_at(SIGNATURE_LEN);
    let (entry, rest) = postcard::take_from_bytes::<AuditEntry>(body)
        .map_err(|e| CryptoError::Malformed(format!("audit entry does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(CryptoError::Malformed(format!(
            "{} bytes after the end of the audit entry",
            rest.len()
        )));
    }
    Ok(OpenedEntry {
        entry,
        body: body.to_vec(),
        signature: signature.try_into().expect("64-byte slice"),
    })
}

/// Checks an entry's signature against an Ed25519 public key.
pub fn signature_matches(repo_id: &[u8; 16], opened: &OpenedEntry, public: &[u8; 32]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(&opened.signature);
    key.verify_strict(&signed_message(repo_id, &opened.body), &signature)
        .is_ok()
}

/// The files of `audit/`.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Entries as (sequence number, file name), sorted by name, which is
    /// sequence order.
    pub entries: Vec<(u64, String)>,
    /// Names that are not of the form of an entry.
    pub others: Vec<String>,
}

/// Lists the files of the audit log.
pub fn list_entries(backend: &dyn Backend) -> Result<Listing, RepoError> {
    let mut listing = Listing::default();
    for name in backend.list(AUDIT_DIR)? {
        match parse_entry_name(&name) {
            Some((seq, _)) => listing.entries.push((seq, name)),
            None => listing.others.push(name),
        }
    }
    listing.entries.sort();
    Ok(listing)
}

/// An entry that [`AuditWriter::append`] wrote.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Its file name, without the directory.
    pub name: String,
    /// BLAKE3 hash of its stored bytes.
    pub hash: [u8; 32],
    /// Problems found in the newest entries on the way, such as one that does
    /// not open. The entry was written all the same.
    pub warnings: Vec<String>,
}

/// Appends entries to the audit log of one repository in the name of the key
/// slot that opened it. `Debug` is redacted.
#[derive(Clone)]
pub struct AuditWriter {
    backend: Arc<dyn Backend>,
    keys: Keys,
    signing: SigningKey,
    key_name: String,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AuditWriter({}, key {:?})",
            self.backend.location(),
            self.key_name
        )
    }
}

impl Repository {
    /// Returns a writer of audit log entries signed by this repository's key
    /// slot. It keeps working after the repository is dropped.
    pub fn audit_writer(&self) -> AuditWriter {
        AuditWriter {
            backend: self.shared_backend(),
            keys: self.keys().clone(),
            signing: self.signing_key().clone(),
            key_name: self.slot_name().to_string(),
        }
    }
}

impl AuditWriter {
    /// Returns the repository id.
    pub fn repo_id(&self) -> [u8; 16] {
        self.keys.repo_id
    }

    /// Returns the repository location for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Appends one entry after the current tips of the log, with one listing of
    /// `audit/`, a read of the newest entries and one atomic write. A warning
    /// is returned when `remembered`, the newest entry this client saw, is not
    /// in the listing.
    pub fn append(
        &self,
        record: Record,
        remembered: Option<&state::RememberedHead>,
    ) -> Result<Appended, AuditError> {
        let names = list_entries(self.backend.as_ref())?.entries;
        let mut warnings = Vec::new();
        if let Some(remembered) = remembered
            && !names.iter().any(|(_, name)| *name == remembered.name)
        {
            warnings.push(format!(
                "audit entry {} ({AUDIT_DIR}/{}), which this client wrote or saw before, is missing: run `cairn audit verify`",
                remembered.seq, remembered.name
            ));
        }
        let tips = self.tips(&names, &mut warnings);
        let seq = tips.iter().map(|(seq, _)| seq + 1).max().unwrap_or(0);
        let entry = AuditEntry {
            seq,
            prev: tips.iter().map(|(_, hash)| *hash).collect(),
            time: Timestamp::now(),
            key: self.key_name.clone(),
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            user: crate::meta::current_user_name(),
            operation: record.operation,
            args: record.args,
            outcome: record.outcome,
        };
        let stored =
            seal_entry(&self.keys, &self.signing, &entry).map_err(|e| AuditError::Entry {
                name: format!("{seq}"),
                detail: e.to_string(),
            })?;
        let hash = *blake3::hash(&stored).as_bytes();
        let name = entry_name(seq, &hash);
        // The name contains the hash of bytes that include a random salt, so
        // this never replaces an existing entry, also on append-only storage.
        self.backend
            .write_atomic(&format!("{AUDIT_DIR}/{name}"), &stored)
            .map_err(RepoError::from)?;
        Ok(Appended {
            seq,
            name,
            hash,
            warnings,
        })
    }

    /// Returns the sequence numbers and hashes of the entries among the newest
    /// that no other entry follows, in name order.
    fn tips(&self, names: &[(u64, String)], warnings: &mut Vec<String>) -> Vec<(u64, [u8; 32])> {
        let Some(top) = names.last().map(|(seq, _)| *seq) else {
            return Vec::new();
        };
        let mut window = Vec::new();
        let mut followed = HashSet::new();
        for (seq, name) in names.iter().filter(|(seq, _)| seq + TIP_WINDOW >= top) {
            let stored = match self.backend.read(&format!("{AUDIT_DIR}/{name}")) {
                Ok(stored) => stored,
                Err(e) => {
                    warnings.push(format!("audit entry {name} could not be read: {e}"));
                    continue;
                }
            };
            // An entry that does not open still gets linked by the hash of its
            // bytes, so that `verify` reports it instead of a gap. A backup-only
            // key opens none, and links to every entry of the window: links to
            // entries that others follow too are redundant, not wrong.
            if !self.keys.is_backup_only() {
                match open_entry(&self.keys, &stored) {
                    Ok(opened) => followed.extend(opened.entry.prev),
                    Err(e) => warnings.push(format!("audit entry {name} does not open: {e}")),
                }
            }
            window.push((*seq, *blake3::hash(&stored).as_bytes()));
        }
        window.retain(|(_, hash)| !followed.contains(hash));
        window
    }
}
