//! Verification of the whole audit log: every entry's name, seal, signature,
//! sequence number and links, and the presence of the newest entry that this
//! client saw before.

use std::collections::{HashMap, HashSet};

use super::state::RememberedHead;
use super::{
    ARG_SIGNING_KEY, ARG_SLOT, AUDIT_DIR, AuditEntry, OpenedEntry, Outcome, list_entries,
    open_entry, signature_matches,
};
use crate::repository::{BoundSigningKey, RepoError, Repository};

/// An audit log that passed verification.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Number of entries.
    pub entries: usize,
    /// The newest entry: sequence number, file name and hash. `None` for an
    /// empty log.
    pub head: Option<(u64, String, [u8; 32])>,
    /// File names of entries that no other entry follows, other than the head:
    /// branches that concurrent writers left and no later entry joined yet.
    pub other_tips: Vec<String>,
}

/// The first problem found in the audit log.
#[derive(Clone, Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// An entry is invalid.
    #[error("audit entry {seq} ({AUDIT_DIR}/{name}) is invalid: {reason}")]
    Entry {
        /// Sequence number, from the file name.
        seq: u64,
        /// File name.
        name: String,
        /// Description of the problem.
        reason: String,
    },
    /// A file in `audit/` is not named like an entry.
    #[error("{AUDIT_DIR}/{name} is not an audit entry: its name is not <20 digits>-<16 hex>")]
    BadName {
        /// File name.
        name: String,
    },
    /// The newest entry that this client saw is gone.
    #[error(
        "the audit log was cut short: entry {} ({AUDIT_DIR}/{}), which this client saw before, is missing; entries were deleted from the end of the log",
        .0.seq, .0.name
    )]
    HeadMissing(RememberedHead),
}

/// The result of verifying: a report, or the first problem. A failure to read
/// the storage or the key file is an error of its own.
pub type VerifyResult = Result<Result<VerifyReport, VerifyFailure>, RepoError>;

/// A verified entry, kept for the links of later ones.
struct Known {
    seq: u64,
    name: String,
}

/// Verifies the whole audit log of `repo`, oldest entry first, and then that
/// `remembered`, the newest entry this client saw, is part of it.
///
/// Signing keys come from the key file, current slots and retired keys alike,
/// and only those whose MAC matches the key material count. Once an entry of
/// `init`, `key add` or `key passwd` has bound a signing key to a slot name,
/// later entries in that name must carry a signature by that key. So a key
/// holder who swaps a slot's key in the key file cannot sign in its name.
pub fn verify(repo: &Repository, remembered: Option<&RememberedHead>) -> VerifyResult {
    let key_file = repo.key_file()?;
    let bound = key_file.bound_signing_keys(repo.full_material("verify the audit log")?);
    let listing = list_entries(repo.backend())?;
    let names = listing.entries;
    if let Some(name) = listing.others.into_iter().next() {
        return Ok(Err(VerifyFailure::BadName { name }));
    }

    let mut known: HashMap<[u8; 32], Known> = HashMap::new();
    let mut followed: HashSet<[u8; 32]> = HashSet::new();
    let mut introduced: HashMap<String, [u8; 32]> = HashMap::new();
    let mut head = None;
    for (seq, name) in &names {
        let fail = |reason: String| VerifyFailure::Entry {
            seq: *seq,
            name: name.clone(),
            reason,
        };
        let stored = repo.backend().read(&format!("{AUDIT_DIR}/{name}"))?;
        let hash = *blake3::hash(&stored).as_bytes();
        if !name.ends_with(&hex::encode(hash)[..16]) {
            return Ok(Err(fail(
                "its bytes do not hash to its name: the file was changed or renamed".into(),
            )));
        }
        let opened = match open_entry(repo.keys(), &stored) {
            Ok(opened) => opened,
            Err(e) => return Ok(Err(fail(format!("it does not open: {e}")))),
        };
        let entry = &opened.entry;
        if entry.seq != *seq {
            return Ok(Err(fail(format!(
                "it holds sequence number {}, not the {seq} of its name",
                entry.seq
            ))));
        }
        if let Err(reason) = check_links(&opened, &known) {
            return Ok(Err(fail(reason)));
        }
        if let Err(reason) = check_signature(repo, &opened, &bound, &introduced) {
            return Ok(Err(fail(reason)));
        }

        if let Err(reason) = update_bindings(entry, &mut introduced) {
            return Ok(Err(fail(reason)));
        }
        followed.extend(entry.prev.iter().copied());
        known.insert(
            hash,
            Known {
                seq: *seq,
                name: name.clone(),
            },
        );
        head = Some((*seq, name.clone(), hash));
    }

    if let Some(remembered) = remembered
        && !known.contains_key(&remembered.hash)
    {
        return Ok(Err(VerifyFailure::HeadMissing(remembered.clone())));
    }
    let head_hash = head.as_ref().map(|(_, _, hash)| *hash);
    let mut other_tips: Vec<String> = known
        .iter()
        .filter(|(hash, _)| !followed.contains(*hash) && Some(**hash) != head_hash)
        .map(|(_, known)| known.name.clone())
        .collect();
    other_tips.sort();
    Ok(Ok(VerifyReport {
        entries: names.len(),
        head,
        other_tips,
    }))
}

/// Checks that an entry follows entries verified before it, and that its
/// sequence number is one above theirs.
fn check_links(opened: &OpenedEntry, known: &HashMap<[u8; 32], Known>) -> Result<(), String> {
    let entry = &opened.entry;
    if entry.seq == 0 {
        if !entry.prev.is_empty() {
            return Err("it is the first entry but links to earlier ones".into());
        }
        return Ok(());
    }
    if entry.prev.is_empty() {
        return Err("it links to no earlier entry".into());
    }
    let mut highest = 0;
    for prev in &entry.prev {
        let Some(earlier) = known.get(prev) else {
            return Err(format!(
                "the entry it follows, with hash {}, is missing: an earlier entry was deleted, changed or renamed",
                &hex::encode(prev)[..16]
            ));
        };
        highest = highest.max(earlier.seq);
    }
    if entry.seq != highest + 1 {
        return Err(format!(
            "its sequence number is not one above the {highest} of the entry it follows"
        ));
    }
    Ok(())
}

/// Applies what a successful key entry changes about which signing key the log
/// binds to a slot name. `init` and `key passwd` bind a key to the acting slot
/// itself. `key add` binds one only to a name that has no binding, or whose
/// binding a `key remove` entry ended, so that one key holder cannot rebind
/// another's name without a removal that the log shows.
fn update_bindings(
    entry: &AuditEntry,
    introduced: &mut HashMap<String, [u8; 32]>,
) -> Result<(), String> {
    if entry.outcome != Outcome::Ok {
        return Ok(());
    }
    if entry.operation == "key remove" {
        for name in entry.arg_values("removed") {
            introduced.remove(name);
        }
        return Ok(());
    }
    let (Some(slot), Some(public)) = (
        entry.arg_values(ARG_SLOT).next(),
        entry.arg_values(ARG_SIGNING_KEY).next(),
    ) else {
        return Ok(());
    };
    let Ok(Ok(public)) = hex::decode(public).map(<[u8; 32]>::try_from) else {
        return Err(format!(
            "its signing key argument {public:?} is not 64 hex characters"
        ));
    };
    let allowed = match entry.operation.as_str() {
        "init" | "key passwd" => slot == entry.key,
        "key add" => !introduced.contains_key(slot),
        _ => return Ok(()),
    };
    if !allowed {
        return Err(format!(
            "{:?} by {:?} binds a signing key to {slot:?}, which only {slot:?} itself may change, or a `key add` after a `key remove`",
            entry.operation, entry.key
        ));
    }
    introduced.insert(slot.to_string(), public);
    Ok(())
}

/// Checks the signature against the keys that may sign in the entry's key name.
fn check_signature(
    repo: &Repository,
    opened: &OpenedEntry,
    bound: &[BoundSigningKey],
    introduced: &HashMap<String, [u8; 32]>,
) -> Result<(), String> {
    let name = &opened.entry.key;
    let candidates: Vec<&BoundSigningKey> = bound.iter().filter(|k| &k.name == name).collect();
    if candidates.is_empty() {
        return Err(format!(
            "the key file has no signing key named {name:?}, current or retired, that the key material binds"
        ));
    }
    let repo_id = repo.keys().repo_id;
    match introduced.get(name) {
        Some(public) => {
            if !candidates.iter().any(|k| &k.signing_public == public) {
                return Err(format!(
                    "the signing key that the log bound to {name:?} is missing from the key file: the key file was changed"
                ));
            }
            if !signature_matches(&repo_id, opened, public) {
                return Err(format!(
                    "its signature does not match the signing key of {name:?}"
                ));
            }
        }
        None => {
            if !candidates
                .iter()
                .any(|k| signature_matches(&repo_id, opened, &k.signing_public))
            {
                return Err(format!(
                    "its signature does not match any signing key of {name:?}"
                ));
            }
        }
    }
    Ok(())
}
