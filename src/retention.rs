//! Retention policies: which snapshots `cairn forget` keeps.
//!
//! The rules follow restic's `forget` (`ApplyPolicy` in restic's
//! `internal/restic/snapshot_policy.go`), so that a policy written for restic
//! keeps the same snapshots here:
//!
//! - Snapshots are split into groups, by default by host name and paths, and the
//!   policy is applied to each group on its own.
//! - Within a group, snapshots are visited newest first.
//! - `keep_last` N keeps the N newest snapshots.
//! - `keep_hourly` N keeps the newest snapshot of each of the N most recent hours
//!   that contain a snapshot. Hours without a snapshot are not counted. Daily,
//!   weekly (ISO 8601 week), monthly and yearly rules work the same way. All
//!   calendar periods are taken in UTC, where restic uses the time zone stored in
//!   each snapshot.
//! - When a period rule still has count left at the oldest snapshot of the group,
//!   that snapshot is kept as well, even if a newer snapshot already stands for its
//!   period. Its reason then starts with `oldest`. Current restic does the same,
//!   so that a young repository keeps its first backup.
//! - `keep_within` D keeps every snapshot newer than D before the newest snapshot
//!   of the group, not before the current time. Snapshots dated after `now` are
//!   not taken as the newest, so one wrong clock cannot push the window forward.
//! - `keep_tags` keeps every snapshot that has any of the tags. An empty string
//!   matches snapshots that have no tags at all.
//!
//! A snapshot is kept when any rule keeps it, and its decision lists every rule
//! that did. Differences from restic: restic reads each `--keep-tag` value as a
//! comma-separated list of tags that must all be present, it groups by tags on
//! request, and it has `--keep-within-daily` and similar rules. Cairn has none of
//! these.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc};

use crate::display::escape_path;
use crate::id::SnapshotId;
use crate::snapshot::Snapshot;
use crate::tree::Timestamp;

/// Count that keeps every period (or every snapshot, for `keep_last`), as restic's
/// `unlimited`.
pub const UNLIMITED: u32 = u32::MAX;

/// A span of calendar years, months, days and hours, written like `2y5m7d3h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CalendarDuration {
    /// Calendar years.
    pub years: u32,
    /// Calendar months.
    pub months: u32,
    /// Calendar days.
    pub days: u32,
    /// Hours of 3600 seconds.
    pub hours: u32,
}

impl CalendarDuration {
    /// True when every part is zero, which makes a `keep_within` rule inactive.
    pub fn is_zero(&self) -> bool {
        self.years == 0 && self.months == 0 && self.days == 0 && self.hours == 0
    }

    /// Subtracts the duration from `time`, or returns `None` when the result lies
    /// before the earliest date chrono represents.
    ///
    /// Years, months and days are subtracted in one step as Go's `time.AddDate`
    /// does, which restic uses: a day number past the end of the resulting month
    /// rolls over into the next month. One month before 31 March 2025 is therefore
    /// 3 March 2025, not 28 February. The hours are subtracted afterwards.
    pub fn subtract_from(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let month_index = i64::from(time.year()) * 12 + i64::from(time.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(month_index.div_euclid(12)).ok()?;
        let month = u32::try_from(month_index.rem_euclid(12)).ok()? + 1;
        let first_of_month = NaiveDate::from_ymd_opt(year, month, 1)?;
        let day_offset = i64::from(time.day()) - 1 - i64::from(self.days);
        let date = first_of_month.checked_add_signed(TimeDelta::try_days(day_offset)?)?;
        let shifted = date.and_time(time.time()).and_utc();
        shifted.checked_sub_signed(TimeDelta::try_hours(i64::from(self.hours))?)
    }
}

impl fmt::Display for CalendarDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0h");
        }
        let parts = [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ];
        for (value, unit) in parts {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

/// Error of parsing a [`CalendarDuration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason}; write numbers with the units y (years), m (months), d (days) and h (hours), such as 2y5m7d3h"
)]
pub struct ParseDurationError {
    /// The text that failed to parse.
    pub input: String,
    /// Description of the problem.
    pub reason: String,
}

impl FromStr for CalendarDuration {
    type Err = ParseDurationError;

    /// Parses `2y5m7d3h`: each part is a decimal number followed by one of the
    /// units `y`, `m`, `d` or `h`, in any order, each unit at most once.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| ParseDurationError {
            input: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(error("it is empty".into()));
        }
        let mut duration = CalendarDuration::default();
        let mut seen = String::new();
        let mut rest = trimmed;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(error(format!("expected a number at {rest:?}")));
            }
            let (number, after) = rest.split_at(digits);
            let value: u32 = number
                .parse()
                .map_err(|_| error(format!("{number} is larger than {}", u32::MAX)))?;
            let mut chars = after.chars();
            let unit = chars
                .next()
                .ok_or_else(|| error(format!("the number {number} has no unit")))?;
            if seen.contains(unit) {
                return Err(error(format!("the unit {unit} appears twice")));
            }
            let field = match unit {
                'y' => &mut duration.years,
                'm' => &mut duration.months,
                'd' => &mut duration.days,
                'h' => &mut duration.hours,
                other => return Err(error(format!("unknown unit {other:?}"))),
            };
            *field = value;
            seen.push(unit);
            rest = chars.as_str();
        }
        Ok(duration)
    }
}

/// The rules that decide which snapshots of a group are kept. `None`, a count of
/// 0 and a zero duration all leave a rule inactive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Number of newest snapshots to keep.
    pub keep_last: Option<u32>,
    /// Number of most recent hours with a snapshot whose newest snapshot is kept.
    pub keep_hourly: Option<u32>,
    /// Number of most recent days with a snapshot whose newest snapshot is kept.
    pub keep_daily: Option<u32>,
    /// Number of most recent ISO weeks with a snapshot whose newest snapshot is kept.
    pub keep_weekly: Option<u32>,
    /// Number of most recent months with a snapshot whose newest snapshot is kept.
    pub keep_monthly: Option<u32>,
    /// Number of most recent years with a snapshot whose newest snapshot is kept.
    pub keep_yearly: Option<u32>,
    /// Span before the group's newest snapshot in which every snapshot is kept.
    pub keep_within: Option<CalendarDuration>,
    /// Tags that keep every snapshot carrying any of them. An empty string
    /// matches snapshots without tags.
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// True when no rule is active, so applying the policy would remove everything.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        counts.iter().all(|count| count.unwrap_or(0) == 0)
            && self.keep_within.is_none_or(|within| within.is_zero())
            && self.keep_tags.is_empty()
    }

    /// Returns the active count rules, newest-snapshot rule first.
    fn count_rules(&self) -> Vec<(Rule, u32)> {
        let rules = [
            (Rule::Last, self.keep_last),
            (Rule::Period(Period::Hour), self.keep_hourly),
            (Rule::Period(Period::Day), self.keep_daily),
            (Rule::Period(Period::Week), self.keep_weekly),
            (Rule::Period(Period::Month), self.keep_monthly),
            (Rule::Period(Period::Year), self.keep_yearly),
        ];
        rules
            .into_iter()
            .filter_map(|(rule, count)| count.filter(|n| *n > 0).map(|n| (rule, n)))
            .collect()
    }
}

impl fmt::Display for Policy {
    /// Writes the active rules in the words of the decision reasons, such as
    /// `last 3, daily 7, within 7d, tag important`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (rule, count) in self.count_rules() {
            let count = if count == UNLIMITED {
                "unlimited".to_string()
            } else {
                count.to_string()
            };
            parts.push(format!("{} {count}", rule.name()));
        }
        if let Some(within) = self.keep_within.filter(|within| !within.is_zero()) {
            parts.push(format!("within {within}"));
        }
        for tag in &self.keep_tags {
            parts.push(tag_reason(tag));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Snapshot fields whose values must match for two snapshots to share a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// Same host name and same set of paths, as restic does by default.
    #[default]
    HostAndPaths,
    /// Same host name.
    Host,
    /// Same set of paths.
    Paths,
    /// All snapshots form one group.
    None,
}

/// Error of parsing a [`GroupBy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grouping {0:?}: use host,paths, host, paths or none")]
pub struct ParseGroupByError(pub String);

impl FromStr for GroupBy {
    type Err = ParseGroupByError;

    /// Parses a comma-separated list of `host` and `paths` (restic also accepts
    /// `hosts` and `path`), or `none`. An empty string means `none`, as in restic.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "none" {
            return Ok(GroupBy::None);
        }
        let mut host = false;
        let mut paths = false;
        for part in text.split(',').map(str::trim) {
            match part {
                "host" | "hosts" => host = true,
                "paths" | "path" => paths = true,
                "" => {}
                _ => return Err(ParseGroupByError(text.to_string())),
            }
        }
        Ok(match (host, paths) {
            (true, true) => GroupBy::HostAndPaths,
            (true, false) => GroupBy::Host,
            (false, true) => GroupBy::Paths,
            (false, false) => GroupBy::None,
        })
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupBy::HostAndPaths => "host,paths",
            GroupBy::Host => "host",
            GroupBy::Paths => "paths",
            GroupBy::None => "none",
        })
    }
}

/// The values that snapshots of one group share. A field is `None` when the
/// grouping ignores it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// Host name of every snapshot in the group.
    pub hostname: Option<String>,
    /// Backed-up paths of every snapshot in the group, sorted.
    pub paths: Option<Vec<Vec<u8>>>,
}

impl GroupKey {
    fn of(snapshot: &Snapshot, group_by: GroupBy) -> Self {
        let by_host = matches!(group_by, GroupBy::HostAndPaths | GroupBy::Host);
        let by_paths = matches!(group_by, GroupBy::HostAndPaths | GroupBy::Paths);
        Self {
            hostname: by_host.then(|| snapshot.hostname.clone()),
            paths: by_paths.then(|| {
                let mut paths = snapshot.paths.clone();
                paths.sort();
                paths
            }),
        }
    }
}

impl fmt::Display for GroupKey {
    /// Writes `host H, paths /a /b`, or `all snapshots` when nothing is grouped on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(hostname) = &self.hostname {
            parts.push(format!("host {hostname}"));
        }
        if let Some(paths) = &self.paths {
            let escaped: Vec<String> = paths.iter().map(|p| escape_path(p)).collect();
            parts.push(format!("paths {}", escaped.join(" ")));
        }
        if parts.is_empty() {
            return f.write_str("all snapshots");
        }
        f.write_str(&parts.join(", "))
    }
}

/// The outcome of the policy for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// True when at least one rule keeps the snapshot.
    pub keep: bool,
    /// Every rule that keeps it, such as `last 2 of 3`, `daily 2026-11-30`,
    /// `oldest monthly 2026-11`, `within 7d` or `tag important`. Empty when the
    /// snapshot is removed.
    pub reasons: Vec<String>,
}

/// Error of applying a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// The policy has no active rule.
    #[error(
        "the retention policy has no rule, so it would remove every snapshot: give at least one rule such as --keep-last 1, or name the snapshots to remove"
    )]
    EmptyPolicy,
}

/// Applies the policy to every group and returns, per group, one decision for
/// each snapshot, newest first. Groups are ordered by their key.
///
/// `now` only decides which snapshots are dated in the future, which
/// `keep_within` does not take as the newest snapshot. Returns
/// [`RetentionError::EmptyPolicy`] when the policy has no active rule.
pub fn apply(
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    now: Timestamp,
) -> Result<Vec<(GroupKey, Vec<Decision>)>, RetentionError> {
    if policy.is_empty() {
        return Err(RetentionError::EmptyPolicy);
    }
    let mut groups: BTreeMap<GroupKey, Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for entry in snapshots {
        groups
            .entry(GroupKey::of(&entry.1, group_by))
            .or_default()
            .push(entry);
    }
    let now = to_utc(now);
    Ok(groups
        .into_iter()
        .map(|(key, mut group)| {
            // Ties in time fall back to the id, so the order does not depend on
            // the order of the input.
            group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
            (key, apply_to_group(&group, policy, now))
        })
        .collect())
}

/// A count rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Last,
    Period(Period),
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Period(Period::Hour) => "hourly",
            Rule::Period(Period::Day) => "daily",
            Rule::Period(Period::Week) => "weekly",
            Rule::Period(Period::Month) => "monthly",
            Rule::Period(Period::Year) => "yearly",
        }
    }
}

/// A calendar period in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// Returns the name of the period that contains `time`, such as
    /// `2026-11-30 14:00`, `2026-11-30`, `2026-W48`, `2026-11` or `2026`. Two
    /// times get the same name exactly when they fall into the same period.
    fn label(self, time: DateTime<Utc>) -> String {
        match self {
            Period::Hour => format!("{} {:02}:00", time.format("%Y-%m-%d"), time.hour()),
            Period::Day => time.format("%Y-%m-%d").to_string(),
            Period::Week => {
                let week = time.iso_week();
                format!("{}-W{:02}", week.year(), week.week())
            }
            Period::Month => time.format("%Y-%m").to_string(),
            Period::Year => time.year().to_string(),
        }
    }
}

/// State of one count rule while a group is visited newest first.
struct Counter {
    rule: Rule,
    count: u32,
    remaining: u32,
    last_label: Option<String>,
}

/// Decides for one group, whose snapshots are sorted newest first.
fn apply_to_group(
    group: &[&(SnapshotId, Snapshot)],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut counters: Vec<Counter> = policy
        .count_rules()
        .into_iter()
        .map(|(rule, count)| Counter {
            rule,
            count,
            remaining: count,
            last_label: None,
        })
        .collect();
    let within = policy.keep_within.filter(|within| !within.is_zero());
    let within_start = within.map(|within| within_start(group, within, now));
    let mut keep_tags: Vec<&String> = Vec::new();
    for tag in &policy.keep_tags {
        if !keep_tags.contains(&tag) {
            keep_tags.push(tag);
        }
    }

    let mut decisions = Vec::with_capacity(group.len());
    for (position, (id, snapshot)) in group.iter().enumerate() {
        let time = to_utc(snapshot.time);
        let is_oldest = position + 1 == group.len();
        let mut reasons = Vec::new();

        for tag in &keep_tags {
            let matches = if tag.is_empty() {
                snapshot.tags.is_empty()
            } else {
                snapshot.tags.contains(tag)
            };
            if matches {
                reasons.push(tag_reason(tag));
            }
        }

        if let (Some(within), Some(start)) = (within, within_start) {
            // `None` means the window reaches back before any representable time.
            if start.is_none_or(|start| time > start) {
                reasons.push(format!("within {within}"));
            }
        }

        for counter in &mut counters {
            if counter.remaining == 0 {
                continue;
            }
            let reason = match counter.rule {
                Rule::Last => {
                    let rank = counter.count - counter.remaining + 1;
                    if counter.count == UNLIMITED {
                        format!("last {rank}")
                    } else {
                        format!("last {rank} of {}", counter.count)
                    }
                }
                Rule::Period(period) => {
                    let label = period.label(time);
                    let same_period = counter.last_label.as_deref() == Some(label.as_str());
                    if same_period && !is_oldest {
                        continue;
                    }
                    let reason = if same_period {
                        format!("oldest {} {label}", counter.rule.name())
                    } else {
                        format!("{} {label}", counter.rule.name())
                    };
                    counter.last_label = Some(label);
                    reason
                }
            };
            if counter.count != UNLIMITED {
                counter.remaining -= 1;
            }
            reasons.push(reason);
        }

        decisions.push(Decision {
            id: *id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    decisions
}

/// Returns the exclusive start of the `keep_within` window of a group, or `None`
/// when the window reaches back before the earliest representable time.
///
/// The window ends at the newest snapshot dated before `now`. When every snapshot
/// is dated after `now`, the window has no start, as in restic, whose reference
/// time then stays at Go's zero time.
fn within_start(
    group: &[&(SnapshotId, Snapshot)],
    within: CalendarDuration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let newest = group
        .iter()
        .map(|(_, snapshot)| to_utc(snapshot.time))
        .filter(|time| *time < now)
        .max()?;
    within.subtract_from(newest)
}

fn tag_reason(tag: &str) -> String {
    if tag.is_empty() {
        "no tags".to_string()
    } else {
        format!("tag {tag}")
    }
}

/// Converts a snapshot time to chrono. Times outside chrono's range, about
/// 262,000 years either side of year 0, are clamped to its ends.
fn to_utc(time: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(time.secs, time.nanos).unwrap_or(if time.secs < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TreeId;
    use crate::snapshot::BackupSummary;

    fn timestamp(text: &str) -> Timestamp {
        let time = DateTime::parse_from_rfc3339(text).expect("valid RFC 3339 time in test");
        Timestamp {
            secs: time.timestamp(),
            nanos: time.timestamp_subsec_nanos(),
        }
    }

    fn snapshot(time: Timestamp, hostname: &str, paths: &[&str], tags: &[&str]) -> Snapshot {
        Snapshot {
            time,
            hostname: hostname.to_string(),
            username: "user".to_string(),
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
            tree: TreeId([0; 32]),
            parent: None,
            original: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            incomplete: false,
            program_version: "test".to_string(),
            summary: BackupSummary::default(),
        }
    }

    /// Makes an id whose first bytes are `n`, so ids differ and sort by `n`.
    fn id(n: usize) -> SnapshotId {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
        SnapshotId(bytes)
    }

    /// Builds one group of snapshots on one host and path from (time, tags) pairs.
    fn group_of(entries: &[(&str, &[&str])]) -> Vec<(SnapshotId, Snapshot)> {
        entries
            .iter()
            .enumerate()
            .map(|(n, (time, tags))| (id(n), snapshot(timestamp(time), "h", &["/data"], tags)))
            .collect()
    }

    /// Applies `policy` to one group and returns the kept snapshots as
    /// (time, reasons), newest first.
    fn kept(
        snapshots: &[(SnapshotId, Snapshot)],
        policy: &Policy,
        now: &str,
    ) -> Vec<(String, Vec<String>)> {
        let groups = apply(snapshots, policy, GroupBy::HostAndPaths, timestamp(now))
            .expect("policy is not empty");
        assert_eq!(groups.len(), 1, "test snapshots form one group");
        let by_id: BTreeMap<SnapshotId, &Snapshot> =
            snapshots.iter().map(|(id, s)| (*id, s)).collect();
        groups[0]
            .1
            .iter()
            .filter(|decision| decision.keep)
            .map(|decision| {
                let time = by_id[&decision.id].time.to_rfc3339();
                (time, decision.reasons.clone())
            })
            .collect()
    }

    fn kept_times(snapshots: &[(SnapshotId, Snapshot)], policy: &Policy, now: &str) -> Vec<String> {
        kept(snapshots, policy, now)
            .into_iter()
            .map(|(time, _)| time)
            .collect()
    }

    const LATER: &str = "2100-01-01T00:00:00Z";

    struct Case {
        name: &'static str,
        snapshots: &'static [(&'static str, &'static [&'static str])],
        policy: Policy,
        now: &'static str,
        /// Times of the kept snapshots, newest first.
        expected: &'static [&'static str],
    }

    #[test]
    fn apply_table_of_cases() {
        let cases = [
            Case {
                name: "keep-last keeps the newest",
                snapshots: &[
                    ("2025-01-01T00:00:00Z", &[]),
                    ("2025-01-02T00:00:00Z", &[]),
                    ("2025-01-03T00:00:00Z", &[]),
                    ("2025-01-04T00:00:00Z", &[]),
                    ("2025-01-05T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_last: Some(3),
                    ..Policy::default()
                },
                now: LATER,
                expected: &[
                    "2025-01-05T00:00:00Z",
                    "2025-01-04T00:00:00Z",
                    "2025-01-03T00:00:00Z",
                ],
            },
            Case {
                name: "keep-last larger than the group keeps all",
                snapshots: &[("2025-01-01T00:00:00Z", &[]), ("2025-01-02T00:00:00Z", &[])],
                policy: Policy {
                    keep_last: Some(10),
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-02T00:00:00Z", "2025-01-01T00:00:00Z"],
            },
            Case {
                name: "hourly keeps the newest of each hour",
                snapshots: &[
                    ("2025-01-01T08:10:00Z", &[]),
                    ("2025-01-01T09:05:00Z", &[]),
                    ("2025-01-01T09:36:51Z", &[]),
                    ("2025-01-01T09:41:06Z", &[]),
                    ("2025-01-01T10:05:00Z", &[]),
                ],
                policy: Policy {
                    keep_hourly: Some(2),
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-01T10:05:00Z", "2025-01-01T09:41:06Z"],
            },
            Case {
                name: "hourly with count left keeps the oldest too",
                snapshots: &[
                    ("2025-01-01T09:36:51Z", &[]),
                    ("2025-01-01T09:41:06Z", &[]),
                    ("2025-01-01T10:05:00Z", &[]),
                ],
                policy: Policy {
                    keep_hourly: Some(24),
                    ..Policy::default()
                },
                now: LATER,
                expected: &[
                    "2025-01-01T10:05:00Z",
                    "2025-01-01T09:41:06Z",
                    "2025-01-01T09:36:51Z",
                ],
            },
            Case {
                name: "daily skips days without snapshots",
                snapshots: &[
                    ("2025-01-01T12:00:00Z", &[]),
                    ("2025-01-05T12:00:00Z", &[]),
                    ("2025-01-09T12:00:00Z", &[]),
                    ("2025-01-09T13:00:00Z", &[]),
                    ("2025-01-10T12:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_daily: Some(3),
                    ..Policy::default()
                },
                now: LATER,
                expected: &[
                    "2025-01-10T12:00:00Z",
                    "2025-01-09T13:00:00Z",
                    "2025-01-05T12:00:00Z",
                ],
            },
            Case {
                name: "daily boundary is midnight UTC",
                snapshots: &[
                    ("2025-01-01T23:59:59Z", &[]),
                    ("2025-01-02T00:00:00Z", &[]),
                    ("2025-01-02T00:00:01Z", &[]),
                ],
                policy: Policy {
                    keep_daily: Some(2),
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-02T00:00:01Z", "2025-01-01T23:59:59Z"],
            },
            Case {
                // 2025-01-05 is a Sunday and 2025-01-06 a Monday, so they are in
                // ISO weeks 2025-W01 and 2025-W02. Monday 2024-12-30 already
                // belongs to 2025-W01.
                name: "weekly uses ISO weeks across new year",
                snapshots: &[
                    ("2024-12-29T12:00:00Z", &[]),
                    ("2024-12-30T12:00:00Z", &[]),
                    ("2025-01-05T23:59:59Z", &[]),
                    ("2025-01-06T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_weekly: Some(2),
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-06T00:00:00Z", "2025-01-05T23:59:59Z"],
            },
            Case {
                name: "monthly and yearly",
                snapshots: &[
                    ("2023-06-01T00:00:00Z", &[]),
                    ("2023-12-31T00:00:00Z", &[]),
                    ("2024-01-15T00:00:00Z", &[]),
                    ("2024-01-31T00:00:00Z", &[]),
                    ("2024-02-01T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_monthly: Some(2),
                    keep_yearly: Some(2),
                    ..Policy::default()
                },
                now: LATER,
                expected: &[
                    "2024-02-01T00:00:00Z",
                    "2024-01-31T00:00:00Z",
                    "2023-12-31T00:00:00Z",
                ],
            },
            Case {
                name: "unlimited daily keeps one per day",
                snapshots: &[
                    ("2020-01-01T01:00:00Z", &[]),
                    ("2020-01-01T02:00:00Z", &[]),
                    ("2021-06-01T01:00:00Z", &[]),
                    ("2021-06-01T02:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_daily: Some(UNLIMITED),
                    ..Policy::default()
                },
                now: LATER,
                // The oldest is kept as well, because an unlimited count never runs out.
                expected: &[
                    "2021-06-01T02:00:00Z",
                    "2020-01-01T02:00:00Z",
                    "2020-01-01T01:00:00Z",
                ],
            },
            Case {
                // The window is measured back from the newest snapshot, 2025-01-10
                // 00:00, not from `now`, and its start is excluded.
                name: "within counts from newest snapshot",
                snapshots: &[
                    ("2025-01-02T23:59:59Z", &[]),
                    ("2025-01-03T00:00:00Z", &[]),
                    ("2025-01-03T00:00:01Z", &[]),
                    ("2025-01-10T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_within: Some(CalendarDuration {
                        days: 7,
                        ..CalendarDuration::default()
                    }),
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-10T00:00:00Z", "2025-01-03T00:00:01Z"],
            },
            Case {
                // One month before 31 March rolls over from 31 February to 3 March.
                name: "within one month rolls over",
                snapshots: &[
                    ("2025-02-28T12:00:00Z", &[]),
                    ("2025-03-03T12:00:00Z", &[]),
                    ("2025-03-03T12:00:01Z", &[]),
                    ("2025-03-31T12:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_within: Some(CalendarDuration {
                        months: 1,
                        ..CalendarDuration::default()
                    }),
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-03-31T12:00:00Z", "2025-03-03T12:00:01Z"],
            },
            Case {
                // The snapshot of 2030 lies after `now`, so the window ends at the
                // 2025-01-10 snapshot. The future snapshot is inside the window too.
                name: "within ignores future snapshots as newest",
                snapshots: &[
                    ("2025-01-01T00:00:00Z", &[]),
                    ("2025-01-09T00:00:00Z", &[]),
                    ("2025-01-10T00:00:00Z", &[]),
                    ("2030-01-01T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_within: Some(CalendarDuration {
                        days: 2,
                        ..CalendarDuration::default()
                    }),
                    ..Policy::default()
                },
                now: "2025-02-01T00:00:00Z",
                expected: &[
                    "2030-01-01T00:00:00Z",
                    "2025-01-10T00:00:00Z",
                    "2025-01-09T00:00:00Z",
                ],
            },
            Case {
                name: "within keeps all when all are future",
                snapshots: &[("2030-01-01T00:00:00Z", &[]), ("2031-01-01T00:00:00Z", &[])],
                policy: Policy {
                    keep_within: Some(CalendarDuration {
                        hours: 1,
                        ..CalendarDuration::default()
                    }),
                    ..Policy::default()
                },
                now: "2025-01-01T00:00:00Z",
                expected: &["2031-01-01T00:00:00Z", "2030-01-01T00:00:00Z"],
            },
            Case {
                name: "keep-tag keeps any listed tag",
                snapshots: &[
                    ("2025-01-01T00:00:00Z", &["important"]),
                    ("2025-01-02T00:00:00Z", &["other"]),
                    ("2025-01-03T00:00:00Z", &["x", "audit"]),
                    ("2025-01-04T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_tags: vec!["important".into(), "audit".into()],
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-03T00:00:00Z", "2025-01-01T00:00:00Z"],
            },
            Case {
                name: "empty keep-tag keeps untagged",
                snapshots: &[
                    ("2025-01-01T00:00:00Z", &["a"]),
                    ("2025-01-02T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_tags: vec![String::new()],
                    ..Policy::default()
                },
                now: LATER,
                expected: &["2025-01-02T00:00:00Z"],
            },
            Case {
                name: "rules combine with or",
                snapshots: &[
                    ("2024-05-01T00:00:00Z", &["keep"]),
                    ("2024-12-01T00:00:00Z", &[]),
                    ("2025-01-01T00:00:00Z", &[]),
                    ("2025-01-02T00:00:00Z", &[]),
                ],
                policy: Policy {
                    keep_last: Some(1),
                    keep_yearly: Some(2),
                    keep_tags: vec!["keep".into()],
                    ..Policy::default()
                },
                now: LATER,
                expected: &[
                    "2025-01-02T00:00:00Z",
                    "2024-12-01T00:00:00Z",
                    "2024-05-01T00:00:00Z",
                ],
            },
        ];
        for case in cases {
            let snapshots = group_of(case.snapshots);
            let got = kept_times(&snapshots, &case.policy, case.now);
            assert_eq!(got, case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn apply_lists_every_reason() {
        let snapshots = group_of(&[
            ("2025-01-01T09:00:00Z", &[]),
            ("2025-03-31T10:00:00Z", &["important"]),
        ]);
        let policy = Policy {
            keep_last: Some(1),
            keep_daily: Some(1),
            keep_weekly: Some(1),
            keep_monthly: Some(1),
            keep_yearly: Some(1),
            keep_hourly: Some(1),
            keep_within: Some("1d".parse().expect("valid duration")),
            keep_tags: vec!["important".into()],
        };
        let got = kept(&snapshots, &policy, LATER);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "2025-03-31T10:00:00Z");
        assert_eq!(
            got[0].1,
            [
                "tag important",
                "within 1d",
                "last 1 of 1",
                "hourly 2025-03-31 10:00",
                "daily 2025-03-31",
                "weekly 2025-W14",
                "monthly 2025-03",
                "yearly 2025",
            ]
        );
    }

    #[test]
    fn apply_marks_oldest_reason() {
        let snapshots = group_of(&[
            ("2025-01-01T09:00:00Z", &[]),
            ("2025-01-01T10:00:00Z", &[]),
            ("2025-02-01T10:00:00Z", &[]),
        ]);
        let policy = Policy {
            keep_monthly: Some(12),
            ..Policy::default()
        };
        let got = kept(&snapshots, &policy, LATER);
        let expected = [
            ("2025-02-01T10:00:00Z", vec!["monthly 2025-02"]),
            ("2025-01-01T10:00:00Z", vec!["monthly 2025-01"]),
            ("2025-01-01T09:00:00Z", vec!["oldest monthly 2025-01"]),
        ];
        assert_eq!(got.len(), expected.len());
        for ((time, reasons), (expected_time, expected_reasons)) in got.iter().zip(expected) {
            assert_eq!(time, expected_time);
            assert_eq!(reasons, &expected_reasons);
        }
    }

    #[test]
    fn apply_rejects_empty_policy() {
        let snapshots = group_of(&[("2025-01-01T00:00:00Z", &[])]);
        let now = timestamp(LATER);
        let empty_policies = [
            Policy::default(),
            Policy {
                keep_last: Some(0),
                keep_daily: Some(0),
                ..Policy::default()
            },
            Policy {
                keep_within: Some(CalendarDuration::default()),
                ..Policy::default()
            },
        ];
        for policy in empty_policies {
            let result = apply(&snapshots, &policy, GroupBy::HostAndPaths, now);
            assert_eq!(
                result,
                Err(RetentionError::EmptyPolicy),
                "policy {policy:?}"
            );
        }
    }

    #[test]
    fn apply_on_no_snapshots_is_empty() {
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let groups = apply(&[], &policy, GroupBy::HostAndPaths, timestamp(LATER));
        assert_eq!(groups, Ok(Vec::new()));
    }

    #[test]
    fn apply_groups_by_host_and_paths() {
        let time = timestamp("2025-01-01T00:00:00Z");
        let snapshots = vec![
            (id(0), snapshot(time, "a", &["/x", "/y"], &[])),
            (id(1), snapshot(time, "a", &["/y", "/x"], &[])),
            (id(2), snapshot(time, "a", &["/z"], &[])),
            (id(3), snapshot(time, "b", &["/x", "/y"], &[])),
        ];
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let now = timestamp(LATER);
        let sizes = |group_by: GroupBy| -> Vec<(String, usize)> {
            apply(&snapshots, &policy, group_by, now)
                .expect("policy is not empty")
                .into_iter()
                .map(|(key, decisions)| (key.to_string(), decisions.len()))
                .collect()
        };
        assert_eq!(
            sizes(GroupBy::HostAndPaths),
            [
                ("host a, paths /x /y".to_string(), 2),
                ("host a, paths /z".to_string(), 1),
                ("host b, paths /x /y".to_string(), 1),
            ]
        );
        assert_eq!(
            sizes(GroupBy::Host),
            [("host a".to_string(), 3), ("host b".to_string(), 1)]
        );
        assert_eq!(
            sizes(GroupBy::Paths),
            [("paths /x /y".to_string(), 3), ("paths /z".to_string(), 1)]
        );
        assert_eq!(sizes(GroupBy::None), [("all snapshots".to_string(), 4)]);
    }

    #[test]
    fn apply_breaks_time_ties_by_id() {
        let time = timestamp("2025-01-01T00:00:00Z");
        let snapshots = vec![
            (id(1), snapshot(time, "h", &["/data"], &[])),
            (id(2), snapshot(time, "h", &["/data"], &[])),
        ];
        let reversed: Vec<_> = snapshots.iter().rev().cloned().collect();
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let now = timestamp(LATER);
        for input in [&snapshots, &reversed] {
            let groups = apply(input, &policy, GroupBy::HostAndPaths, now).expect("not empty");
            let decisions = &groups[0].1;
            assert_eq!(decisions[0].id, id(2));
            assert!(decisions[0].keep);
            assert_eq!(decisions[1].id, id(1));
            assert!(!decisions[1].keep);
        }
    }

    /// Policy `--keep-daily 7 --keep-weekly 4 --keep-monthly 12` on 400 snapshots.
    ///
    /// Input: one snapshot every 6 hours from 2025-01-01T00:00:00Z, 400 in all,
    /// so the last regular one is at 2025-04-10T18:00:00Z (99 days and 18 hours
    /// later). The 4 regular snapshots of 2025-04-08 are left out, so that day has
    /// none. Four extras make 400 snapshots:
    ///
    /// - E0 2024-12-29T12:00:00Z (a Sunday, ISO week 2024-W52)
    /// - E1 2024-12-30T12:00:00Z (a Monday, ISO week 2025-W01)
    /// - E2 2025-01-31T23:00:00Z (newest of January, after the 18:00 regular one)
    /// - E3 2025-04-06T23:59:59Z (a Sunday, newest of that day and of 2025-W14)
    ///
    /// Expected, worked out by hand, newest first:
    ///
    /// - daily 7: the newest of the 7 most recent days that have snapshots, which
    ///   are 10, 9, 7, 6, 5, 4 and 3 April (8 April has none). Each is the 18:00
    ///   snapshot, except 6 April, whose newest is E3.
    /// - weekly 4: ISO weeks run Monday to Sunday, and 2025-W01 starts on
    ///   2024-12-30. The 4 most recent weeks and their newest snapshots are W15
    ///   (7 to 13 April, 04-10T18:00), W14 (31 March to 6 April, E3), W13
    ///   (03-30T18:00) and W12 (03-23T18:00).
    /// - monthly 12: April (04-10T18:00), March (03-31T18:00), February
    ///   (02-28T18:00), January (E2) and December 2024 (E1) are the only 5 months,
    ///   so count is left at the oldest snapshot, E0. It is in the same month as
    ///   E1 and is kept as "oldest monthly".
    ///
    /// That makes 14 kept snapshots and 386 removed.
    #[test]
    fn apply_daily_weekly_monthly_on_400_snapshots() {
        let start = timestamp("2025-01-01T00:00:00Z").secs;
        let gap_start = timestamp("2025-04-08T00:00:00Z").secs;
        let gap_end = timestamp("2025-04-09T00:00:00Z").secs;
        let mut times: Vec<i64> = (0..400)
            .map(|i| start + i * 6 * 3600)
            .filter(|secs| !(gap_start..gap_end).contains(secs))
            .collect();
        assert_eq!(times.len(), 396);
        for extra in [
            "2024-12-29T12:00:00Z",
            "2024-12-30T12:00:00Z",
            "2025-01-31T23:00:00Z",
            "2025-04-06T23:59:59Z",
        ] {
            times.push(timestamp(extra).secs);
        }
        let snapshots: Vec<(SnapshotId, Snapshot)> = times
            .iter()
            .enumerate()
            .map(|(n, secs)| {
                let time = Timestamp {
                    secs: *secs,
                    nanos: 0,
                };
                (id(n), snapshot(time, "h", &["/data"], &[]))
            })
            .collect();
        assert_eq!(snapshots.len(), 400);

        let policy = Policy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            keep_monthly: Some(12),
            ..Policy::default()
        };
        let got = kept(&snapshots, &policy, LATER);
        let expected: [(&str, &[&str]); 14] = [
            (
                "2025-04-10T18:00:00Z",
                &["daily 2025-04-10", "weekly 2025-W15", "monthly 2025-04"],
            ),
            ("2025-04-09T18:00:00Z", &["daily 2025-04-09"]),
            ("2025-04-07T18:00:00Z", &["daily 2025-04-07"]),
            (
                "2025-04-06T23:59:59Z",
                &["daily 2025-04-06", "weekly 2025-W14"],
            ),
            ("2025-04-05T18:00:00Z", &["daily 2025-04-05"]),
            ("2025-04-04T18:00:00Z", &["daily 2025-04-04"]),
            ("2025-04-03T18:00:00Z", &["daily 2025-04-03"]),
            ("2025-03-31T18:00:00Z", &["monthly 2025-03"]),
            ("2025-03-30T18:00:00Z", &["weekly 2025-W13"]),
            ("2025-03-23T18:00:00Z", &["weekly 2025-W12"]),
            ("2025-02-28T18:00:00Z", &["monthly 2025-02"]),
            ("2025-01-31T23:00:00Z", &["monthly 2025-01"]),
            ("2024-12-30T12:00:00Z", &["monthly 2024-12"]),
            ("2024-12-29T12:00:00Z", &["oldest monthly 2024-12"]),
        ];
        let got_times: Vec<&str> = got.iter().map(|(time, _)| time.as_str()).collect();
        let expected_times: Vec<&str> = expected.iter().map(|(time, _)| *time).collect();
        assert_eq!(got_times, expected_times);
        for ((time, reasons), (_, expected_reasons)) in got.iter().zip(expected) {
            assert_eq!(reasons, expected_reasons, "reasons of {time}");
        }
    }

    #[test]
    fn duration_parses_units() {
        let cases = [
            ("2y5m7d3h", (2, 5, 7, 3)),
            ("7d", (0, 0, 7, 0)),
            ("3h1y", (1, 0, 0, 3)),
            (" 1m ", (0, 1, 0, 0)),
            ("0d", (0, 0, 0, 0)),
        ];
        for (text, (years, months, days, hours)) in cases {
            let expected = CalendarDuration {
                years,
                months,
                days,
                hours,
            };
            assert_eq!(text.parse::<CalendarDuration>(), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn duration_rejects_invalid_text() {
        for text in [
            "",
            "  ",
            "7",
            "d",
            "7w",
            "1d1d",
            "-1d",
            "1.5d",
            "99999999999d",
            "1d 2h",
        ] {
            let result = text.parse::<CalendarDuration>();
            assert!(result.is_err(), "{text:?} parsed as {result:?}");
        }
    }

    #[test]
    fn duration_displays_compactly() {
        let duration: CalendarDuration = "3h2y".parse().expect("valid duration");
        assert_eq!(duration.to_string(), "2y3h");
        assert_eq!(CalendarDuration::default().to_string(), "0h");
    }

    #[test]
    fn duration_subtracts_like_go_add_date() {
        let cases = [
            ("1m", "2025-03-31T12:00:00Z", "2025-03-03T12:00:00Z"),
            ("1m", "2024-03-31T12:00:00Z", "2024-03-02T12:00:00Z"),
            ("1y", "2024-02-29T00:00:00Z", "2023-03-01T00:00:00Z"),
            ("1m1d", "2025-03-01T00:00:00Z", "2025-01-31T00:00:00Z"),
            ("7d", "2025-01-03T05:00:00Z", "2024-12-27T05:00:00Z"),
            ("2h", "2025-01-01T01:00:00Z", "2024-12-31T23:00:00Z"),
            ("13m", "2025-01-15T00:00:00Z", "2023-12-15T00:00:00Z"),
        ];
        for (duration, from, expected) in cases {
            let duration: CalendarDuration = duration.parse().expect("valid duration");
            let from = DateTime::parse_from_rfc3339(from)
                .expect("valid time")
                .to_utc();
            let got = duration.subtract_from(from).expect("in range");
            assert_eq!(
                got.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                expected,
                "{duration} before {from}"
            );
        }
        let huge = CalendarDuration {
            years: u32::MAX,
            ..CalendarDuration::default()
        };
        assert_eq!(huge.subtract_from(Utc::now()), None);
    }

    #[test]
    fn group_by_parses_options() {
        let cases = [
            ("host,paths", GroupBy::HostAndPaths),
            ("paths,host", GroupBy::HostAndPaths),
            ("hosts,path", GroupBy::HostAndPaths),
            ("host", GroupBy::Host),
            ("paths", GroupBy::Paths),
            ("none", GroupBy::None),
            ("", GroupBy::None),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<GroupBy>(), Ok(expected), "{text:?}");
        }
        assert!("tags".parse::<GroupBy>().is_err());
        assert!("host,bogus".parse::<GroupBy>().is_err());
    }

    #[test]
    fn policy_displays_rules() {
        let policy = Policy {
            keep_last: Some(3),
            keep_daily: Some(UNLIMITED),
            keep_weekly: Some(0),
            keep_within: Some("7d".parse().expect("valid duration")),
            keep_tags: vec!["important".into(), String::new()],
            ..Policy::default()
        };
        assert_eq!(
            policy.to_string(),
            "last 3, daily unlimited, within 7d, tag important, no tags"
        );
    }
}
