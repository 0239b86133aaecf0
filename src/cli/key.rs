use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{Cli, EXIT_OK, audit, open_with_password};
use crate::audit::{ARG_SIGNING_KEY, ARG_SLOT};
use crate::repository::SlotKind;

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

impl KeyArgs {
    /// Returns the operation name of the audit log, or `None` for `key list`.
    pub fn operation(&self) -> Option<&'static str> {
        match self.command {
            KeyCommand::List { .. } => None,
            KeyCommand::Add { .. } => Some("key add"),
            KeyCommand::Remove { .. } => Some("key remove"),
            KeyCommand::Passwd { .. } => Some("key passwd"),
            KeyCommand::Rotate => Some("key rotate"),
        }
    }
}

impl KeyArgs {
    /// Returns what the command does that a backup-only key may not, or
    /// `None` for `key list`.
    pub fn needs_full_key(&self) -> Option<&'static str> {
        match self.command {
            KeyCommand::List { .. } => None,
            KeyCommand::Add { .. } => Some("add keys"),
            KeyCommand::Remove { .. } => Some("remove keys"),
            KeyCommand::Passwd { .. } => {
                Some("change its own password (a full key holder can remove it and add it again)")
            }
            KeyCommand::Rotate => Some("rotate the key"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// List the key slots with their names, creation times and creators.
    List {
        /// Print a JSON array of key objects on one line.
        #[arg(long)]
        json: bool,
    },
    /// Add a named key slot with its own password.
    Add {
        /// Name of the new key, such as a person or a machine.
        #[arg(long)]
        name: String,
        /// File whose first line is the new password; otherwise a prompt.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Make a key that can only add backups: it deduplicates against what
        /// is stored, but cannot open any stored file, tree or snapshot, and
        /// cannot forget, prune or change keys.
        #[arg(long)]
        backup_only: bool,
    },
    /// Remove a key slot; its password stops working at once.
    Remove {
        /// Name of the key to remove.
        name: String,
    },
    /// Change the password of the key that opened the repository.
    Passwd {
        /// File whose first line is the new password; otherwise a prompt.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Add a new encryption epoch: data written from now on is sealed under new
    /// keys that removed keys never held. Every key keeps working.
    #[command(after_help = ROTATE_HELP)]
    Rotate,
}

const ROTATE_HELP: &str = "\
Rotation adds a new epoch secret to the key material and seals it to every
current key slot, so it needs only the password of the key that runs it.
Objects written before the rotation stay readable under their old epoch.

Whoever held a key removed before the rotation and kept its decrypted key
material can still read everything written before the rotation, and can still
compute chunk ids, so can tell whether a file they know is stored. They cannot
decrypt what is written after it. Remove the key first, then rotate.";

fn new_password(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    if let Some(file) = file {
        let text = std::fs::read(file)
            .with_context(|| format!("cannot read password file {}", file.display()))?;
        let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            bail!("password file {} is empty", file.display());
        }
        return Ok(line.to_vec());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no new password given: use --new-password-file, or run on a terminal");
    }
    let first = rpassword::prompt_password("New password: ")?;
    let second = rpassword::prompt_password("Repeat new password: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    if first.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(first.into_bytes())
}

pub fn run(cli: &Cli, args: &KeyArgs) -> anyhow::Result<i32> {
    let (repo, current_password) = open_with_password(cli)?;
    if !matches!(args.command, KeyCommand::List { .. }) {
        repo.backend().check_can_delete("changing keys")?;
    }
    match &args.command {
        KeyCommand::List { json: true } => {
            let list: Vec<_> = repo
                .key_file()?
                .slots
                .iter()
                .map(|slot| {
                    serde_json::json!({
                        "name": slot.name,
                        "kind": slot.kind.label(),
                        "created": slot.created.to_rfc3339(),
                        "created_by": slot.created_by,
                        "current": slot.name == repo.slot_name(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string(&list)?);
        }
        KeyCommand::List { json: false } => {
            println!(
                "{:<2} {:<24} {:<12} {:<21} created by",
                "", "name", "kind", "created (UTC)"
            );
            for slot in repo.key_file()?.slots {
                let current = if slot.name == repo.slot_name() {
                    "*"
                } else {
                    ""
                };
                println!(
                    "{current:<2} {:<24} {:<12} {:<21} {}",
                    slot.name,
                    slot.kind.label(),
                    slot.created.to_rfc3339(),
                    slot.created_by
                );
            }
        }
        KeyCommand::Add {
            name,
            new_password_file,
            backup_only,
        } => {
            repo.require_full_key("add keys")?;
            let password = new_password(new_password_file.as_ref())?;
            let kind = if *backup_only {
                SlotKind::BackupOnly
            } else {
                SlotKind::Full
            };
            audit::arg(ARG_SLOT, name);
            audit::arg("kind", kind.label());
            let signing_public = repo.add_key(name, &password, kind)?;
            audit::arg(ARG_SIGNING_KEY, hex::encode(signing_public));
            audit::commit_ok();
            println!("added {} key {name:?}", kind.label());
        }
        KeyCommand::Remove { name } => {
            audit::arg("removed", name);
            repo.remove_key(name)?;
            audit::commit_ok();
            println!("removed key {name:?}; its password no longer opens the repository");
            println!(
                "note: whoever held it may have kept the decrypted key material; run `cairn key rotate` so that new data is sealed under keys it never held"
            );
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = new_password(new_password_file.as_ref())?;
            let signing_public = repo.change_password(&password)?;
            audit::arg(ARG_SLOT, repo.slot_name());
            audit::arg(ARG_SIGNING_KEY, hex::encode(signing_public));
            audit::commit_ok();
            println!("changed the password of key {:?}", repo.slot_name());
        }
        KeyCommand::Rotate => {
            let epoch = repo.rotate_key(&current_password)?;
            audit::arg("epoch", epoch);
            audit::commit_ok();
            let slots = repo.key_file()?.slots;
            let full = slots
                .iter()
                .filter(|slot| slot.kind == SlotKind::Full)
                .count();
            println!(
                "added key epoch {epoch}; every full key ({full} in all) opens it, every backup-only key ({}) seals to it, and new data is sealed under it",
                slots.len() - full
            );
            println!(
                "note: data written before the rotation stays readable with the old key material; see docs/threat-model.md"
            );
        }
    }
    Ok(EXIT_OK)
}
