//! Calendar expressions of systemd timers (`OnCalendar=`, systemd.time(7)):
//! validation and translation to crontab fields.
//!
//! [`validate`] runs `systemd-analyze calendar` when that tool is installed, so
//! every form systemd accepts is accepted. Otherwise, and always for crontab
//! lines, [`CalendarSpec::parse`] reads the common forms:
//!
//! - the shorthands `minutely`, `hourly`, `daily`, `weekly`, `monthly`,
//!   `yearly`, `annually`, `quarterly` and `semiannually`;
//! - `[WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]] [UTC]`, where each
//!   number field is `*` or a comma-separated list of values, ranges `a..b` and
//!   repetitions `a/step`, `a..b/step` or `*/step`, and weekdays are names such
//!   as `Mon` or `Monday`, alone, in lists or in ranges such as `Mon..Fri`.
//!
//! Not read without systemd: last days of a month (`~`), fractional seconds and
//! time zones other than UTC.

use std::process::Command;

/// Reasons for rejecting a calendar expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The expression is not valid.
    #[error("invalid calendar expression {expression:?}: {reason}")]
    Invalid {
        /// The expression.
        expression: String,
        /// Description of the fault.
        reason: String,
    },
    /// The expression is valid but has no crontab equivalent.
    #[error("calendar expression {expression:?} cannot be written as a crontab line: {reason}")]
    NoCronEquivalent {
        /// The expression.
        expression: String,
        /// The part without an equivalent.
        reason: String,
    },
}

/// One element of a number field: a value, a range, or a repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    start: u32,
    /// Last value of a range, inclusive.
    end: Option<u32>,
    step: Option<u32>,
}

/// A number field: every value, or a list of items.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Any,
    Items(Vec<Item>),
}

impl Field {
    fn value(value: u32) -> Self {
        Field::Items(vec![Item {
            start: value,
            end: None,
            step: None,
        }])
    }

    fn is_zero(&self) -> bool {
        *self == Field::value(0)
    }
}

/// A parsed calendar expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalendarSpec {
    /// Weekday ranges, 1 (Monday) to 7 (Sunday); empty means every day.
    weekdays: Vec<(u32, u32)>,
    year: Field,
    month: Field,
    day: Field,
    hour: Field,
    minute: Field,
    second: Field,
    utc: bool,
}

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Checks an expression: with `systemd-analyze calendar` if it is installed,
/// else with [`CalendarSpec::parse`].
pub fn validate(expression: &str) -> Result<(), CalendarError> {
    match Command::new("systemd-analyze")
        .args(["calendar", expression])
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(CalendarError::Invalid {
                expression: expression.to_string(),
                reason: format!("systemd-analyze calendar rejected it: {}", stderr.trim()),
            })
        }
        Err(_) => CalendarSpec::parse(expression).map(|_| ()),
    }
}

impl CalendarSpec {
    /// Parses the common forms listed in the module documentation.
    pub fn parse(expression: &str) -> Result<Self, CalendarError> {
        let invalid = |reason: String| CalendarError::Invalid {
            expression: expression.to_string(),
            reason,
        };
        let trimmed = expression.trim();
        if let Some(spec) = shorthand(&trimmed.to_ascii_lowercase()) {
            return Ok(spec);
        }
        let mut spec = CalendarSpec {
            weekdays: Vec::new(),
            year: Field::Any,
            month: Field::Any,
            day: Field::Any,
            hour: Field::value(0),
            minute: Field::value(0),
            second: Field::value(0),
            utc: false,
        };
        let mut tokens: Vec<&str> = trimmed.split_whitespace().collect();
        if tokens.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if tokens.last().is_some_and(|t| t.eq_ignore_ascii_case("utc")) {
            spec.utc = true;
            tokens.pop();
        }
        let mut seen_date = false;
        let mut seen_time = false;
        for (position, token) in tokens.iter().enumerate() {
            if token.contains(':') {
                if seen_time {
                    return Err(invalid("it has two times".into()));
                }
                seen_time = true;
                parse_time(token, &mut spec).map_err(invalid)?;
            } else if token.contains('-') && token.chars().next().is_some_and(is_date_start) {
                if seen_date || seen_time {
                    return Err(invalid("the date must come before the time, once".into()));
                }
                seen_date = true;
                parse_date(token, &mut spec).map_err(invalid)?;
            } else if position == 0 {
                spec.weekdays = parse_weekdays(token).map_err(invalid)?;
            } else {
                return Err(invalid(format!(
                    "{token:?} is not a weekday list, a date such as *-*-01 or a time such as 02:30"
                )));
            }
        }
        // Without a time, `Mon` and `*-*-01` mean midnight: the defaults above.
        Ok(spec)
    }

    /// Returns the five crontab time fields (minute, hour, day of month, month,
    /// day of week) for the same times, in the cron daemon's time zone.
    pub fn to_cron(&self, expression: &str) -> Result<String, CalendarError> {
        let no_equivalent = |reason: &str| CalendarError::NoCronEquivalent {
            expression: expression.to_string(),
            reason: reason.to_string(),
        };
        if !self.second.is_zero() {
            return Err(no_equivalent("cron runs jobs at second 0 only"));
        }
        if self.year != Field::Any {
            return Err(no_equivalent("cron has no year field"));
        }
        if self.day != Field::Any && !self.weekdays.is_empty() {
            return Err(no_equivalent(
                "cron runs a job when either the day of month or the weekday matches, systemd only when both do",
            ));
        }
        let weekdays = if self.weekdays.is_empty() {
            "*".to_string()
        } else {
            self.weekdays
                .iter()
                .map(|&(start, end)| {
                    if start == end {
                        start.to_string()
                    } else {
                        format!("{start}-{end}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        Ok(format!(
            "{} {} {} {} {weekdays}",
            cron_field(&self.minute, 59),
            cron_field(&self.hour, 23),
            cron_field(&self.day, 31),
            cron_field(&self.month, 12),
        ))
    }

    /// True when the expression ends in `UTC`; crontab lines use the cron
    /// daemon's time zone instead.
    pub fn is_utc(&self) -> bool {
        self.utc
    }
}

fn is_date_start(c: char) -> bool {
    c.is_ascii_digit() || c == '*'
}

fn shorthand(name: &str) -> Option<CalendarSpec> {
    let at_midnight = |month: Field, day: Field, weekdays: Vec<(u32, u32)>| CalendarSpec {
        weekdays,
        year: Field::Any,
        month,
        day,
        hour: Field::value(0),
        minute: Field::value(0),
        second: Field::value(0),
        utc: false,
    };
    let months = |list: &[u32]| {
        Field::Items(
            list.iter()
                .map(|&m| Item {
                    start: m,
                    end: None,
                    step: None,
                })
                .collect(),
        )
    };
    Some(match name {
        "minutely" => CalendarSpec {
            hour: Field::Any,
            minute: Field::Any,
            ..at_midnight(Field::Any, Field::Any, Vec::new())
        },
        "hourly" => CalendarSpec {
            hour: Field::Any,
            ..at_midnight(Field::Any, Field::Any, Vec::new())
        },
        "daily" => at_midnight(Field::Any, Field::Any, Vec::new()),
        "weekly" => at_midnight(Field::Any, Field::Any, vec![(1, 1)]),
        "monthly" => at_midnight(Field::Any, Field::value(1), Vec::new()),
        "yearly" | "annually" => at_midnight(Field::value(1), Field::value(1), Vec::new()),
        "quarterly" => at_midnight(months(&[1, 4, 7, 10]), Field::value(1), Vec::new()),
        "semiannually" => at_midnight(months(&[1, 7]), Field::value(1), Vec::new()),
        _ => return None,
    })
}

fn parse_weekdays(token: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut ranges = Vec::new();
    for part in token.split(',') {
        let (first, last) = match part.split_once("..") {
            Some((first, last)) => (weekday(first)?, weekday(last)?),
            None => {
                let day = weekday(part)?;
                (day, day)
            }
        };
        if first > last {
            return Err(format!("weekday range {part:?} runs backwards"));
        }
        ranges.push((first, last));
    }
    Ok(ranges)
}

/// Returns 1 for Monday to 7 for Sunday, from a name or its first three letters.
fn weekday(name: &str) -> Result<u32, String> {
    let lower = name.to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|full| lower.len() >= 3 && full.starts_with(&lower))
        .map(|index| index as u32 + 1)
        .ok_or_else(|| format!("{name:?} is not a weekday such as Mon or Monday"))
}

fn parse_date(token: &str, spec: &mut CalendarSpec) -> Result<(), String> {
    if token.contains('~') {
        return Err("last days of a month (`~`) need systemd-analyze to be checked".into());
    }
    let parts: Vec<&str> = token.split('-').collect();
    let (year, month, day) = match parts.as_slice() {
        [year, month, day] => (Some(*year), *month, *day),
        [month, day] => (None, *month, *day),
        _ => {
            return Err(format!(
                "{token:?} is not a date such as *-*-01 or 2026-01-31"
            ));
        }
    };
    if let Some(year) = year {
        spec.year = parse_field(year, 1970, 2199, "year")?;
    }
    spec.month = parse_field(month, 1, 12, "month")?;
    spec.day = parse_field(day, 1, 31, "day")?;
    Ok(())
}

fn parse_time(token: &str, spec: &mut CalendarSpec) -> Result<(), String> {
    let parts: Vec<&str> = token.split(':').collect();
    let (hour, minute, second) = match parts.as_slice() {
        [hour, minute] => (*hour, *minute, None),
        [hour, minute, second] => (*hour, *minute, Some(*second)),
        _ => return Err(format!("{token:?} is not a time such as 02:30 or 02:30:00")),
    };
    spec.hour = parse_field(hour, 0, 23, "hour")?;
    spec.minute = parse_field(minute, 0, 59, "minute")?;
    spec.second = match second {
        Some(second) if second.contains('.') => {
            return Err("fractional seconds need systemd-analyze to be checked".into());
        }
        Some(second) => parse_field(second, 0, 59, "second")?,
        None => Field::value(0),
    };
    Ok(())
}

fn parse_field(text: &str, min: u32, max: u32, name: &str) -> Result<Field, String> {
    if text == "*" {
        return Ok(Field::Any);
    }
    let number = |part: &str| -> Result<u32, String> {
        let value: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a number for the {name}"))?;
        if !(min..=max).contains(&value) {
            return Err(format!("{name} {value} is outside {min}..{max}"));
        }
        Ok(value)
    };
    let mut items = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("{step:?} is not a repetition step for the {name}")
                    })?;
                (range, Some(step))
            }
            None => (part, None),
        };
        let item = if range == "*" {
            if step.is_none() {
                return Err(format!("`*` cannot be part of a list in the {name}"));
            }
            Item {
                start: min,
                end: None,
                step,
            }
        } else if let Some((start, end)) = range.split_once("..") {
            let (start, end) = (number(start)?, number(end)?);
            if start > end {
                return Err(format!("{name} range {range:?} runs backwards"));
            }
            Item {
                start,
                end: Some(end),
                step,
            }
        } else {
            Item {
                start: number(range)?,
                end: None,
                step,
            }
        };
        items.push(item);
    }
    Ok(Field::Items(items))
}

fn cron_field(field: &Field, max: u32) -> String {
    let Field::Items(items) = field else {
        return "*".into();
    };
    items
        .iter()
        .map(|item| match (item.end, item.step) {
            (None, None) => item.start.to_string(),
            (Some(end), None) => format!("{}-{end}", item.start),
            // A repetition without an end runs to the largest value of the field.
            (end, Some(step)) => format!("{}-{}/{step}", item.start, end.unwrap_or(max)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expression: &str) -> String {
        CalendarSpec::parse(expression)
            .and_then(|spec| spec.to_cron(expression))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn shorthands_translate_to_cron() {
        assert_eq!(cron("daily"), "0 0 * * *");
        assert_eq!(cron("hourly"), "0 * * * *");
        assert_eq!(cron("weekly"), "0 0 * * 1");
        assert_eq!(cron("monthly"), "0 0 1 * *");
        assert_eq!(cron("yearly"), "0 0 1 1 *");
        assert_eq!(cron("quarterly"), "0 0 1 1,4,7,10 *");
    }

    #[test]
    fn weekday_and_time_translate_to_cron() {
        assert_eq!(cron("Mon..Fri *-*-* 02:30"), "30 2 * * 1-5");
        assert_eq!(cron("Sat,Sun 04:15"), "15 4 * * 6,7");
        assert_eq!(cron("*-*-01 03:00:00"), "0 3 1 * *");
        assert_eq!(cron("*-*-* 00/6:00"), "0 0-23/6 * * *");
        assert_eq!(cron("*:0/15"), "0-59/15 * * * *");
    }

    #[test]
    fn invalid_expressions_are_rejected() {
        for bad in [
            "",
            "bogus",
            "25:00",
            "*-13-01",
            "Mon..Sun..Tue",
            "Fri..Mon",
            "*-*-* 02:30 extra",
            "02:30 *-*-01",
            "*-*-* 1..0:00",
            "*:*/0",
        ] {
            assert!(CalendarSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cron_rejects_what_it_cannot_express() {
        for expression in ["*-*-* 02:30:15", "2027-*-* 00:00", "Mon *-*-01 00:00"] {
            let spec = CalendarSpec::parse(expression).unwrap();
            assert!(
                matches!(
                    spec.to_cron(expression),
                    Err(CalendarError::NoCronEquivalent { .. })
                ),
                "{expression:?} translated"
            );
        }
    }

    #[test]
    fn utc_suffix_is_recorded() {
        assert!(CalendarSpec::parse("daily").map(|s| !s.is_utc()).unwrap());
        assert!(CalendarSpec::parse("*-*-* 02:00 UTC").unwrap().is_utc());
    }

    #[test]
    fn parser_agrees_with_systemd_analyze() {
        // Only where systemd-analyze is installed: each expression the parser
        // accepts must be accepted by systemd too.
        let Ok(output) = Command::new("systemd-analyze").arg("--version").output() else {
            return;
        };
        if !output.status.success() {
            return;
        }
        for expression in [
            "daily",
            "Mon..Fri *-*-* 02:30",
            "Sat,Sun 04:15",
            "*-*-01 03:00:00",
            "*-*-* 00/6:00",
            "*:0/15",
            "2027-01-31 23:59:59 UTC",
        ] {
            CalendarSpec::parse(expression).unwrap();
            assert_eq!(validate(expression), Ok(()), "{expression:?}");
        }
        assert!(validate("bogus").is_err());
    }
}
