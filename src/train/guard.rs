//! The collapse guard: DINO's two failure modes, seen in the logged figures.

use super::LogLine;

/// Warns about the two collapses DINO can fall into: to the uniform distribution (loss and
/// teacher entropy at ln K) and to one prototype (the batch-mean teacher distribution's
/// entropy near 0). Once per kind.
pub struct CollapseGuard {
    ln_k: f64,
    warned_uniform: bool,
    warned_dominant: bool,
}

impl CollapseGuard {
    pub fn new(out_dim: usize) -> Self {
        Self {
            ln_k: (out_dim as f64).ln(),
            warned_uniform: false,
            warned_dominant: false,
        }
    }

    pub fn check(&mut self, line: &LogLine) -> Option<String> {
        let ln_k = self.ln_k;
        if !self.warned_uniform && line.loss > 0.99 * ln_k && line.teacher_entropy > 0.99 * ln_k {
            self.warned_uniform = true;
            return Some(format!(
                "step {}: the loss ({:.4}) and the teacher entropy ({:.4}) sit at ln K = {ln_k:.4}: \
                 the outputs collapsed to uniform. Lower loss.teacher_temp or raise optim.freeze_last_layer",
                line.step, line.loss, line.teacher_entropy
            ));
        }
        if !self.warned_dominant && line.teacher_marginal_entropy < 0.1 * ln_k {
            self.warned_dominant = true;
            return Some(format!(
                "step {}: the teacher's batch-mean output entropy is {:.4} (ln K = {ln_k:.4}): \
                 nearly every image maps to the same prototype. Check loss.center_momentum and \
                 raise loss.teacher_temp",
                line.step, line.teacher_marginal_entropy
            ));
        }
        None
    }
}
