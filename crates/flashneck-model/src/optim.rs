//! Adam (Kingma & Ba), with bias correction, on [`Param`](crate::Param)s.

use crate::layers::NamedParams;
use flashneck_core::{Error, Result};

/// Adam's state: first and second moments per parameter, in the order the model lists them.
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    step: i32,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Adam {
    pub fn new(lr: f32) -> Result<Self> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::bad("lr", "a finite value > 0", lr));
        }
        Ok(Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            moments: Vec::new(),
        })
    }

    /// One update of every parameter from its gradient. The parameter list must be the same
    /// (count and lengths) at every step.
    pub fn step(&mut self, params: NamedParams<'_>) -> Result<()> {
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|(_, p)| (vec![0.0; p.value.len()], vec![0.0; p.value.len()]))
                .collect();
        }
        if self.moments.len() != params.len() {
            return Err(Error::shape(
                "params",
                format!("{} parameters", self.moments.len()),
                format!("{} parameters", params.len()),
            ));
        }
        self.step = self.step.saturating_add(1);
        let c1 = 1.0 - self.beta1.powi(self.step);
        let c2 = 1.0 - self.beta2.powi(self.step);
        for ((_, p), (m, v)) in params.into_iter().zip(&mut self.moments) {
            crate::linalg::check("param", p.value.len(), m.len())?;
            crate::linalg::check("param grad", p.grad.len(), m.len())?;
            for i in 0..m.len() {
                let g = p.grad[i];
                m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * g;
                v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * g * g;
                p.value[i] -= self.lr * (m[i] / c1) / ((v[i] / c2).sqrt() + self.eps);
            }
        }
        Ok(())
    }
}
