//! What to generate and where: [`GenConfig`] (one place for defaults) and the event file
//! [`Format`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::Datelike;

use crate::error::{Error, Result};
use crate::ids::MAX_PERSONS;

/// Longest window, in days.
const MAX_DAYS: u32 = 3_660;

/// Parameters of one generator run. Output depends only on `persons`, `days`, `seed` and
/// `end_date`; `threads` and `rows_per_file` change speed and file boundaries, not rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Number of persons (1 ..= 500 000 000).
    pub persons: u64,
    /// Days of activity, ending on `end_date` (1 ..= 3660).
    pub days: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// The last day with events (in UTC+8).
    pub end_date: chrono::NaiveDate,
    /// Format of the event files.
    pub format: Format,
    /// Output directory, created if missing.
    pub out: PathBuf,
    /// Most rows per event file.
    pub rows_per_file: usize,
    /// Worker threads; 0 means the available parallelism.
    pub threads: usize,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            persons: 100_000,
            days: 365,
            seed: 42,
            end_date: chrono::NaiveDate::from_ymd_opt(2026, 10, 31).unwrap_or_default(),
            format: Format::Parquet,
            out: PathBuf::from("data"),
            rows_per_file: 1_000_000,
            threads: default_threads(),
        }
    }
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl GenConfig {
    /// Checks every field's range; the error names the field.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::Config { field, reason });
        if self.persons == 0 || self.persons > MAX_PERSONS {
            return bad(
                "persons",
                format!("{} is out of range 1..={MAX_PERSONS}", self.persons),
            );
        }
        if self.days == 0 || self.days > MAX_DAYS {
            return bad(
                "days",
                format!("{} is out of range 1..={MAX_DAYS}", self.days),
            );
        }
        if self
            .end_date
            .checked_sub_days(chrono::Days::new(u64::from(self.days)))
            .is_none_or(|d| d.year() < 1971)
        {
            return bad(
                "end_date",
                format!("{} minus {} days is before 1971", self.end_date, self.days),
            );
        }
        if self.end_date.year() > 9999 {
            return bad("end_date", format!("{} is after 9999", self.end_date));
        }
        if self.rows_per_file == 0 {
            return bad("rows_per_file", "must be at least 1".to_owned());
        }
        Ok(())
    }

    pub(crate) fn worker_threads(&self) -> usize {
        if self.threads == 0 {
            default_threads()
        } else {
            self.threads
        }
    }
}

/// Format of the event files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// Apache Parquet, Snappy-compressed.
    #[default]
    Parquet,
    /// One JSON object per line, nulls omitted.
    Ndjson,
    /// Comma-separated with a header row, empty for null.
    Csv,
}

impl Format {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "parquet" => Ok(Format::Parquet),
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => Err(Error::UnknownFormat(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_round_trips_and_names_bad_value() {
        for f in [Format::Parquet, Format::Ndjson, Format::Csv] {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        let err = "xlsx".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("`xlsx`"), "{err}");
    }

    #[test]
    fn validate_names_the_field() {
        let cfg = GenConfig {
            days: 0,
            ..GenConfig::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("`days`"));
        let cfg = GenConfig {
            persons: 0,
            ..GenConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("`persons`")
        );
        assert!(GenConfig::default().validate().is_ok());
    }
}
