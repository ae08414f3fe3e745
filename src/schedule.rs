//! The recipe's schedules, as the official `utils.cosine_scheduler` computes them.

/// A per-iteration schedule: `warmup` iterations of a linear ramp from `start_warmup` to
/// `base` (numpy's `linspace`, both ends included), then a cosine from `base` towards
/// `final_value` over the remaining iterations (which never quite reaches it).
#[derive(Clone, Debug)]
pub struct Cosine {
    pub base: f64,
    pub final_value: f64,
    pub total: u64,
    pub warmup: u64,
    pub start_warmup: f64,
}

impl Cosine {
    /// `cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup)`.
    pub fn new(
        base: f64,
        final_value: f64,
        epochs: u64,
        niter_per_ep: u64,
        warmup_epochs: u64,
    ) -> Self {
        Self {
            base,
            final_value,
            total: epochs * niter_per_ep,
            warmup: warmup_epochs * niter_per_ep,
            start_warmup: 0.0,
        }
    }

    pub fn at(&self, it: u64) -> f64 {
        if it < self.warmup {
            return linspace(self.start_warmup, self.base, self.warmup, it);
        }
        let len = (self.total - self.warmup) as f64;
        let i = (it - self.warmup) as f64;
        self.final_value
            + 0.5 * (self.base - self.final_value) * (1.0 + (std::f64::consts::PI * i / len).cos())
    }
}

/// Element `i` of `numpy.linspace(start, stop, n)`.
fn linspace(start: f64, stop: f64, n: u64, i: u64) -> f64 {
    if n == 1 {
        return start;
    }
    if i == n - 1 {
        return stop;
    }
    start + i as f64 * ((stop - start) / (n - 1) as f64)
}

/// The teacher temperature, per epoch: a linear warmup over `warmup_epochs` (linspace, both
/// ends included), then constant.
#[derive(Clone, Debug)]
pub struct TeacherTemp {
    pub warmup_temp: f64,
    pub temp: f64,
    pub warmup_epochs: u64,
}

impl TeacherTemp {
    pub fn at_epoch(&self, epoch: u64) -> f64 {
        if epoch < self.warmup_epochs {
            linspace(self.warmup_temp, self.temp, self.warmup_epochs, epoch)
        } else {
            self.temp
        }
    }
}
