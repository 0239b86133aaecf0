//! The TOML configuration file: named repositories and datasets, each dataset
//! with its paths, excludes, retention policy, schedule and hook commands.
//!
//! ```toml
//! [repositories.main]
//! path = "/srv/backup/main"
//! password_file = "/etc/cairn/main.pw"
//!
//! [repositories.offline]
//! path = "/mnt/offline/cairn"
//! password_file = "/etc/cairn/offline.pw"
//!
//! [repositories.offsite]
//! path = "cairn:https://backup.example.com:8443/alpha"
//! password_file = "/etc/cairn/offsite.pw"
//! token_file = "/etc/cairn/offsite.token"
//!
//! [datasets.home]
//! repository = "main"
//! paths = ["/home"]
//! excludes = ["**/node_modules", "*.o"]
//! schedule = "*-*-* 02:30"
//! keep_daily = 7
//! keep_weekly = 4
//! copy_to = ["offline"]
//! before = ["pg_dump -f /var/backups/shop.sql shop"]
//! ```
//!
//! Every problem found is reported with the file, line, column and value it
//! concerns, using the spans that `toml` records.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::exclude::{ExcludeOptions, Excludes};
use crate::repository::Location;
use crate::retention::CalendarDuration;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cairn/cairn.toml";

/// The parsed file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Repositories by name.
    #[serde(default)]
    pub repositories: BTreeMap<Spanned<String>, RepositoryConfig>,
    /// Datasets by name.
    #[serde(default)]
    pub datasets: BTreeMap<Spanned<String>, DatasetConfig>,
}

/// `[repositories.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Repository location: an absolute directory, or an `s3:` URL as
    /// `--repo` takes it.
    pub path: Spanned<PathBuf>,
    /// File whose first line is the password; otherwise the environment or a
    /// prompt supplies it, as for `--repo`.
    pub password_file: Option<Spanned<PathBuf>>,
    /// File whose first line is the token of a `cairn:` server repository;
    /// otherwise `--token-file` or the environment supplies it.
    pub token_file: Option<Spanned<PathBuf>>,
}

/// `[datasets.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Name of the repository to back up into.
    pub repository: Spanned<String>,
    /// Absolute paths to back up.
    pub paths: Spanned<Vec<Spanned<String>>>,
    /// Gitignore-style exclude patterns, as for `backup --exclude`.
    #[serde(default)]
    pub excludes: Vec<Spanned<String>>,
    /// Files of exclude patterns, as for `backup --exclude-file`.
    #[serde(default)]
    pub exclude_files: Vec<Spanned<PathBuf>>,
    /// Marker file names, as for `backup --exclude-if-present`.
    #[serde(default)]
    pub exclude_if_present: Vec<Spanned<String>>,
    /// As `backup --exclude-caches`.
    #[serde(default)]
    pub exclude_caches: bool,
    /// As `backup --one-file-system`.
    #[serde(default)]
    pub one_file_system: bool,
    /// Tags added to each snapshot, besides `dataset:NAME`.
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    /// When to run, as a systemd calendar expression such as `daily` or
    /// `Mon..Fri *-*-* 02:30`.
    pub schedule: Option<Spanned<String>>,
    /// Retention counts and duration, as for `forget --keep-*`.
    pub keep_last: Option<Spanned<u32>>,
    /// See `keep_last`.
    pub keep_hourly: Option<Spanned<u32>>,
    /// See `keep_last`.
    pub keep_daily: Option<Spanned<u32>>,
    /// See `keep_last`.
    pub keep_weekly: Option<Spanned<u32>>,
    /// See `keep_last`.
    pub keep_monthly: Option<Spanned<u32>>,
    /// See `keep_last`.
    pub keep_yearly: Option<Spanned<u32>>,
    /// Duration such as `30d` or `1y6m`, as for `forget --keep-within`.
    pub keep_within: Option<Spanned<String>>,
    /// Repositories that `cairn run` copies the dataset's snapshots to, after
    /// the backup and the retention policy.
    #[serde(default)]
    pub copy_to: Vec<Spanned<String>>,
    /// Shell commands run with `sh -c` before the backup; the first that fails
    /// stops the run.
    #[serde(default)]
    pub before: Vec<Spanned<String>>,
    /// Shell commands run with `sh -c` after a successful backup and forget.
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
}

impl DatasetConfig {
    /// Returns the `forget` options of the retention policy; empty when the
    /// dataset sets no `keep_*` key.
    pub fn forget_args(&self) -> Vec<String> {
        let counts = [
            ("--keep-last", &self.keep_last),
            ("--keep-hourly", &self.keep_hourly),
            ("--keep-daily", &self.keep_daily),
            ("--keep-weekly", &self.keep_weekly),
            ("--keep-monthly", &self.keep_monthly),
            ("--keep-yearly", &self.keep_yearly),
        ];
        let mut args = Vec::new();
        for (flag, value) in counts {
            if let Some(value) = value {
                args.push(flag.to_string());
                args.push(value.get_ref().to_string());
            }
        }
        if let Some(within) = &self.keep_within {
            args.push("--keep-within".into());
            args.push(within.get_ref().clone());
        }
        args
    }

    /// Returns the exclude settings.
    pub fn exclude_options(&self) -> ExcludeOptions {
        ExcludeOptions {
            patterns: self.excludes.iter().map(|p| p.get_ref().clone()).collect(),
            pattern_files: self
                .exclude_files
                .iter()
                .map(|p| p.get_ref().clone())
                .collect(),
            if_present: self
                .exclude_if_present
                .iter()
                .map(|n| n.get_ref().into())
                .collect(),
            caches: self.exclude_caches,
        }
    }
}

/// Severity of a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used as it is.
    Error,
    /// The file works, but not as it may seem to promise.
    Warning,
}

/// A problem in the file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The configuration file.
    pub file: PathBuf,
    /// Line number, starting at 1; 0 when the problem has no place.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
    /// The key path, such as `datasets.home.schedule`.
    pub key: String,
    /// The text of the value in the file.
    pub value: String,
    /// Description of the fault and of the fix.
    pub message: String,
}

impl Problem {
    /// Formats the file, line, column and message, without the severity and
    /// the value, for a problem that stops the file from loading: the message
    /// of the TOML parser already names the value.
    pub fn place_and_message(&self) -> String {
        let mut text = self.file.display().to_string();
        if self.line > 0 {
            text.push_str(&format!(":{}:{}", self.line, self.column));
        }
        if !self.key.is_empty() {
            text.push_str(&format!(": {}", self.key));
        }
        format!("{text}: {}", self.message)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        if !self.value.is_empty() {
            write!(f, " = {}", self.value)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {}: {error}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{}", .0.place_and_message())]
    Invalid(Problem),
    /// A `cairn run` or `schedule` names a dataset the file does not define.
    #[error("no dataset named {name:?} in {}; defined: {}", .path.display(), .defined.join(", "))]
    UnknownDataset {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names the file defines.
        defined: Vec<String>,
    },
}

/// A configuration file with its text, for placing problems.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Its contents.
    pub config: Config,
}

impl LoadedConfig {
    /// Reads and parses a file. Unknown keys and values of the wrong type are
    /// errors with their place.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, text)
    }

    /// Parses `text` as the contents of `path`.
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigError> {
        match toml::from_str::<Config>(&text) {
            Ok(config) => Ok(Self {
                path: path.to_path_buf(),
                text,
                config,
            }),
            Err(error) => {
                let span = error.span().unwrap_or(0..0);
                let message = error.message().trim().to_string();
                let loaded = Self {
                    path: path.to_path_buf(),
                    text,
                    config: Config {
                        repositories: BTreeMap::new(),
                        datasets: BTreeMap::new(),
                    },
                };
                Err(ConfigError::Invalid(loaded.problem(
                    Severity::Error,
                    span,
                    "",
                    message,
                )))
            }
        }
    }

    /// Returns the dataset and its repository by dataset name.
    pub fn dataset(&self, name: &str) -> Result<(&DatasetConfig, &RepositoryConfig), ConfigError> {
        let dataset =
            self.config
                .datasets
                .get(name)
                .ok_or_else(|| ConfigError::UnknownDataset {
                    path: self.path.clone(),
                    name: name.to_string(),
                    defined: self
                        .config
                        .datasets
                        .keys()
                        .map(|k| k.get_ref().clone())
                        .collect(),
                })?;
        let repository = self
            .config
            .repositories
            .get(dataset.repository.get_ref().as_str())
            .ok_or_else(|| {
                ConfigError::Invalid(self.problem(
                    Severity::Error,
                    dataset.repository.span(),
                    &format!("datasets.{name}.repository"),
                    "no repository of this name is defined".into(),
                ))
            })?;
        Ok((dataset, repository))
    }

    /// Builds a problem at a byte range of the file.
    fn problem(
        &self,
        severity: Severity,
        span: Range<usize>,
        key: &str,
        message: String,
    ) -> Problem {
        let start = span.start.min(self.text.len());
        let end = span.end.clamp(start, self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |text| text.chars().count())
            + 1;
        let value = self.text.get(start..end).unwrap_or_default();
        // Long values, such as a whole table, are cut to their first line.
        let value = value.lines().next().unwrap_or_default().to_string();
        Problem {
            severity,
            file: self.path.clone(),
            line,
            column,
            key: key.to_string(),
            value,
            message,
        }
    }

    /// Checks everything that parsing does not: names that refer to other
    /// entries, paths, schedules, durations, patterns and files that must exist.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, repository) in &self.config.repositories {
            self.validate_repository(name, repository, &mut problems);
        }
        for (name, dataset) in &self.config.datasets {
            self.validate_dataset(name, dataset, &mut problems);
        }
        problems
    }

    fn validate_repository(
        &self,
        name: &Spanned<String>,
        repository: &RepositoryConfig,
        problems: &mut Vec<Problem>,
    ) {
        let key = format!("repositories.{}", name.get_ref());
        match Location::parse(repository.path.get_ref().as_os_str()) {
            Ok(Location::Local(path)) if !path.is_absolute() => {
                problems.push(self.problem(
                    Severity::Error,
                    repository.path.span(),
                    &format!("{key}.path"),
                    "the repository path must be absolute".into(),
                ));
            }
            Ok(_) => {}
            Err(error) => problems.push(self.problem(
                Severity::Error,
                repository.path.span(),
                &format!("{key}.path"),
                error.to_string(),
            )),
        }
        if let Some(file) = &repository.password_file
            && !file.get_ref().is_file()
        {
            problems.push(self.problem(
                Severity::Error,
                file.span(),
                &format!("{key}.password_file"),
                "the password file does not exist or is not a regular file".into(),
            ));
        }
        if let Some(file) = &repository.token_file {
            let is_server = matches!(
                Location::parse(repository.path.get_ref().as_os_str()),
                Ok(Location::Server(_))
            );
            let message = if !is_server {
                Some(
                    "a token file is only used by repositories on a cairn serve server (a cairn: URL); remove it or change the path",
                )
            } else if !file.get_ref().is_file() {
                Some("the token file does not exist or is not a regular file")
            } else {
                None
            };
            if let Some(message) = message {
                problems.push(self.problem(
                    Severity::Error,
                    file.span(),
                    &format!("{key}.token_file"),
                    message.into(),
                ));
            }
        }
    }

    /// Builds an error about `field` of dataset `name`, or about the dataset
    /// table itself when `field` is empty.
    fn dataset_error(
        &self,
        name: &str,
        field: &str,
        span: Range<usize>,
        message: String,
    ) -> Problem {
        let key = if field.is_empty() {
            format!("datasets.{name}")
        } else {
            format!("datasets.{name}.{field}")
        };
        self.problem(Severity::Error, span, &key, message)
    }

    fn validate_dataset(
        &self,
        name: &Spanned<String>,
        dataset: &DatasetConfig,
        problems: &mut Vec<Problem>,
    ) {
        let text = name.get_ref();
        if !is_unit_name_safe(text) {
            problems.push(self.dataset_error(
                text,
                "",
                name.span(),
                "dataset names may contain only letters, digits, `-`, `_` and `.`, because they name systemd units".into(),
            ));
        }
        self.validate_references(text, dataset, problems);
        self.validate_sources(text, dataset, problems);
        self.validate_timing(text, dataset, problems);
    }

    /// Checks the names of repositories that a dataset refers to.
    fn validate_references(
        &self,
        name: &str,
        dataset: &DatasetConfig,
        problems: &mut Vec<Problem>,
    ) {
        let repositories = &self.config.repositories;
        let repository = dataset.repository.get_ref();
        if !repositories.contains_key(repository.as_str()) {
            problems.push(self.dataset_error(
                name,
                "repository",
                dataset.repository.span(),
                format!("no repository of this name is defined; add [repositories.{repository}]"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for target in &dataset.copy_to {
            let target_name = target.get_ref();
            let message = if !repositories.contains_key(target_name.as_str()) {
                format!("no repository of this name is defined; add [repositories.{target_name}]")
            } else if target_name == repository {
                "this is the dataset's own repository; list only other repositories".into()
            } else if !seen.insert(target_name) {
                "this repository is listed twice".into()
            } else {
                continue;
            };
            problems.push(self.dataset_error(name, "copy_to", target.span(), message));
        }
    }

    /// Checks the paths and exclude settings of a dataset.
    fn validate_sources(&self, name: &str, dataset: &DatasetConfig, problems: &mut Vec<Problem>) {
        if dataset.paths.get_ref().is_empty() {
            problems.push(self.dataset_error(
                name,
                "paths",
                dataset.paths.span(),
                "list at least one path to back up".into(),
            ));
        }
        for path in dataset.paths.get_ref() {
            if !Path::new(path.get_ref()).is_absolute() {
                problems.push(self.dataset_error(
                    name,
                    "paths",
                    path.span(),
                    "paths must be absolute".into(),
                ));
            }
        }
        for pattern in &dataset.excludes {
            let options = ExcludeOptions {
                patterns: vec![pattern.get_ref().clone()],
                ..ExcludeOptions::default()
            };
            if let Err(e) = Excludes::new(&options) {
                problems.push(self.dataset_error(name, "excludes", pattern.span(), e.to_string()));
            }
        }
        for file in &dataset.exclude_files {
            if !file.get_ref().is_file() {
                problems.push(self.dataset_error(
                    name,
                    "exclude_files",
                    file.span(),
                    "the exclude file does not exist".into(),
                ));
            }
        }
    }

    /// Checks the schedule and the retention duration of a dataset.
    fn validate_timing(&self, name: &str, dataset: &DatasetConfig, problems: &mut Vec<Problem>) {
        if let Some(schedule) = &dataset.schedule
            && let Err(e) = crate::calendar::validate(schedule.get_ref())
        {
            problems.push(self.dataset_error(name, "schedule", schedule.span(), e.to_string()));
        }
        if let Some(within) = &dataset.keep_within
            && let Err(e) = within.get_ref().parse::<CalendarDuration>()
        {
            problems.push(self.dataset_error(name, "keep_within", within.span(), e.to_string()));
        }
    }
}

/// True for names made of letters, digits, `-`, `_` and `.`, which systemd
/// unit names and crontab lines take without escaping.
pub fn is_unit_name_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::parse(Path::new("/etc/cairn/cairn.toml"), text.to_string())
    }

    const VALID: &str = r#"
[repositories.main]
path = "/srv/backup/main"

[datasets.home]
repository = "main"
paths = ["/home"]
excludes = ["*.o"]
schedule = "daily"
keep_daily = 7
keep_within = "30d"
"#;

    #[test]
    fn valid_file_has_no_problems() {
        let loaded = parse(VALID).unwrap();
        assert_eq!(loaded.validate(), Vec::new());
        let (dataset, repository) = loaded.dataset("home").unwrap();
        assert_eq!(repository.path.get_ref(), Path::new("/srv/backup/main"));
        assert_eq!(
            dataset.forget_args(),
            ["--keep-daily", "7", "--keep-within", "30d"]
        );
    }

    #[test]
    fn unknown_key_reports_line() {
        let text = VALID.replace("keep_daily = 7", "keep_dayly = 7");
        let Err(ConfigError::Invalid(problem)) = parse(&text) else {
            panic!("unknown key accepted");
        };
        assert_eq!(problem.line, 10, "{problem}");
        assert!(problem.message.contains("keep_dayly"), "{problem}");
    }

    #[test]
    fn wrong_type_reports_value() {
        let text = VALID.replace("keep_daily = 7", "keep_daily = -1");
        let Err(ConfigError::Invalid(problem)) = parse(&text) else {
            panic!("negative count accepted");
        };
        assert_eq!(problem.line, 10, "{problem}");
        assert_eq!(problem.value, "-1", "{problem}");
    }

    #[test]
    fn semantic_problems_have_places() {
        let text = VALID
            .replace("repository = \"main\"", "repository = \"mian\"")
            .replace("schedule = \"daily\"", "schedule = \"every day\"")
            .replace("paths = [\"/home\"]", "paths = [\"home\"]");
        let problems = parse(&text).unwrap().validate();
        let keys: Vec<(&str, usize, &str)> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.line, p.value.as_str()))
            .collect();
        assert!(
            keys.contains(&("datasets.home.repository", 6, "\"mian\"")),
            "{keys:?}"
        );
        assert!(
            keys.contains(&("datasets.home.paths", 7, "\"home\"")),
            "{keys:?}"
        );
        assert!(
            keys.contains(&("datasets.home.schedule", 9, "\"every day\"")),
            "{keys:?}"
        );
    }

    #[test]
    fn s3_repository_path_is_valid() {
        let text = VALID.replace(
            "path = \"/srv/backup/main\"",
            "path = \"s3:https://s3.example.com/backups/main\"",
        );
        assert_eq!(parse(&text).unwrap().validate(), Vec::new());
    }

    #[test]
    fn invalid_s3_url_reports_path() {
        let text = VALID.replace(
            "path = \"/srv/backup/main\"",
            "path = \"s3:ftp://s3.example.com/backups\"",
        );
        let problems = parse(&text).unwrap().validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "repositories.main.path", "{problems:?}");
        assert_eq!(problems[0].line, 3, "{problems:?}");
        assert!(
            problems[0].message.contains("http or https"),
            "{problems:?}"
        );
    }

    #[test]
    fn copy_to_other_repository_is_valid() {
        let text = VALID.replace(
            "[datasets.home]",
            "[repositories.offline]\npath = \"/mnt/offline\"\n\n[datasets.home]",
        );
        let text = format!("{text}copy_to = [\"offline\"]\n");
        let problems = parse(&text).unwrap().validate();
        assert_eq!(problems, Vec::new());
    }

    #[test]
    fn copy_to_own_or_unknown_rejected() {
        let text = format!("{VALID}copy_to = [\"main\", \"offsite\"]\n");
        let problems = parse(&text).unwrap().validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        for problem in &problems {
            assert_eq!(problem.severity, Severity::Error);
            assert_eq!(problem.key, "datasets.home.copy_to");
        }
        assert!(
            problems[0].message.contains("own repository"),
            "{problems:?}"
        );
        assert!(
            problems[1].message.contains("no repository"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_dataset_lists_defined_names() {
        let loaded = parse(VALID).unwrap();
        let error = loaded.dataset("hmoe").unwrap_err().to_string();
        assert!(error.contains("home"), "{error}");
    }
}
