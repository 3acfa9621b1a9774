//! From the anti-spoof networks' live probabilities to the API score: fusion, then calibration.
//!
//! - **Fusion**: a weighted mean of the networks' log-odds, `z = Σ wᵢ·logit(pᵢ) / Σ wᵢ`, reported as
//!   the probability `fused = sigmoid(z)`. A network whose weight is 0 is not run.
//! - **Calibration**: a monotone logistic map `score = sigmoid(slope · (z − logit(pivot)))`, so a
//!   fused value equal to `pivot` scores exactly 0.5, the contract's threshold.
//!
//! Both are data, stored in `models/calibration.json` ([`ScoreModel`]) and produced by
//! `liveness calibrate` ([`fit_calibration`]); the weights can be overridden with
//! `LIVENESS_FUSION_WEIGHTS` (the calibration is only valid for the weights it was fitted with).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Name of the scoring file inside the model directory.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Probabilities are clamped to `[EPS, 1 - EPS]` before taking log-odds (a saturated network
/// would otherwise contribute an infinite vote).
const EPS: f32 = 1e-6;

/// Log-odds of a probability, clamped to finite values.
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

/// The logistic function.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Fusion weight per network name (`minifasnet_v2=1,minifasnet_v1se=1,...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FusionWeights(pub BTreeMap<String, f32>);

impl FusionWeights {
    /// The weight of `model` (0 when absent).
    pub fn weight(&self, model: &str) -> f32 {
        self.0.get(model).copied().unwrap_or(0.0)
    }

    /// Fuses `(model, p_live)` pairs: `sigmoid(Σ w·logit(p) / Σ w)` over the weighted models.
    /// `None` when no weighted model is among them.
    pub fn fuse<'a>(&self, scores: impl IntoIterator<Item = (&'a str, f32)>) -> Option<f32> {
        let (mut sum, mut total) = (0.0f32, 0.0f32);
        for (model, p_live) in scores {
            let w = self.weight(model);
            if w > 0.0 {
                sum += w * logit(p_live);
                total += w;
            }
        }
        (total > 0.0).then(|| sigmoid(sum / total))
    }
}

impl FromStr for FusionWeights {
    type Err = String;

    /// Parses `name=weight[,name=weight...]`; weights must be finite and non-negative, and at
    /// least one positive.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not name=weight"))?;
            let value: f32 = value.trim().parse().map_err(|e| format!("{item:?}: {e}"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{item:?}: weight must be finite and >= 0"));
            }
            weights.insert(name.trim().to_string(), value);
        }
        if !weights.values().any(|w| *w > 0.0) {
            return Err("at least one weight must be positive".into());
        }
        Ok(Self(weights))
    }
}

/// The monotone map from the fused value to the score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Fused value that scores exactly 0.5.
    pub pivot: f32,
    /// Steepness in log-odds units (> 0).
    pub slope: f32,
}

impl Calibration {
    /// The score of a fused value.
    pub fn score(&self, fused: f32) -> f32 {
        sigmoid(self.slope * (logit(fused) - logit(self.pivot)))
    }
}

/// How the networks' outputs become the score: the content of `models/calibration.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreModel {
    pub fusion_weights: FusionWeights,
    pub calibration: Calibration,
    /// How the calibration was produced (command, sets, per-set error rates); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<serde_json::Value>,
}

/// A scoring file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScoreModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid scoring file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl ScoreModel {
    /// Reads and checks a scoring file.
    pub fn load(path: &Path) -> Result<Self, ScoreModelError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScoreModelError::Read {
            path: name.clone(),
            source,
        })?;
        let model: Self = serde_json::from_str(&text).map_err(|source| ScoreModelError::Parse {
            path: name.clone(),
            source,
        })?;
        let c = model.calibration;
        let invalid = |reason: &str| ScoreModelError::Invalid {
            path: name.clone(),
            reason: reason.to_string(),
        };
        if !(c.pivot > 0.0 && c.pivot < 1.0) {
            return Err(invalid("calibration.pivot must be in (0, 1)"));
        }
        if !(c.slope.is_finite() && c.slope > 0.0) {
            return Err(invalid("calibration.slope must be finite and > 0"));
        }
        if !model.fusion_weights.0.values().any(|w| *w > 0.0) {
            return Err(invalid("no fusion weight is positive"));
        }
        Ok(model)
    }

    /// The score of a photo from its networks' live probabilities (`None` when no weighted
    /// network is among them).
    pub fn score<'a>(&self, scores: impl IntoIterator<Item = (&'a str, f32)>) -> Option<f32> {
        self.fusion_weights
            .fuse(scores)
            .map(|fused| self.calibration.score(fused))
    }
}

/// Chooses the pivot: the highest fused threshold whose BPCER, counting `gated_lives` as
/// rejected, stays at or below `target_bpcer` over `gated_lives + live_fused.len()` live photos.
/// The pivot lies halfway (in log-odds) between the highest rejected and the lowest accepted live
/// score, the widest margin that keeps the same error counts. `None` without live scores.
pub fn pivot_for_bpcer(live_fused: &[f32], gated_lives: usize, target_bpcer: f64) -> Option<f32> {
    let mut lives: Vec<f32> = live_fused.to_vec();
    lives.sort_by(f32::total_cmp);
    let total = lives.len() + gated_lives;
    let allowed = ((target_bpcer * total as f64) + 1e-9).floor() as usize;
    let rejected = allowed
        .saturating_sub(gated_lives)
        .min(lives.len().checked_sub(1)?);
    let lowest_accepted = logit(lives[rejected]);
    let pivot = if rejected == 0 {
        lowest_accepted - 1e-3
    } else {
        (logit(lives[rejected - 1]) + lowest_accepted) / 2.0
    };
    Some(sigmoid(pivot))
}

/// Fits the slope of `score = sigmoid(slope · (logit(fused) − logit(pivot)))` by maximum
/// likelihood (Newton's method on one parameter), live = 1 and spoof = 0, each class weighted by
/// the inverse of its size so both count equally. Returns 1 when the data cannot fix a slope
/// (a class is empty, or the classes are perfectly separated at the pivot).
pub fn fit_slope(live_fused: &[f32], spoof_fused: &[f32], pivot: f32) -> f32 {
    if live_fused.is_empty() || spoof_fused.is_empty() {
        return 1.0;
    }
    let centre = logit(pivot) as f64;
    let mut points: Vec<(f64, f64, f64)> = Vec::new();
    for (values, label) in [(live_fused, 1.0), (spoof_fused, 0.0)] {
        let weight = 1.0 / values.len() as f64;
        points.extend(
            values
                .iter()
                .map(|&f| (logit(f) as f64 - centre, label, weight)),
        );
    }
    let separated = points
        .iter()
        .all(|&(z, y, _)| (z >= 0.0) == (y == 1.0) && z != 0.0);
    if separated {
        return 1.0;
    }
    let mut slope = 1.0f64;
    for _ in 0..50 {
        let (mut grad, mut hess) = (0.0, 0.0);
        for &(z, y, w) in &points {
            let p = 1.0 / (1.0 + (-slope * z).exp());
            grad += w * (y - p) * z;
            hess += w * p * (1.0 - p) * z * z;
        }
        if hess <= 1e-12 {
            break;
        }
        let step = grad / hess;
        slope = (slope + step).max(1e-3);
        if step.abs() < 1e-9 {
            break;
        }
    }
    slope as f32
}

/// The calibration for fused values of live and spoof photos: the pivot from
/// [`pivot_for_bpcer`], then the slope from [`fit_slope`].
pub fn fit_calibration(
    live_fused: &[f32],
    spoof_fused: &[f32],
    gated_lives: usize,
    target_bpcer: f64,
) -> Option<Calibration> {
    let pivot = pivot_for_bpcer(live_fused, gated_lives, target_bpcer)?;
    Some(Calibration {
        pivot,
        slope: fit_slope(live_fused, spoof_fused, pivot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_is_a_weighted_mean_of_log_odds() {
        let w: FusionWeights = "a=1, b=3, c=0".parse().unwrap();
        // logit(0.5) = 0, logit(0.9) = ln 9: (0 + 3 ln 9) / 4.
        let fused = w.fuse([("a", 0.5), ("b", 0.9), ("c", 0.01)]).unwrap();
        assert!((logit(fused) - 0.75 * 9f32.ln()).abs() < 1e-5);
        assert_eq!(w.fuse([("c", 0.3)]), None);
        assert!("a=-1".parse::<FusionWeights>().is_err());
        assert!("a=0".parse::<FusionWeights>().is_err());
        assert!("a".parse::<FusionWeights>().is_err());
    }

    #[test]
    fn calibration_maps_the_pivot_to_one_half_and_keeps_order() {
        let c = Calibration {
            pivot: 0.2,
            slope: 0.7,
        };
        assert!((c.score(0.2) - 0.5).abs() < 1e-6);
        assert!(c.score(0.1) < c.score(0.2) && c.score(0.2) < c.score(0.9));
    }

    #[test]
    fn pivot_rejects_at_most_the_target_share_of_lives() {
        let lives = [0.9, 0.8, 0.05, 0.7, 0.6, 0.3, 0.95, 0.85, 0.75, 0.65];
        // 10 lives, 10% allowed: one rejected (0.05); pivot between 0.05 and 0.3.
        let pivot = pivot_for_bpcer(&lives, 0, 0.10).unwrap();
        assert!(pivot > 0.05 && pivot < 0.3, "{pivot}");
        // One live already gated uses up the allowance: pivot just under the lowest live.
        let pivot = pivot_for_bpcer(&lives, 1, 0.10).unwrap();
        assert!(pivot < 0.05 && pivot > 0.04, "{pivot}");
        assert_eq!(pivot_for_bpcer(&[], 3, 0.05), None);
    }

    #[test]
    fn slope_maximises_the_balanced_likelihood() {
        let lives = [0.6, 0.7, 0.8, 0.4, 0.95];
        let spoofs = [0.3, 0.2, 0.45, 0.6, 0.05, 0.1];
        let pivot = 0.5;
        let log_likelihood = |slope: f64| -> f64 {
            let term = |f: f32, y: f64, n: usize| {
                let p = 1.0 / (1.0 + (-slope * logit(f) as f64).exp());
                (y * p.ln() + (1.0 - y) * (1.0 - p).ln()) / n as f64
            };
            lives
                .iter()
                .map(|&f| term(f, 1.0, lives.len()))
                .sum::<f64>()
                + spoofs
                    .iter()
                    .map(|&f| term(f, 0.0, spoofs.len()))
                    .sum::<f64>()
        };
        let fitted = fit_slope(&lives, &spoofs, pivot) as f64;
        let grid_best = (1..=1000)
            .map(|i| i as f64 * 0.01)
            .max_by(|a, b| log_likelihood(*a).total_cmp(&log_likelihood(*b)))
            .unwrap();
        assert!(
            (fitted - grid_best).abs() <= 0.01,
            "{fitted} vs {grid_best}"
        );
        // Perfectly separated classes leave the slope unidentified: the default 1.
        assert_eq!(fit_slope(&[0.9], &[0.1], 0.5), 1.0);
    }
}
