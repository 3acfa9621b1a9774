//! Evaluation on a labelled directory: APCER/BPCER/ACER at a threshold, EER, AUC, gate accuracy.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One row of `labels.csv` (extra columns are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct LabelRow {
    pub file: String,
    /// `live`, `spoof` or `gate`.
    pub label: String,
    /// The gate code a `gate` image should produce.
    #[serde(default)]
    pub expected_error: String,
}

/// Reads `dir/labels.csv`.
pub fn read_labels(dir: &Path) -> anyhow::Result<Vec<LabelRow>> {
    let mut reader = csv::Reader::from_path(dir.join("labels.csv"))?;
    Ok(reader.deserialize().collect::<Result<_, _>>()?)
}

/// The pipeline's answer for one labelled file.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: String,
    pub label: String,
    pub expected_error: String,
    pub score: Option<f32>,
    pub error: Option<String>,
}

/// The aggregate report written by `liveness eval --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub threshold: f32,
    pub n_live: usize,
    pub n_spoof: usize,
    pub n_gate: usize,
    /// Spoofs accepted (no error and score >= threshold) / spoofs.
    pub apcer: f64,
    /// Live photos rejected (any error, or score < threshold) / live photos.
    pub bpcer: f64,
    pub acer: f64,
    pub eer: f64,
    pub eer_threshold: f32,
    /// Area under the ROC of live vs spoof, a gate error counting as the lowest score.
    pub auc: f64,
    pub live_gated: usize,
    pub spoof_gated: usize,
    pub gate_correct: usize,
    pub gate_total: usize,
    /// `expected code (or label) -> produced code (or PASS/FAIL) -> count`.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    pub per_file: Vec<FileResult>,
}

/// Score used for ranking: a gate error ranks below every real score.
fn rank_score(r: &FileResult) -> f32 {
    match (r.error.as_ref(), r.score) {
        (None, Some(s)) => s,
        _ => -1.0,
    }
}

fn accepted(r: &FileResult, threshold: f32) -> bool {
    r.error.is_none() && r.score.is_some_and(|s| s >= threshold)
}

/// Computes the report from per-file results.
pub fn summarize(per_file: Vec<FileResult>, threshold: f32) -> Report {
    let live: Vec<&FileResult> = per_file.iter().filter(|r| r.label == "live").collect();
    let spoof: Vec<&FileResult> = per_file.iter().filter(|r| r.label == "spoof").collect();
    let gate: Vec<&FileResult> = per_file.iter().filter(|r| r.label == "gate").collect();
    let rate = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let apcer = rate(
        spoof.iter().filter(|r| accepted(r, threshold)).count(),
        spoof.len(),
    );
    let bpcer = rate(
        live.iter().filter(|r| !accepted(r, threshold)).count(),
        live.len(),
    );

    let live_scores: Vec<f32> = live.iter().map(|r| rank_score(r)).collect();
    let spoof_scores: Vec<f32> = spoof.iter().map(|r| rank_score(r)).collect();
    let mut pairs = 0.0;
    for l in &live_scores {
        for s in &spoof_scores {
            pairs += if l > s {
                1.0
            } else if l == s {
                0.5
            } else {
                0.0
            };
        }
    }
    let auc = pairs / (live_scores.len() * spoof_scores.len()).max(1) as f64;

    // EER: sweep every observed score as a threshold; keep the one where the two error rates
    // are closest, reporting their mean.
    let (mut eer, mut eer_threshold, mut best_gap) = (1.0, threshold, f64::INFINITY);
    let mut candidates: Vec<f32> = live_scores
        .iter()
        .chain(&spoof_scores)
        .copied()
        .filter(|s| *s >= 0.0)
        .collect();
    candidates.sort_by(f32::total_cmp);
    for t in candidates {
        let far = rate(
            spoof_scores.iter().filter(|s| **s >= t).count(),
            spoof_scores.len(),
        );
        let frr = rate(
            live_scores.iter().filter(|s| **s < t).count(),
            live_scores.len(),
        );
        if (far - frr).abs() < best_gap {
            best_gap = (far - frr).abs();
            eer = (far + frr) / 2.0;
            eer_threshold = t;
        }
    }

    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &per_file {
        let expected = if r.label == "gate" {
            r.expected_error.clone()
        } else {
            r.label.clone()
        };
        let produced = match (&r.error, r.score) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) if s >= threshold => "PASS".to_string(),
            _ => "FAIL".to_string(),
        };
        *confusion
            .entry(expected)
            .or_default()
            .entry(produced)
            .or_default() += 1;
    }

    Report {
        threshold,
        n_live: live.len(),
        n_spoof: spoof.len(),
        n_gate: gate.len(),
        apcer,
        bpcer,
        acer: (apcer + bpcer) / 2.0,
        eer,
        eer_threshold,
        auc,
        live_gated: live.iter().filter(|r| r.error.is_some()).count(),
        spoof_gated: spoof.iter().filter(|r| r.error.is_some()).count(),
        gate_correct: gate
            .iter()
            .filter(|r| r.error.as_deref() == Some(r.expected_error.as_str()))
            .count(),
        gate_total: gate.len(),
        confusion,
        per_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, score: Option<f32>, error: Option<&str>, expected: &str) -> FileResult {
        FileResult {
            file: "f".into(),
            label: label.into(),
            expected_error: expected.into(),
            score,
            error: error.map(String::from),
        }
    }

    #[test]
    fn error_rates_count_gate_errors_as_rejections() {
        let rows = vec![
            row("live", Some(0.9), None, ""),
            row("live", Some(0.4), None, ""),
            row("live", None, Some("FACE_NOT_FOUND"), ""),
            row("spoof", Some(0.6), None, ""),
            row("spoof", Some(0.1), None, ""),
            row("gate", None, Some("FACE_TOO_SMALL"), "FACE_TOO_SMALL"),
            row("gate", Some(0.7), None, "TOO_MANY_FACES"),
        ];
        let r = summarize(rows, 0.5);
        assert_eq!((r.n_live, r.n_spoof, r.n_gate), (3, 2, 2));
        assert!((r.bpcer - 2.0 / 3.0).abs() < 1e-9);
        assert!((r.apcer - 0.5).abs() < 1e-9);
        assert_eq!((r.gate_correct, r.gate_total, r.live_gated), (1, 2, 1));
        // Live 0.9 beats both spoofs; 0.4 beats one; the gated live beats none: 3 of 6 pairs.
        assert!((r.auc - 0.5).abs() < 1e-9);
        assert_eq!(r.confusion["TOO_MANY_FACES"]["PASS"], 1);
    }
}
