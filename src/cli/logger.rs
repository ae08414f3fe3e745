//! The binary's logger: records of the `log` crate (the pipeline's decode failures, the
//! trainer's warnings) to stderr, around the progress bar, and to a run's log file.
//!
//! The level comes from `RUST_LOG` (`error`, `warn`, `info`, `debug`, `trace` or `off`;
//! default `warn`). Library code only calls `log::warn!` and friends; what is shown where is
//! decided here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    /// A run's log file, while one is open.
    file: Mutex<Option<File>>,
    /// The progress bar on the terminal, which a line must not tear.
    bar: Mutex<Option<ProgressBar>>,
}

static LOGGER: Logger = Logger {
    file: Mutex::new(None),
    bar: Mutex::new(None),
};

/// Installs the logger at the level `RUST_LOG` names; an unknown value is reported and the
/// default kept.
pub fn init() {
    let level = match std::env::var("RUST_LOG") {
        Ok(text) => match text.trim().parse::<LevelFilter>() {
            Ok(level) => level,
            Err(_) => {
                eprintln!(
                    "warning: RUST_LOG={text:?} is not a level (error, warn, info, debug, trace, \
                     off); logging warnings"
                );
                LevelFilter::Warn
            }
        },
        Err(_) => LevelFilter::Warn,
    };
    // set_logger fails only when a logger is installed already (a second init): keep it
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Appends every record from now on to `path` as well, until [`close_file`].
pub fn tee_to(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    *lock(&LOGGER.file) = Some(file);
    Ok(())
}

pub fn close_file() {
    *lock(&LOGGER.file) = None;
}

/// Lines are printed above `bar` while it is shown; `None` detaches it.
pub fn attach_bar(bar: Option<ProgressBar>) {
    *lock(&LOGGER.bar) = bar;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let line = format!("{level}: {}", record.args());
        match &*lock(&self.bar) {
            Some(bar) if !bar.is_hidden() => bar.println(&line),
            _ => eprintln!("{line}"),
        }
        if let Some(file) = lock(&self.file).as_mut() {
            // a log file that cannot be written must not stop the run; the terminal has it
            let _ = writeln!(
                file,
                "{} {level} {}: {}",
                utc_now(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {
        if let Some(file) = lock(&self.file).as_mut() {
            let _ = file.flush();
        }
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
