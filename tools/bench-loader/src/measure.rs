//! What every benchmark measures the same way: wall time, this process's CPU time and its
//! peak memory, all from `getrusage(RUSAGE_SELF)`, which sums over every thread, including
//! threads that have already exited (the loader's, a scope's).

use std::io;
use std::mem::MaybeUninit;
use std::time::Instant;

use anyhow::{Context, Result};

/// Wall and CPU time of one stretch of work.
#[derive(Clone, Copy)]
pub struct Sample {
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// A starting point on both clocks.
pub struct Stopwatch {
    wall: Instant,
    cpu_s: f64,
}

impl Stopwatch {
    pub fn start() -> Result<Self> {
        Ok(Self {
            cpu_s: process_cpu_seconds()?,
            wall: Instant::now(),
        })
    }

    /// Time on both clocks since [`Stopwatch::start`].
    pub fn elapsed(&self) -> Result<Sample> {
        let wall_s = self.wall.elapsed().as_secs_f64();
        Ok(Sample {
            wall_s,
            cpu_s: process_cpu_seconds()? - self.cpu_s,
        })
    }
}

/// Runs `work`, timing it by the wall clock and by this process's CPU time.
pub fn measure<T>(work: impl FnOnce() -> Result<T>) -> Result<(Sample, T)> {
    let watch = Stopwatch::start()?;
    let value = work()?;
    Ok((watch.elapsed()?, value))
}

fn usage() -> Result<libc::rusage> {
    let mut usage = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is valid for writes of one `rusage`, which is all getrusage writes.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getrusage(RUSAGE_SELF) failed");
    }
    // SAFETY: zero bytes are a valid `rusage` (plain integers), and getrusage succeeded.
    Ok(unsafe { usage.assume_init() })
}

/// User + system CPU seconds of the whole process.
fn process_cpu_seconds() -> Result<f64> {
    let usage = usage()?;
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The largest resident set this process has had so far, in MiB (Linux reports KiB).
pub fn peak_rss_mib() -> Result<f64> {
    Ok(usage()?.ru_maxrss as f64 / 1024.0)
}
