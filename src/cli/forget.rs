use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::prune::print_report;
use super::{Cli, EXIT_OK, audit, open};
use crate::display::{count, escape_path};
use crate::id::SnapshotId;
use crate::prune::{PruneOptions, PruneReport, prune};
use crate::repository::Repository;
use crate::repository::lock::LockGuard;
use crate::retention::{
    CalendarDuration, Decision, GroupBy, GroupKey, Policy, RetentionError, UNLIMITED, apply,
};
use crate::snapshot::Snapshot;
use crate::tree::Timestamp;

#[derive(Debug, Args)]
#[command(after_help = FORGET_HELP)]
pub struct ForgetArgs {
    /// Snapshots to remove, as ids, unique id prefixes or `latest`. No policy is
    /// applied when snapshots are named.
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Keep the N newest snapshots of each group (`unlimited` keeps all).
    #[arg(short = 'l', long, value_name = "N", value_parser = parse_count)]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours that have one.
    #[arg(short = 'H', long, value_name = "N", value_parser = parse_count)]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent days that have one.
    #[arg(short = 'd', long, value_name = "N", value_parser = parse_count)]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent ISO weeks that have one.
    #[arg(short = 'w', long, value_name = "N", value_parser = parse_count)]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent months that have one.
    #[arg(short = 'm', long, value_name = "N", value_parser = parse_count)]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent years that have one.
    #[arg(short = 'y', long, value_name = "N", value_parser = parse_count)]
    keep_yearly: Option<u32>,
    /// Keep every snapshot newer than DURATION before the newest snapshot of its
    /// group, such as 1y6m, 7d or 12h (units y, m, d, h).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<CalendarDuration>,
    /// Keep every snapshot that has this tag (repeatable). An empty value keeps
    /// snapshots without tags.
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Apply the policy separately to snapshots that share these fields:
    /// host,paths, host, paths or none.
    #[arg(short = 'g', long, value_name = "FIELDS", default_value = "host,paths")]
    group_by: GroupBy,
    /// Consider only snapshots of this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Consider only snapshots that have this tag (repeatable, any one matches).
    /// An empty value selects snapshots without tags.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Print what would be removed without removing anything.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Run a prune afterwards to delete the data that only removed snapshots used
    /// (skipped in a dry run).
    #[arg(long)]
    prune: bool,
    /// Seconds to wait while a prune holds the repository lock.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    lock_wait: u64,
    /// Print the decisions as one JSON object.
    #[arg(long)]
    json: bool,
}

const FORGET_HELP: &str = "\
The rules follow restic's `forget`. Each group is visited newest first, and a
snapshot is kept when any rule keeps it. Periods are taken in UTC. A period rule
that still has count left at the oldest snapshot of a group keeps that snapshot
too. Forget removes only snapshot files: run `cairn prune`, or pass --prune, to
delete the data they alone used.";

impl ForgetArgs {
    fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            keep_tags: self.keep_tags.clone(),
        }
    }

    /// True when any option that only a policy uses is given.
    fn has_policy_options(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        counts.iter().any(Option::is_some)
            || self.keep_within.is_some()
            || !self.keep_tags.is_empty()
            || !self.hosts.is_empty()
            || !self.tags.is_empty()
    }

    fn selects(&self, snapshot: &Snapshot) -> bool {
        let host_matches = self.hosts.is_empty() || self.hosts.contains(&snapshot.hostname);
        let tag_matches = self.tags.is_empty()
            || self.tags.iter().any(|tag| {
                if tag.is_empty() {
                    snapshot.tags.is_empty()
                } else {
                    snapshot.tags.contains(tag)
                }
            });
        host_matches && tag_matches
    }
}

/// Parses a `--keep-*` count: a non-negative integer or `unlimited`.
fn parse_count(text: &str) -> Result<u32, String> {
    if text == "unlimited" {
        return Ok(UNLIMITED);
    }
    match text.parse::<u32>() {
        Ok(count) if count != UNLIMITED => Ok(count),
        _ => Err(format!(
            "invalid count {text:?}: use a whole number from 0 to {}, or unlimited",
            UNLIMITED - 1
        )),
    }
}

pub fn run(cli: &Cli, args: &ForgetArgs) -> anyhow::Result<i32> {
    if !args.snapshots.is_empty() {
        if args.has_policy_options() {
            bail!(
                "named snapshots are removed as given: drop the --keep-*, --host and --tag options, or drop the SNAPSHOT arguments to apply a policy"
            );
        }
        return forget_named(cli, args);
    }
    let policy = args.policy();
    if policy.is_empty() {
        return Err(RetentionError::EmptyPolicy.into());
    }
    forget_by_policy(cli, args, &policy)
}

/// Removes the snapshots named on the command line.
fn forget_named(cli: &Cli, args: &ForgetArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    if !args.dry_run {
        repo.backend().check_can_delete("forget")?;
    }
    let lock = take_lock(&repo, args)?;
    let mut chosen: Vec<(SnapshotId, Snapshot)> = Vec::new();
    for spec in &args.snapshots {
        let (id, snapshot) = repo.find_snapshot(spec)?;
        if !chosen.iter().any(|(known, _)| *known == id) {
            chosen.push((id, snapshot));
        }
    }
    let ids: Vec<SnapshotId> = chosen.iter().map(|(id, _)| *id).collect();
    if !args.json {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "remove"
        };
        for (id, snapshot) in &chosen {
            println!(
                "{verb} {} {} {} {}",
                id.short(),
                snapshot.time.to_rfc3339(),
                snapshot.hostname,
                paths_text(snapshot)
            );
        }
    }
    record_removal(args, &ids);
    if let Some(lock) = &lock {
        remove_snapshots(&repo, &ids, lock)?;
    }
    drop(lock);
    let prune_report = run_prune(&repo, args, &ids)?;
    audit::commit_ok();
    if args.json {
        let json = serde_json::json!({
            "type": "summary",
            "dry_run": args.dry_run,
            "policy": null,
            "groups": [],
            "remove": ids.iter().map(SnapshotId::to_hex).collect::<Vec<_>>(),
            "prune": prune_report.as_ref().map(prune_json),
        });
        println!("{}", serde_json::to_string(&json)?);
    } else {
        print_totals(args, ids.len(), prune_report.as_ref());
    }
    Ok(EXIT_OK)
}

/// Applies the policy to the selected snapshots and removes those it does not keep.
fn forget_by_policy(cli: &Cli, args: &ForgetArgs, policy: &Policy) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    if !args.dry_run {
        repo.backend().check_can_delete("forget")?;
    }
    // The lock comes before the listing, so no prune reads the snapshots while
    // some of them disappear.
    let lock = take_lock(&repo, args)?;
    let snapshots: Vec<(SnapshotId, Snapshot)> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, snapshot)| args.selects(snapshot))
        .collect();
    let groups = apply(&snapshots, policy, args.group_by, Timestamp::now())?;
    let by_id: HashMap<SnapshotId, &Snapshot> = snapshots.iter().map(|(id, s)| (*id, s)).collect();

    let ids: Vec<SnapshotId> = groups
        .iter()
        .flat_map(|(_, decisions)| decisions.iter())
        .filter(|decision| !decision.keep)
        .map(|decision| decision.id)
        .collect();
    // In JSON mode the plan goes into one object with the prune report, which
    // is printed at the end.
    if !args.json {
        println!("policy: keep {policy}");
        if snapshots.is_empty() {
            println!("no snapshots match");
        }
        for (key, decisions) in &groups {
            print_group(key, decisions, &by_id);
        }
    }

    // Only a policy made of --keep-tag alone can keep nothing in a group. Restic's
    // forget documentation states that it exits with an error in this case too.
    // Such a plan more likely comes from a mistyped tag than from a wish to delete
    // a whole backup series.
    let emptied: Vec<String> = groups
        .iter()
        .filter(|(_, decisions)| decisions.iter().all(|decision| !decision.keep))
        .map(|(key, _)| format!("\"{key}\""))
        .collect();
    if !emptied.is_empty() {
        if args.json {
            print_policy_json(args, policy, &groups, &by_id, &[], None)?;
        }
        bail!(
            "the policy keeps no snapshot of group {}, so nothing was removed: add a rule that keeps at least one of them, such as --keep-last 1, or remove them by id",
            emptied.join("; ")
        );
    }

    record_removal(args, &ids);
    if let Some(lock) = &lock {
        remove_snapshots(&repo, &ids, lock)?;
    }
    drop(lock);
    let prune_report = run_prune(&repo, args, &ids)?;
    audit::commit_ok();
    if args.json {
        print_policy_json(args, policy, &groups, &by_id, &ids, prune_report.as_ref())?;
    } else {
        print_totals(args, ids.len(), prune_report.as_ref());
    }
    Ok(EXIT_OK)
}

/// Adds the snapshots to remove to the audit log entry.
fn record_removal(args: &ForgetArgs, ids: &[SnapshotId]) {
    audit::arg("dry_run", args.dry_run);
    audit::arg("prune", args.prune && !args.dry_run);
    for id in ids {
        audit::arg("removed", id.to_hex());
    }
}

/// Takes the shared lock that keeps a prune from reading snapshots while they are
/// removed. A dry run removes nothing and takes no lock.
fn take_lock(repo: &Repository, args: &ForgetArgs) -> anyhow::Result<Option<LockGuard>> {
    if args.dry_run {
        return Ok(None);
    }
    let wait = Duration::from_secs(args.lock_wait);
    Ok(Some(repo.lock_shared("forget", wait)?))
}

/// Deletes the snapshot files. The data they refer to stays until a prune.
fn remove_snapshots(repo: &Repository, ids: &[SnapshotId], lock: &LockGuard) -> anyhow::Result<()> {
    lock.check()?;
    for (removed, id) in ids.iter().enumerate() {
        repo.backend()
            .remove(&format!("snapshots/{id}"))
            .with_context(|| {
                format!(
                    "failed to remove snapshot {} after removing {removed} of {} snapshots: run the command again to remove the rest",
                    id.short(),
                    ids.len()
                )
            })?;
        tracing::info!("removed snapshot {id}");
    }
    Ok(())
}

/// Runs the prune that `--prune` requests, when some snapshot was removed. The
/// caller must have released its own lock, because prune waits for an exclusive
/// one.
///
/// A dry run skips the prune: the snapshots it would remove are still in the
/// repository, so a prune dry run would count their data as used and report
/// figures that do not match the real run.
fn run_prune(
    repo: &Repository,
    args: &ForgetArgs,
    removed: &[SnapshotId],
) -> anyhow::Result<Option<PruneReport>> {
    if !args.prune || args.dry_run || removed.is_empty() {
        return Ok(None);
    }
    let options = PruneOptions {
        lock_wait: Duration::from_secs(args.lock_wait),
        ..PruneOptions::default()
    };
    let report = prune(repo, &options).context(
        "the snapshots were removed but the prune failed: run `cairn prune` to delete their data",
    )?;
    Ok(Some(report))
}

fn print_totals(args: &ForgetArgs, removed: usize, prune_report: Option<&PruneReport>) {
    if args.dry_run {
        println!(
            "dry run: would remove {}, removed nothing",
            count(removed as u64, "snapshot")
        );
    } else {
        println!("removed {}", count(removed as u64, "snapshot"));
    }
    match prune_report {
        Some(report) => print_report(report, false),
        None if removed > 0 && args.prune && args.dry_run => {
            println!(
                "dry run: a prune would follow, but its effect cannot be shown before the snapshots are removed"
            )
        }
        None if removed > 0 => {
            println!("run `cairn prune` to delete the data that only these snapshots used")
        }
        None => {}
    }
}

/// Prints one group as a table, oldest snapshot first like `cairn snapshots`.
fn print_group(key: &GroupKey, decisions: &[Decision], by_id: &HashMap<SnapshotId, &Snapshot>) {
    let kept_count = decisions.iter().filter(|decision| decision.keep).count();
    println!();
    println!(
        "{key}: keep {kept_count}, remove {}",
        decisions.len() - kept_count
    );
    let rows: Vec<[String; 7]> = decisions
        .iter()
        .rev()
        .map(|decision| {
            let snapshot = by_id[&decision.id];
            [
                if decision.keep { "keep" } else { "remove" }.to_string(),
                decision.id.short(),
                snapshot.time.to_rfc3339(),
                snapshot.hostname.clone(),
                snapshot.tags.join(","),
                decision.reasons.join(", "),
                paths_text(snapshot),
            ]
        })
        .collect();
    let header = [
        "action",
        "id",
        "time (UTC)",
        "host",
        "tags",
        "reasons",
        "paths",
    ]
    .map(String::from);
    let mut widths = [0usize; 7];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn paths_text(snapshot: &Snapshot) -> String {
    let paths: Vec<String> = snapshot.paths.iter().map(|p| escape_path(p)).collect();
    paths.join(" ")
}

fn print_policy_json(
    args: &ForgetArgs,
    policy: &Policy,
    groups: &[(GroupKey, Vec<Decision>)],
    by_id: &HashMap<SnapshotId, &Snapshot>,
    to_remove: &[SnapshotId],
    prune_report: Option<&PruneReport>,
) -> anyhow::Result<()> {
    let groups: Vec<serde_json::Value> = groups
        .iter()
        .map(|(key, decisions)| {
            let snapshots: Vec<serde_json::Value> = decisions
                .iter()
                .map(|decision| {
                    let snapshot = by_id[&decision.id];
                    serde_json::json!({
                        "id": decision.id.to_hex(),
                        "short_id": decision.id.short(),
                        "time": snapshot.time.to_rfc3339(),
                        "hostname": snapshot.hostname,
                        "paths": snapshot.paths_lossy(),
                        "tags": snapshot.tags,
                        "action": if decision.keep { "keep" } else { "remove" },
                        "reasons": decision.reasons,
                    })
                })
                .collect();
            serde_json::json!({
                "host": key.hostname,
                "paths": key.paths.as_ref().map(|paths| {
                    paths
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect::<Vec<_>>()
                }),
                "snapshots": snapshots,
            })
        })
        .collect();
    let json = serde_json::json!({
        "type": "summary",
        "dry_run": args.dry_run,
        "policy": policy.to_string(),
        "groups": groups,
        "remove": to_remove.iter().map(SnapshotId::to_hex).collect::<Vec<_>>(),
        "prune": prune_report.map(prune_json),
    });
    println!("{}", serde_json::to_string(&json)?);
    Ok(())
}

pub(super) fn prune_json(report: &PruneReport) -> serde_json::Value {
    serde_json::json!({
        "used_blobs": report.used_blobs,
        "unused_blobs": report.unused_blobs,
        "packs_deleted": report.packs_deleted,
        "packs_repacked": report.packs_repacked,
        "packs_unindexed": report.packs_unindexed,
        "bytes_freed": report.bytes_freed,
        "bytes_written": report.bytes_written,
    })
}
