//! `cairn audit` and `cairn audit verify`, and the recording of one audit log
//! entry per command that works on a repository.
//!
//! `cli::run` begins a recording for each audited command, `open` attaches the
//! repository, and the command adds arguments and calls [`commit_ok`] before it
//! prints its result. When the command returns without that, because it
//! failed, [`end`] writes the entry with the error. Recordings nest, because
//! `cairn run` runs other commands through `cli::run`.

use std::cell::RefCell;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::{Cli, EXIT_FAILURE, EXIT_OK, open};
use crate::audit::state::{self, RememberedHead};
use crate::audit::{
    AUDIT_DIR, Appended, AuditArg, AuditEntry, AuditWriter, Outcome, Record, list_entries,
    open_entry,
};
use crate::display::count;
use crate::repository::{RepoError, Repository};

#[derive(Debug, Args)]
#[command(after_help = AUDIT_HELP)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Print one JSON object per entry, one per line.
    #[arg(long)]
    json: bool,
}

impl AuditArgs {
    /// Returns true for `audit verify`, which needs the key material to check
    /// which signing keys a key holder added.
    pub fn verifies(&self) -> bool {
        matches!(self.command, Some(AuditCommand::Verify))
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every entry's seal, signature, sequence number and link, and that
    /// the newest entry this client saw is still there.
    Verify,
}

const AUDIT_HELP: &str = "\
Every command that works on the repository appends a signed entry to its
audit log. `cairn audit` lists the entries oldest first, and `cairn audit
verify` checks them. The client remembers the newest entry it saw in
$CAIRN_STATE_DIR, else $XDG_STATE_HOME/cairn, else ~/.local/state/cairn, so
that verify notices when entries were deleted from the end of the log.";

/// One command's audit entry, while the command runs.
struct Recording {
    operation: String,
    args: Vec<AuditArg>,
    writer: Option<AuditWriter>,
    failure: Option<String>,
    written: bool,
}

thread_local! {
    /// Recordings of the commands that run, innermost last.
    static RECORDINGS: RefCell<Vec<Recording>> = const { RefCell::new(Vec::new()) };
}

fn with_innermost(action: impl FnOnce(&mut Recording)) {
    RECORDINGS.with(|recordings| {
        if let Some(recording) = recordings.borrow_mut().last_mut() {
            action(recording);
        }
    });
}

/// Begins the recording of a command, such as `backup` or `key add`.
pub(super) fn begin(operation: &str) {
    RECORDINGS.with(|recordings| {
        recordings.borrow_mut().push(Recording {
            operation: operation.to_string(),
            args: Vec::new(),
            writer: None,
            failure: None,
            written: false,
        });
    });
}

/// Names the repository whose log receives the entry of the running command.
/// Only the first repository that a command opens is attached.
pub(super) fn attach(repo: &Repository) {
    with_innermost(|recording| {
        if recording.writer.is_none() {
            recording.writer = Some(repo.audit_writer());
        }
    });
}

/// Adds an argument to the entry of the running command.
pub(super) fn arg(name: &str, value: impl ToString) {
    with_innermost(|recording| {
        recording.args.push(AuditArg {
            name: name.to_string(),
            value: value.to_string(),
        });
    });
}

/// Sets the message of a command that ends with a non-zero exit code but no
/// error, such as a check that found damage.
pub(super) fn set_failure(message: impl ToString) {
    with_innermost(|recording| recording.failure = Some(message.to_string()));
}

/// Writes the entry of the running command with the outcome ok. Commands call
/// it before they print their result, so that a success is never reported
/// before it is logged.
pub(super) fn commit_ok() {
    let pending = RECORDINGS.with(|recordings| {
        let mut recordings = recordings.borrow_mut();
        let recording = recordings.last_mut()?;
        if recording.written {
            return None;
        }
        recording.written = true;
        let record = Record {
            operation: recording.operation.clone(),
            args: recording.args.clone(),
            outcome: Outcome::Ok,
        };
        Some((recording.writer.clone()?, record))
    });
    if let Some((writer, record)) = pending {
        write(&writer, record);
    }
}

/// Starts a new entry for the running command, on the same repository, as
/// `mount` does for the unmount after the entry of the mount.
pub(super) fn restart(operation: &str) {
    with_innermost(|recording| {
        recording.operation = operation.to_string();
        recording.args.clear();
        recording.failure = None;
        recording.written = false;
    });
}

/// Ends the recording of a command and writes its entry, unless [`commit_ok`]
/// did. An error of the lock or of the key slots counts as refused, any other
/// as failed.
pub(super) fn end(result: &anyhow::Result<i32>) {
    let Some(recording) = RECORDINGS.with(|recordings| recordings.borrow_mut().pop()) else {
        return;
    };
    let Some(writer) = recording.writer else {
        return;
    };
    if recording.written {
        return;
    }
    let outcome = match result {
        Ok(code) if *code == EXIT_OK || *code == super::EXIT_INCOMPLETE => Outcome::Ok,
        Ok(code) => Outcome::Failed(
            recording
                .failure
                .unwrap_or_else(|| format!("exit code {code}")),
        ),
        Err(error) => {
            let refused = error.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<RepoError>(),
                    Some(
                        RepoError::Locked(_) | RepoError::KeySlot(_) | RepoError::BackupOnly { .. }
                    )
                )
            });
            if refused {
                Outcome::Refused(format!("{error:#}"))
            } else {
                Outcome::Failed(format!("{error:#}"))
            }
        }
    };
    let record = Record {
        operation: recording.operation,
        args: recording.args,
        outcome,
    };
    write(&writer, record);
}

/// Writes an entry to another repository than the attached one, such as the
/// source of a copy.
pub(super) fn write_to(repo: &Repository, record: Record) {
    write(&repo.audit_writer(), record);
}

/// Appends an entry and remembers it as the newest this client saw. A failure
/// is a warning: the command keeps its own result.
fn write(writer: &AuditWriter, record: Record) {
    let operation = record.operation.clone();
    let dir = state::state_dir();
    let remembered = dir
        .as_deref()
        .and_then(|dir| state::load(dir, &writer.repo_id()).ok().flatten());
    match writer.append(record, remembered.as_ref()) {
        Ok(appended) => {
            for warning in &appended.warnings {
                tracing::warn!("{warning}");
            }
            if let Some(dir) = dir {
                remember(&dir, writer.repo_id(), &appended);
            }
        }
        Err(e) => eprintln!(
            "warning: the audit log entry of `{operation}` could not be written to {}: {e}",
            writer.location()
        ),
    }
}

fn remember(dir: &std::path::Path, repo_id: [u8; 16], appended: &Appended) {
    let head = RememberedHead {
        seq: appended.seq,
        name: appended.name.clone(),
        hash: appended.hash,
    };
    if let Err(e) = state::store(dir, &repo_id, &head) {
        tracing::warn!("the newest audit log entry could not be remembered: {e}");
    }
}

pub fn run(cli: &Cli, args: &AuditArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    match args.command {
        Some(AuditCommand::Verify) => verify(&repo),
        None => list(&repo, args.json),
    }
}

fn verify(repo: &Repository) -> anyhow::Result<i32> {
    let repo_id = repo.config().repo_id;
    let dir = state::state_dir();
    let remembered = match &dir {
        Some(dir) => state::load(dir, &repo_id)?,
        None => None,
    };
    let report = match crate::audit::verify(repo, remembered.as_ref())? {
        Ok(report) => report,
        Err(failure) => bail!("{failure}"),
    };
    match &report.head {
        Some((seq, name, hash)) => {
            println!(
                "audit log intact: {}, head {}",
                count(report.entries as u64, "entry"),
                hex::encode(hash)
            );
            if let Some(dir) = &dir {
                let head = RememberedHead {
                    seq: *seq,
                    name: name.clone(),
                    hash: *hash,
                };
                state::store(dir, &repo_id, &head)?;
            }
        }
        None => println!("audit log intact: 0 entries"),
    }
    if !report.other_tips.is_empty() {
        println!(
            "{} entries of concurrent writers are not followed by a later entry yet: {}",
            report.other_tips.len(),
            report.other_tips.join(", ")
        );
    }
    Ok(EXIT_OK)
}

fn list(repo: &Repository, json: bool) -> anyhow::Result<i32> {
    let names = list_entries(repo.backend())?.entries;
    let mut unreadable = 0;
    for (seq, name) in &names {
        let opened = repo
            .backend()
            .read(&format!("{AUDIT_DIR}/{name}"))
            .map_err(|e| e.to_string())
            .and_then(|stored| open_entry(repo.keys(), &stored).map_err(|e| e.to_string()));
        match opened {
            Ok(opened) if json => println!("{}", entry_json(name, &opened.entry)),
            Ok(opened) => println!("{}", entry_line(&opened.entry)),
            Err(e) => {
                unreadable += 1;
                eprintln!(
                    "error: audit entry {seq} ({AUDIT_DIR}/{name}) does not open: {e}; run `cairn audit verify`"
                );
            }
        }
    }
    Ok(if unreadable == 0 {
        EXIT_OK
    } else {
        EXIT_FAILURE
    })
}

/// Formats an entry as one JSON object. Arguments become an object that maps
/// each name to the list of its values.
fn entry_json(name: &str, entry: &AuditEntry) -> String {
    let mut args = serde_json::Map::new();
    for arg in &entry.args {
        let values = args
            .entry(arg.name.clone())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = values {
            values.push(arg.value.clone().into());
        }
    }
    let json = serde_json::json!({
        "seq": entry.seq,
        "file": format!("{AUDIT_DIR}/{name}"),
        "prev": entry.prev.iter().map(hex::encode).collect::<Vec<_>>(),
        "time": entry.time.to_rfc3339(),
        "key": entry.key,
        "host": entry.host,
        "user": entry.user,
        "operation": entry.operation,
        "args": args,
        "outcome": entry.outcome.label(),
        "error": entry.outcome.message(),
    });
    json.to_string()
}

/// Formats an entry as one line, with ids shortened to 8 hex characters.
fn entry_line(entry: &AuditEntry) -> String {
    let args: Vec<String> = entry
        .args
        .iter()
        .map(|arg| {
            let is_id = arg.value.len() == 64 && arg.value.bytes().all(|b| b.is_ascii_hexdigit());
            let value = if is_id { &arg.value[..8] } else { &arg.value };
            format!("{}={value}", arg.name)
        })
        .collect();
    let outcome = match entry.outcome.message() {
        Some(message) => format!("{}: {message}", entry.outcome.label()),
        None => entry.outcome.label().to_string(),
    };
    format!(
        "{:>5}  {}  {:<12} {}@{}  {:<16} {}  {}",
        entry.seq,
        entry.time.to_rfc3339(),
        entry.key,
        entry.user,
        entry.host,
        entry.operation,
        outcome,
        args.join(" ")
    )
}
