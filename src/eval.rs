//! Evaluation on a labelled directory, in the vocabulary of ISO/IEC 30107-3.
//!
//! A *bona fide* presentation is a live photo, an *attack* presentation a spoof. A photo is
//! **accepted** when the quality gate lets it through and its score is `>= threshold`.
//! - **APCER**: share of attack presentations accepted (per attack type, the PAI species, and
//!   the worst type);
//! - **BPCER**: share of bona fide presentations rejected;
//! - **ACER**: `(APCER + BPCER) / 2` over all attacks pooled (ISO/IEC 30107-3:2023 deprecates
//!   ACER; it is kept because the project's accuracy bar is stated in it).
//!
//! The metric functions take plain slices of scores, higher = more live, so other tools (e.g. a
//! calibration command) can reuse them. A photo the gate refused, or that could not be decoded,
//! enters a score list as [`GATED`]: every threshold these functions choose is greater than it, so
//! such a photo is never accepted. A rate over an empty list is NaN (JSON `null`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::api::contract::ApiError;
use crate::pipeline::{Assessment, GateCode, Outcome, PipelineError};

/// Score of a photo the gate (or the decoder) refused: below every threshold.
pub const GATED: f32 = f32::NEG_INFINITY;

/// Bootstrap resamples behind every confidence interval of the report.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Seed of the bootstrap's random draws, fixed so a report is reproducible.
pub const BOOTSTRAP_SEED: u64 = 30107;

/// APCER targets at which the report gives the BPCER.
pub const APCER_TARGETS: [f64; 3] = [0.01, 0.05, 0.10];

/// BPCER targets at which the report gives the APCER.
pub const BPCER_TARGETS: [f64; 2] = [0.01, 0.05];

/// Attack type of a spoof row whose `labels.csv` has no `attack_type`.
pub const UNKNOWN_ATTACK_TYPE: &str = "unknown";

/// The gate codes precision and recall are reported for, in the gate's checking order.
pub const GATE_CODES: [GateCode; 8] = [
    GateCode::FaceNotFound,
    GateCode::TooManyFaces,
    GateCode::FaceTooClose,
    GateCode::FaceCropped,
    GateCode::FaceCloseToBorder,
    GateCode::FaceTooSmall,
    GateCode::FaceAngleTooLarge,
    GateCode::FaceIsOccluded,
];

/// The labels a `labels.csv` row may carry.
const LABELS: [&str; 4] = ["live", "spoof", "gate", "other"];

/// One row of `labels.csv` (extra columns are ignored; optional ones may be absent).
#[derive(Debug, Clone, Deserialize)]
pub struct LabelRow {
    pub file: String,
    /// `live`, `spoof`, `gate`, or `other` (shown in the table, counted in no metric).
    pub label: String,
    /// The gate code a `gate` image should produce.
    #[serde(default)]
    pub expected_error: String,
    /// `;`-separated gate codes that are also right for a `gate` image.
    #[serde(default)]
    pub acceptable_errors: String,
    /// Attack (PAI species) of a `spoof` image, e.g. `print`, `replay-phone`; may be empty.
    #[serde(default)]
    pub attack_type: String,
}

/// Reads `dir/labels.csv`, refusing rows with a label other than live, spoof, gate or other.
pub fn read_labels(dir: &Path) -> anyhow::Result<Vec<LabelRow>> {
    let path = dir.join("labels.csv");
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<LabelRow> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if let Some(row) = rows.iter().find(|r| !LABELS.contains(&r.label.as_str())) {
        bail!(
            "{}: {} has label {:?}, expected one of {LABELS:?}",
            path.display(),
            row.file,
            row.label
        );
    }
    Ok(rows)
}

/// The pipeline's answer for one labelled file.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: String,
    pub label: String,
    pub expected_error: String,
    /// Other codes that are right for a `gate` row.
    pub acceptable_errors: Vec<String>,
    /// The attack type of a spoof row ([`UNKNOWN_ATTACK_TYPE`] when unlabelled); `None` otherwise.
    pub attack_type: Option<String>,
    /// The final score, when the gate let the photo through.
    pub score: Option<f32>,
    /// The gate code, or the API error code when the photo could not be assessed.
    pub error: Option<String>,
    /// Each anti-spoof network's live probability (empty when the gate refused the photo).
    pub model_scores: BTreeMap<String, f32>,
    /// The fused network output before calibration.
    pub fused: Option<f32>,
}

impl FileResult {
    /// Joins a label row with what the pipeline made of its file.
    pub fn new(row: LabelRow, assessment: Result<Assessment, PipelineError>) -> Self {
        let attack_type = (row.label == "spoof").then(|| {
            if row.attack_type.is_empty() {
                UNKNOWN_ATTACK_TYPE.to_string()
            } else {
                row.attack_type
            }
        });
        let acceptable_errors = row
            .acceptable_errors
            .split(';')
            .map(str::trim)
            .filter(|code| !code.is_empty())
            .map(String::from)
            .collect();
        let mut result = Self {
            file: row.file,
            label: row.label,
            expected_error: row.expected_error,
            acceptable_errors,
            attack_type,
            score: None,
            error: None,
            model_scores: BTreeMap::new(),
            fused: None,
        };
        match assessment {
            Ok(a) => {
                match a.outcome {
                    Outcome::Scored { score } => result.score = Some(score),
                    Outcome::Rejected(code) => result.error = Some(code.code().to_string()),
                }
                result.model_scores = a
                    .diagnostics
                    .anti_spoof
                    .into_iter()
                    .map(|m| (m.model, m.p_live))
                    .collect();
                result.fused = a.diagnostics.fused;
            }
            Err(e) => result.error = Some(ApiError::from(e).code().to_string()),
        }
        result
    }

    /// The score in a headline list: the final score, or [`GATED`] when refused.
    fn headline_score(&self) -> f32 {
        match (&self.error, self.score) {
            (None, Some(score)) => score,
            _ => GATED,
        }
    }

    /// What the pipeline answered: the error code, else `PASS` or `FAIL` at `threshold`.
    pub fn produced(&self, threshold: f32) -> String {
        match (&self.error, self.score) {
            (Some(code), _) => code.clone(),
            (None, Some(score)) if score >= threshold => "PASS".to_string(),
            _ => "FAIL".to_string(),
        }
    }

    /// A `gate` row is right when it produced its expected code or one of its acceptable codes.
    pub fn gate_code_is_right(&self) -> bool {
        self.error.as_ref().is_some_and(|code| {
            *code == self.expected_error || self.acceptable_errors.contains(code)
        })
    }
}

/// `count / total`, NaN when `total` is 0.
fn share(count: usize, total: usize) -> f64 {
    if total == 0 {
        f64::NAN
    } else {
        count as f64 / total as f64
    }
}

fn sorted_ascending(scores: &[f32]) -> Vec<f32> {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted
}

/// APCER at `threshold`: the share of `spoofs` with a score `>= threshold`.
pub fn apcer(spoofs: &[f32], threshold: f32) -> f64 {
    share(
        spoofs.iter().filter(|&&s| s >= threshold).count(),
        spoofs.len(),
    )
}

/// BPCER at `threshold`: the share of `lives` with a score `< threshold`.
pub fn bpcer(lives: &[f32], threshold: f32) -> f64 {
    share(
        lives.iter().filter(|&&l| l < threshold).count(),
        lives.len(),
    )
}

/// The two error rates at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// Accept when score `>=` this (`null` in JSON when infinite: reject everything).
    pub threshold: f32,
    pub apcer: f64,
    pub bpcer: f64,
}

impl OperatingPoint {
    /// APCER and BPCER of `lives` and `spoofs` at `threshold`.
    pub fn at(lives: &[f32], spoofs: &[f32], threshold: f32) -> Self {
        Self {
            threshold,
            apcer: apcer(spoofs, threshold),
            bpcer: bpcer(lives, threshold),
        }
    }

    /// `(APCER + BPCER) / 2`.
    pub fn acer(&self) -> f64 {
        (self.apcer + self.bpcer) / 2.0
    }
}

/// Area under the ROC curve: the probability that a random live photo scores higher than a random
/// spoof, a tie counting one half (the Mann-Whitney statistic; [`GATED`] ties with [`GATED`]).
pub fn auc(lives: &[f32], spoofs: &[f32]) -> f64 {
    if lives.is_empty() || spoofs.is_empty() {
        return f64::NAN;
    }
    let spoofs = sorted_ascending(spoofs);
    let wins: f64 = lives
        .iter()
        .map(|&l| {
            let below = spoofs.partition_point(|&s| s < l);
            let tied = spoofs.partition_point(|&s| s <= l) - below;
            below as f64 + 0.5 * tied as f64
        })
        .sum();
    wins / (lives.len() as f64 * spoofs.len() as f64)
}

/// Every distinct operating point, by rising threshold: one at each distinct finite score (the
/// lowest accepts every photo not [`GATED`]), then one at `+inf` (rejects everything, APCER 0).
/// Consecutive points are the corners of the empirical DET/ROC staircase; nothing is interpolated.
pub fn det_curve(lives: &[f32], spoofs: &[f32]) -> Vec<OperatingPoint> {
    let mut thresholds: Vec<f32> = lives
        .iter()
        .chain(spoofs)
        .copied()
        .filter(|s| s.is_finite())
        .collect();
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup();
    thresholds.push(f32::INFINITY);
    let (lives, spoofs) = (sorted_ascending(lives), sorted_ascending(spoofs));
    thresholds
        .into_iter()
        .map(|t| OperatingPoint {
            threshold: t,
            apcer: share(
                spoofs.len() - spoofs.partition_point(|&s| s < t),
                spoofs.len(),
            ),
            bpcer: share(lives.partition_point(|&l| l < t), lives.len()),
        })
        .collect()
}

/// The equal error rate and where it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EqualErrorRate {
    /// `(APCER + BPCER) / 2` at the point below.
    pub rate: f64,
    /// Accept when score `>=` this (`null` in JSON when not finite).
    pub threshold: f32,
}

/// EER: among the [`det_curve`] points, the one where APCER and BPCER are closest (the lowest
/// threshold on ties); the rate is their mean there. No interpolation between points, so on a
/// small set the two rates may differ by up to one photo's share. Rate and threshold are NaN
/// when a class is empty.
pub fn eer(lives: &[f32], spoofs: &[f32]) -> EqualErrorRate {
    if lives.is_empty() || spoofs.is_empty() {
        return EqualErrorRate {
            rate: f64::NAN,
            threshold: f32::NAN,
        };
    }
    let gap = |p: &OperatingPoint| (p.apcer - p.bpcer).abs();
    let point = det_curve(lives, spoofs)
        .into_iter()
        .reduce(|best, p| if gap(&p) < gap(&best) { p } else { best })
        .expect("det_curve always holds the +inf point");
    EqualErrorRate {
        rate: point.acer(),
        threshold: point.threshold,
    }
}

/// How many of `n` photos a rate target allows to be errors: `floor(target * n)` (with a 1e-9
/// allowance so that e.g. 0.29 * 100 allows 29).
fn allowed_errors(target: f64, n: usize) -> usize {
    (target.clamp(0.0, 1.0) * n as f64 + 1e-9).floor() as usize
}

/// The smallest `f32` greater than `x` (`f32::next_up` needs Rust 1.86).
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        x
    } else if x == 0.0 {
        f32::from_bits(1)
    } else if x > 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        f32::from_bits(x.to_bits() - 1)
    }
}

/// The threshold with the lowest BPCER among those with APCER `<= target`.
///
/// BPCER only grows with the threshold, so this is the lowest threshold that accepts at most
/// `floor(target * n)` spoofs: just above (the next `f32` up from) the `(k+1)`-th highest spoof
/// score, `k = floor(target * n)`. Spoofs tied at that score are all refused, so the APCER reached
/// may be below the target; no interpolation. When every spoof may be accepted the answer is
/// `f32::MIN` (accept every photo not [`GATED`]).
pub fn threshold_for_apcer(spoofs: &[f32], target: f64) -> f32 {
    let mut descending = sorted_ascending(spoofs);
    descending.reverse();
    descending
        .get(allowed_errors(target, spoofs.len()))
        .map_or(f32::MIN, |&s| next_up(s))
}

/// The threshold with the lowest APCER among those with BPCER `<= target`.
///
/// APCER only falls as the threshold grows, so this is the highest threshold that rejects at
/// most `floor(target * n)` lives: the `(k+1)`-th lowest live score itself, `k = floor(target *
/// n)` (lives tied there are accepted, so the BPCER reached may be below the target). `None` when
/// that live score is [`GATED`]: the gate alone rejects more lives than the target allows, and no
/// threshold helps. `+inf` when every live photo may be rejected.
pub fn threshold_for_bpcer(lives: &[f32], target: f64) -> Option<f32> {
    match sorted_ascending(lives).get(allowed_errors(target, lives.len())) {
        Some(&l) if l == GATED => None,
        Some(&l) => Some(l),
        None => Some(f32::INFINITY),
    }
}

/// The operating point at [`threshold_for_apcer`] (the BPCER at an APCER target).
pub fn bpcer_at_apcer(lives: &[f32], spoofs: &[f32], target: f64) -> OperatingPoint {
    OperatingPoint::at(lives, spoofs, threshold_for_apcer(spoofs, target))
}

/// The operating point at [`threshold_for_bpcer`] (the APCER at a BPCER target), if reachable.
pub fn apcer_at_bpcer(lives: &[f32], spoofs: &[f32], target: f64) -> Option<OperatingPoint> {
    threshold_for_bpcer(lives, target).map(|t| OperatingPoint::at(lives, spoofs, t))
}

/// 95% confidence intervals `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConfidenceIntervals {
    pub apcer: [f64; 2],
    pub bpcer: [f64; 2],
    pub acer: [f64; 2],
    pub auc: [f64; 2],
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator; enough for resampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (multiply-shift; the bias is below 2^-40 for our sizes).
    fn index_below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Percentile-bootstrap 95% intervals of APCER, BPCER and ACER at `threshold` and of the AUC.
///
/// Stratified: each of `resamples` rounds draws `lives.len()` lives and `spoofs.len()` spoofs,
/// each class with replacement from itself, so every round keeps the class sizes. The interval is
/// the nearest-rank 2.5th and 97.5th percentiles of the rounds' values (with 2000 rounds: the
/// 50th and 1950th smallest). Photos are treated as independent; frames of one subject or session
/// are not, so on such data the intervals are too narrow. Panics if `resamples` is 0.
pub fn bootstrap_intervals(
    lives: &[f32],
    spoofs: &[f32],
    threshold: f32,
    resamples: usize,
    seed: u64,
) -> ConfidenceIntervals {
    assert!(resamples > 0, "bootstrap needs at least one resample");
    let mut rng = SplitMix64(seed);
    let mut draw = |from: &[f32], into: &mut Vec<f32>| {
        into.clear();
        into.extend((0..from.len()).map(|_| from[rng.index_below(from.len())]));
    };
    let (mut live_draw, mut spoof_draw) = (Vec::new(), Vec::new());
    let mut rounds: [Vec<f64>; 4] = Default::default();
    for _ in 0..resamples {
        draw(lives, &mut live_draw);
        draw(spoofs, &mut spoof_draw);
        let point = OperatingPoint::at(&live_draw, &spoof_draw, threshold);
        let values = [
            point.apcer,
            point.bpcer,
            point.acer(),
            auc(&live_draw, &spoof_draw),
        ];
        for (round, value) in rounds.iter_mut().zip(values) {
            round.push(value);
        }
    }
    let [apcer, bpcer, acer, auc] = rounds.map(|mut values| {
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| ((q * resamples as f64).ceil() as usize).clamp(1, resamples) - 1;
        [values[rank(0.025)], values[rank(0.975)]]
    });
    ConfidenceIntervals {
        apcer,
        bpcer,
        acer,
        auc,
    }
}

/// APCER over the spoofs of one attack type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AttackTypeApcer {
    /// Spoofs of this type.
    pub n: usize,
    pub apcer: f64,
}

/// An error rate target and the operating point chosen for it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TargetedOperatingPoint {
    pub target: f64,
    /// `None` when the target cannot be reached (see [`threshold_for_bpcer`]).
    pub operating_point: Option<OperatingPoint>,
}

/// Presentation-attack-detection metrics over one set of live and spoof scores.
#[derive(Debug, Clone, Serialize)]
pub struct PadMetrics {
    pub n_live: usize,
    pub n_spoof: usize,
    /// All attack types pooled.
    pub apcer: f64,
    pub apcer_per_attack_type: BTreeMap<String, AttackTypeApcer>,
    /// The worst attack type's APCER (ISO/IEC 30107-3: the maximum over PAI species).
    pub apcer_max: f64,
    pub bpcer: f64,
    /// `(APCER + BPCER) / 2`, attack types pooled.
    pub acer: f64,
    pub eer: f64,
    pub eer_threshold: f32,
    pub auc: f64,
    /// BPCER at each of [`APCER_TARGETS`] ([`bpcer_at_apcer`]).
    pub bpcer_at_apcer: Vec<TargetedOperatingPoint>,
    /// APCER at each of [`BPCER_TARGETS`] ([`apcer_at_bpcer`]).
    pub apcer_at_bpcer: Vec<TargetedOperatingPoint>,
    /// 95% intervals from [`bootstrap_intervals`] with [`BOOTSTRAP_RESAMPLES`] and
    /// [`BOOTSTRAP_SEED`].
    pub ci: ConfidenceIntervals,
}

impl PadMetrics {
    /// Metrics at `threshold` of live scores and `(attack type, score)` spoofs.
    pub fn compute(lives: &[f32], spoofs: &[(&str, f32)], threshold: f32) -> Self {
        let spoof_scores: Vec<f32> = spoofs.iter().map(|&(_, s)| s).collect();
        let mut by_type: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
        for &(attack_type, score) in spoofs {
            by_type.entry(attack_type).or_default().push(score);
        }
        let apcer_per_attack_type: BTreeMap<String, AttackTypeApcer> = by_type
            .into_iter()
            .map(|(attack_type, scores)| {
                let rate = AttackTypeApcer {
                    n: scores.len(),
                    apcer: apcer(&scores, threshold),
                };
                (attack_type.to_string(), rate)
            })
            .collect();
        let point = OperatingPoint::at(lives, &spoof_scores, threshold);
        let eer = eer(lives, &spoof_scores);
        Self {
            n_live: lives.len(),
            n_spoof: spoofs.len(),
            apcer: point.apcer,
            apcer_max: apcer_per_attack_type
                .values()
                .map(|t| t.apcer)
                .fold(f64::NAN, f64::max),
            apcer_per_attack_type,
            bpcer: point.bpcer,
            acer: point.acer(),
            eer: eer.rate,
            eer_threshold: eer.threshold,
            auc: auc(lives, &spoof_scores),
            bpcer_at_apcer: APCER_TARGETS
                .iter()
                .map(|&target| TargetedOperatingPoint {
                    target,
                    operating_point: Some(bpcer_at_apcer(lives, &spoof_scores, target)),
                })
                .collect(),
            apcer_at_bpcer: BPCER_TARGETS
                .iter()
                .map(|&target| TargetedOperatingPoint {
                    target,
                    operating_point: apcer_at_bpcer(lives, &spoof_scores, target),
                })
                .collect(),
            ci: bootstrap_intervals(
                lives,
                &spoof_scores,
                threshold,
                BOOTSTRAP_RESAMPLES,
                BOOTSTRAP_SEED,
            ),
        }
    }
}

/// Live and spoof scores of one scorer (a network, or the final score), gate refusals as
/// [`GATED`].
#[derive(Debug, Clone)]
pub struct ScoreLists {
    pub name: String,
    pub lives: Vec<f32>,
    pub spoofs: Vec<f32>,
}

/// The final score of every live and spoof row, gate refusals as [`GATED`].
pub fn final_score_lists(per_file: &[FileResult]) -> ScoreLists {
    let of = |label: &str| {
        per_file
            .iter()
            .filter(|r| r.label == label)
            .map(FileResult::headline_score)
            .collect()
    };
    ScoreLists {
        name: "final score".to_string(),
        lives: of("live"),
        spoofs: of("spoof"),
    }
}

/// Each network's live probability of every live and spoof row, by network name; a photo the
/// network did not score (the gate refused it) as [`GATED`].
pub fn network_score_lists(per_file: &[FileResult]) -> Vec<ScoreLists> {
    let mut names: Vec<&String> = per_file
        .iter()
        .flat_map(|r| r.model_scores.keys())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let of = |label: &str| {
                per_file
                    .iter()
                    .filter(|r| r.label == label)
                    .map(|r| r.model_scores.get(name).copied().unwrap_or(GATED))
                    .collect()
            };
            ScoreLists {
                name: name.clone(),
                lives: of("live"),
                spoofs: of("spoof"),
            }
        })
        .collect()
}

/// Ranking quality of one network alone (gate refusals as rejections).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetworkMetrics {
    pub auc: f64,
    pub eer: f64,
    pub eer_threshold: f32,
}

/// Precision and recall of one gate code.
///
/// Counted over `gate` rows and `live` rows only (spoofs have no right gate answer and `other`
/// rows are informational). A `gate` row that produced its expected code or one of its acceptable
/// codes is a true positive for its **expected** code (an acceptable alternative is not a false
/// positive for the code produced); a wrong `gate` row is a false negative for its expected code
/// and, when it produced a gate code, a false positive for that code; a gated `live` row is a
/// false positive for the code produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GateCodeStats {
    /// `gate` rows expecting this code.
    pub support: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    /// TP / (TP + FP); NaN (JSON null) when the code was never produced.
    pub precision: f64,
    /// TP / (TP + FN); NaN (JSON null) without support.
    pub recall: f64,
}

/// How the quality gate did.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// `gate` rows that produced their expected or an acceptable code.
    pub correct: usize,
    /// `gate` rows.
    pub total: usize,
    /// Per code in [`GATE_CODES`].
    pub per_code: BTreeMap<String, GateCodeStats>,
    /// Live photos the gate (or the decoder) refused.
    pub live_gated: usize,
    /// `live_gated` / live photos.
    pub live_gate_rate: f64,
    /// Spoofs the gate (or the decoder) refused.
    pub spoof_gated: usize,
    /// `spoof_gated` / spoofs.
    pub spoof_gate_rate: f64,
}

impl GateReport {
    fn compute(per_file: &[FileResult]) -> Self {
        let mut per_code: BTreeMap<String, GateCodeStats> = GATE_CODES
            .iter()
            .map(|c| (c.code().to_string(), GateCodeStats::default()))
            .collect();
        let gate_rows = per_file.iter().filter(|r| r.label == "gate");
        let mut correct = 0;
        for r in gate_rows.clone() {
            let right = r.gate_code_is_right();
            correct += usize::from(right);
            if let Some(expected) = per_code.get_mut(&r.expected_error) {
                expected.support += 1;
                if right {
                    expected.true_positives += 1;
                } else {
                    expected.false_negatives += 1;
                }
            }
            if !right {
                if let Some(produced) = r.error.as_ref().and_then(|e| per_code.get_mut(e)) {
                    produced.false_positives += 1;
                }
            }
        }
        for r in per_file.iter().filter(|r| r.label == "live") {
            if let Some(produced) = r.error.as_ref().and_then(|e| per_code.get_mut(e)) {
                produced.false_positives += 1;
            }
        }
        for stats in per_code.values_mut() {
            stats.precision = share(
                stats.true_positives,
                stats.true_positives + stats.false_positives,
            );
            stats.recall = share(stats.true_positives, stats.support);
        }
        let gated = |label: &str| {
            let rows: Vec<&FileResult> = per_file.iter().filter(|r| r.label == label).collect();
            let gated = rows.iter().filter(|r| r.error.is_some()).count();
            (gated, share(gated, rows.len()))
        };
        let (live_gated, live_gate_rate) = gated("live");
        let (spoof_gated, spoof_gate_rate) = gated("spoof");
        Self {
            correct,
            total: gate_rows.count(),
            per_code,
            live_gated,
            live_gate_rate,
            spoof_gated,
            spoof_gate_rate,
        }
    }
}

/// The report written by `liveness eval --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub threshold: f32,
    pub n_live: usize,
    pub n_spoof: usize,
    pub n_gate: usize,
    pub n_other: usize,
    /// Over every live and spoof photo: a gate refusal rejects a live photo and refuses an
    /// attack.
    pub headline: PadMetrics,
    /// Over the live and spoof photos the gate let through.
    pub scored_only: PadMetrics,
    /// Each network alone, over every live and spoof photo (as the headline).
    pub per_network: BTreeMap<String, NetworkMetrics>,
    pub gate: GateReport,
    /// `expected code (or label) -> produced code (or PASS/FAIL) -> count`.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    pub per_file: Vec<FileResult>,
}

/// [`PadMetrics`] at `threshold` over the live and spoof rows that `keep` selects.
fn pad_metrics(
    per_file: &[FileResult],
    threshold: f32,
    keep: impl Fn(&FileResult) -> bool,
) -> PadMetrics {
    let lives: Vec<f32> = per_file
        .iter()
        .filter(|r| r.label == "live" && keep(r))
        .map(FileResult::headline_score)
        .collect();
    let spoofs: Vec<(&str, f32)> = per_file
        .iter()
        .filter(|r| r.label == "spoof" && keep(r))
        .map(|r| {
            let attack_type = r.attack_type.as_deref().unwrap_or(UNKNOWN_ATTACK_TYPE);
            (attack_type, r.headline_score())
        })
        .collect();
    PadMetrics::compute(&lives, &spoofs, threshold)
}

/// Computes the report from per-file results.
pub fn summarize(per_file: Vec<FileResult>, threshold: f32) -> Report {
    let count = |label: &str| per_file.iter().filter(|r| r.label == label).count();
    let headline = pad_metrics(&per_file, threshold, |_| true);
    let scored_only = pad_metrics(&per_file, threshold, |r| r.headline_score() != GATED);

    let per_network = network_score_lists(&per_file)
        .into_iter()
        .map(|lists| {
            let eer = eer(&lists.lives, &lists.spoofs);
            let metrics = NetworkMetrics {
                auc: auc(&lists.lives, &lists.spoofs),
                eer: eer.rate,
                eer_threshold: eer.threshold,
            };
            (lists.name, metrics)
        })
        .collect();

    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &per_file {
        let expected = if r.label == "gate" {
            r.expected_error.clone()
        } else {
            r.label.clone()
        };
        *confusion
            .entry(expected)
            .or_default()
            .entry(r.produced(threshold))
            .or_default() += 1;
    }

    Report {
        threshold,
        n_live: count("live"),
        n_spoof: count("spoof"),
        n_gate: count("gate"),
        n_other: count("other"),
        headline,
        scored_only,
        per_network,
        gate: GateReport::compute(&per_file),
        confusion,
        per_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Diagnostics, ModelScore};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn row(label: &str, score: Option<f32>, error: Option<&str>) -> FileResult {
        FileResult {
            file: "f".into(),
            label: label.into(),
            expected_error: String::new(),
            acceptable_errors: Vec::new(),
            attack_type: (label == "spoof").then(|| UNKNOWN_ATTACK_TYPE.to_string()),
            score,
            error: error.map(String::from),
            model_scores: BTreeMap::new(),
            fused: None,
        }
    }

    fn spoof(attack_type: &str, score: Option<f32>, error: Option<&str>) -> FileResult {
        FileResult {
            attack_type: Some(attack_type.into()),
            ..row("spoof", score, error)
        }
    }

    fn gate(expected: &str, acceptable: &[&str], produced: Result<&str, f32>) -> FileResult {
        let (score, error) = match produced {
            Ok(code) => (None, Some(code)),
            Err(score) => (Some(score), None),
        };
        FileResult {
            expected_error: expected.into(),
            acceptable_errors: acceptable.iter().map(|c| c.to_string()).collect(),
            ..row("gate", score, error)
        }
    }

    #[test]
    fn apcer_and_bpcer_count_at_the_threshold() {
        // Spoofs >= 0.5: 0.7 and 0.5 -> 2/5; the GATED spoof is refused. Lives < 0.5: 0.2 -> 1/4.
        let lives = [0.9, 0.6, 0.5, 0.2];
        let spoofs = [0.7, 0.5, 0.3, 0.1, GATED];
        let point = OperatingPoint::at(&lives, &spoofs, 0.5);
        assert!(close(point.apcer, 0.4), "{point:?}");
        assert!(close(point.bpcer, 0.25), "{point:?}");
        assert!(close(point.acer(), 0.325), "{point:?}");
        assert!(apcer(&[], 0.5).is_nan() && bpcer(&[], 0.5).is_nan());
    }

    #[test]
    fn auc_counts_wins_and_half_ties() {
        // 0.9 beats 4 spoofs, 0.6 beats 3, 0.5 beats 2 and ties 1 (2.5), 0.2 beats 1:
        // 10.5 of 16 pairs.
        assert!(close(
            auc(&[0.9, 0.6, 0.5, 0.2], &[0.7, 0.5, 0.3, 0.1]),
            10.5 / 16.0
        ));
        // 0.8 beats 0.3 and GATED (2); GATED ties GATED (0.5) and loses to 0.3: 2.5 of 4.
        assert!(close(auc(&[0.8, GATED], &[GATED, 0.3]), 0.625));
        assert!(auc(&[0.5], &[]).is_nan());
    }

    #[test]
    fn det_curve_has_one_point_per_distinct_score_then_infinity() {
        // t=0.2: A 2/2 B 0; t=0.4: A 1/2 B 0; t=0.6: A 1/2 B 1/2; t=0.8: A 0 B 1/2; inf: A 0 B 1.
        let curve = det_curve(&[0.8, 0.4, GATED], &[0.6, 0.2, 0.6]);
        let got: Vec<(f32, f64, f64)> = curve
            .iter()
            .map(|p| (p.threshold, p.apcer, p.bpcer))
            .collect();
        let third = 1.0 / 3.0;
        let want = [
            (0.2, 1.0, third),
            (0.4, 2.0 * third, third),
            (0.6, 2.0 * third, 2.0 * third),
            (0.8, 0.0, 2.0 * third),
            (f32::INFINITY, 0.0, 1.0),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.0 == w.0 && close(g.1, w.1) && close(g.2, w.2), "{got:?}");
        }
    }

    #[test]
    fn eer_is_the_mean_where_the_rates_are_closest() {
        // Thresholds 0.1 (A 1, B 0), 0.2 (.75, 0), 0.3 (.5, 0), 0.5 (.5, .25), 0.6 (.25, .25),
        // 0.7 (0, .25), ...: the rates meet at 0.6, EER 0.25.
        let e = eer(&[0.9, 0.8, 0.7, 0.3], &[0.6, 0.5, 0.2, 0.1]);
        assert!(close(e.rate, 0.25) && e.threshold == 0.6, "{e:?}");
        // Separable scores: at 0.7 APCER 0 and BPCER 0; the lowest such threshold wins.
        let e = eer(&[0.9, 0.7], &[0.3, 0.1]);
        assert!(close(e.rate, 0.0) && e.threshold == 0.7, "{e:?}");
        let e = eer(&[0.9], &[]);
        assert!(e.rate.is_nan() && e.threshold.is_nan(), "{e:?}");
    }

    #[test]
    fn threshold_for_apcer_sits_just_above_the_first_spoof_too_many() {
        let spoofs = [0.9, 0.7, 0.7, 0.4, 0.2];
        // 20% of 5 allows 1 spoof: just above the 2nd highest (0.7) accepts only 0.9.
        let t = threshold_for_apcer(&spoofs, 0.2);
        assert!(
            t > 0.7 && t < 0.7001 && close(apcer(&spoofs, t), 0.2),
            "{t}"
        );
        // 40% allows 2, but the 2nd and 3rd tie at 0.7: both refused, APCER 1/5 < target.
        assert_eq!(threshold_for_apcer(&spoofs, 0.4), t);
        // 10% allows none: just above 0.9.
        let t = threshold_for_apcer(&spoofs, 0.1);
        assert!(t > 0.9 && apcer(&spoofs, t) == 0.0, "{t}");
        // 100% allows all: the lowest finite threshold.
        assert_eq!(threshold_for_apcer(&spoofs, 1.0), f32::MIN);
        // A GATED spoof counts as refused at any threshold.
        assert_eq!(threshold_for_apcer(&[0.5, GATED], 0.5), f32::MIN);
    }

    #[test]
    fn threshold_for_bpcer_is_the_first_live_score_that_must_be_accepted() {
        let lives = [0.9, 0.4, 0.2, 0.8, 0.4];
        // 20% of 5 allows 1 rejection: the 2nd lowest (0.4) rejects only 0.2.
        assert_eq!(threshold_for_bpcer(&lives, 0.2), Some(0.4));
        // 30% still allows 1 (floor 1.5).
        assert_eq!(threshold_for_bpcer(&lives, 0.3), Some(0.4));
        assert_eq!(threshold_for_bpcer(&lives, 0.1), Some(0.2));
        assert_eq!(threshold_for_bpcer(&lives, 1.0), Some(f32::INFINITY));
        // The gate already rejects 1 of 3: 5% is out of reach, 34% allows the gated one.
        assert_eq!(threshold_for_bpcer(&[GATED, 0.5, 0.9], 0.05), None);
        assert_eq!(threshold_for_bpcer(&[GATED, 0.5, 0.9], 0.34), Some(0.5));
        assert_eq!(allowed_errors(0.29, 100), 29);
    }

    #[test]
    fn rates_at_targets_report_both_errors_there() {
        let lives = [0.95, 0.85, 0.75, 0.65, 0.55];
        let spoofs = [0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.1, 0.05, 0.0, 0.0];
        // APCER 10% of 10 allows 1 spoof: threshold just above 0.6 accepts 0.8; rejects the
        // 0.55 live: BPCER 1/5.
        let p = bpcer_at_apcer(&lives, &spoofs, 0.10);
        assert!(close(p.apcer, 0.1) && close(p.bpcer, 0.2), "{p:?}");
        // APCER 5% allows none: above 0.8, rejecting 0.75, 0.65, 0.55: BPCER 3/5.
        let p = bpcer_at_apcer(&lives, &spoofs, 0.05);
        assert!(close(p.apcer, 0.0) && close(p.bpcer, 0.6), "{p:?}");
        // BPCER 20% allows 1 live: threshold 0.65 accepts the 0.8 spoof: APCER 1/10.
        let p = apcer_at_bpcer(&lives, &spoofs, 0.20).unwrap();
        assert!(
            p.threshold == 0.65 && close(p.apcer, 0.1) && close(p.bpcer, 0.2),
            "{p:?}"
        );
    }

    #[test]
    fn bootstrap_intervals_are_stratified_and_seeded() {
        // Separable classes: every resample has APCER 0, BPCER 0, AUC 1.
        let ci = bootstrap_intervals(&[0.9, 0.8], &[0.2, 0.1], 0.5, 2000, 1);
        assert_eq!(
            (ci.apcer, ci.bpcer, ci.acer, ci.auc),
            ([0.0; 2], [0.0; 2], [0.0; 2], [1.0; 2])
        );
        // One of two lives below the threshold: a resample's BPCER is 0, 1/2 or 1 with
        // probabilities 1/4, 1/2, 1/4 (~500 rounds each end, far more than the 50 each tail
        // cuts), so the interval is [0, 1]; spoofs stay at APCER 0 (they are drawn apart).
        let lives = [0.9, 0.1];
        let ci = bootstrap_intervals(&lives, &[0.2, 0.3], 0.5, 2000, 7);
        assert_eq!((ci.bpcer, ci.apcer), ([0.0, 1.0], [0.0, 0.0]));
        assert_eq!(ci, bootstrap_intervals(&lives, &[0.2, 0.3], 0.5, 2000, 7));
    }

    #[test]
    fn summary_keeps_gate_refusals_in_the_headline_only() {
        let rows = vec![
            row("live", Some(0.9), None),
            row("live", Some(0.4), None),
            row("live", None, Some("FACE_NOT_FOUND")),
            spoof("print", Some(0.6), None),
            spoof("print", Some(0.1), None),
            spoof("replay-phone", Some(0.7), None),
            row("spoof", None, Some("FACE_TOO_SMALL")),
            row("other", Some(0.8), None),
        ];
        let r = summarize(rows, 0.5);
        assert_eq!((r.n_live, r.n_spoof, r.n_gate, r.n_other), (3, 4, 0, 1));
        let h = &r.headline;
        // Accepted spoofs 0.6 and 0.7 of 4; rejected lives 0.4 and the gated one of 3.
        assert!(close(h.apcer, 0.5) && close(h.bpcer, 2.0 / 3.0), "{h:?}");
        assert!(close(h.acer, (0.5 + 2.0 / 3.0) / 2.0));
        // print 1/2, replay-phone 1/1, unknown (gated) 0/1; the worst is replay-phone.
        let per_type: Vec<(&str, usize, f64)> = h
            .apcer_per_attack_type
            .iter()
            .map(|(t, a)| (t.as_str(), a.n, a.apcer))
            .collect();
        assert_eq!(
            per_type,
            [
                ("print", 2, 0.5),
                ("replay-phone", 1, 1.0),
                ("unknown", 1, 0.0)
            ]
        );
        assert_eq!(h.apcer_max, 1.0);
        // 0.9 beats all 4 spoofs, 0.4 beats 0.1 and GATED, GATED ties GATED: 6.5 of 12 pairs.
        assert!(close(h.auc, 6.5 / 12.0), "{}", h.auc);
        let s = &r.scored_only;
        assert_eq!((s.n_live, s.n_spoof), (2, 3));
        // Scored only: spoofs 0.6, 0.7 of 3 accepted; live 0.4 of 2 rejected; 4 of 6 pairs.
        assert!(close(s.apcer, 2.0 / 3.0) && close(s.bpcer, 0.5), "{s:?}");
        assert!(close(s.auc, 4.0 / 6.0), "{}", s.auc);
        let g = &r.gate;
        assert_eq!((g.live_gated, g.spoof_gated), (1, 1));
        assert!(close(g.live_gate_rate, 1.0 / 3.0) && close(g.spoof_gate_rate, 0.25));
        assert_eq!(r.confusion["other"]["PASS"], 1);
        assert_eq!(r.confusion["live"]["FACE_NOT_FOUND"], 1);
    }

    #[test]
    fn gate_precision_and_recall_honour_acceptable_codes() {
        let rows = vec![
            // TP for FACE_TOO_SMALL.
            gate("FACE_TOO_SMALL", &[], Ok("FACE_TOO_SMALL")),
            // An acceptable alternative: TP for FACE_ANGLE_TOO_LARGE, no FP for FACE_TOO_CLOSE.
            gate(
                "FACE_ANGLE_TOO_LARGE",
                &["FACE_TOO_CLOSE"],
                Ok("FACE_TOO_CLOSE"),
            ),
            // Scored instead of refused: FN for TOO_MANY_FACES.
            gate("TOO_MANY_FACES", &[], Err(0.7)),
            // Wrong code: FN for FACE_CROPPED, FP for FACE_CLOSE_TO_BORDER.
            gate("FACE_CROPPED", &[], Ok("FACE_CLOSE_TO_BORDER")),
            // A gated live photo: FP for FACE_TOO_SMALL.
            row("live", None, Some("FACE_TOO_SMALL")),
            // Spoof and other rows count for no code.
            row("spoof", None, Some("FACE_NOT_FOUND")),
            row("other", None, Some("FACE_NOT_FOUND")),
        ];
        let r = summarize(rows, 0.5);
        assert_eq!((r.gate.correct, r.gate.total), (2, 4));
        let stats = |code: &str| {
            let s = r.gate.per_code[code];
            (
                s.support,
                s.true_positives,
                s.false_positives,
                s.false_negatives,
            )
        };
        assert_eq!(stats("FACE_TOO_SMALL"), (1, 1, 1, 0));
        assert_eq!(stats("FACE_ANGLE_TOO_LARGE"), (1, 1, 0, 0));
        assert_eq!(stats("FACE_TOO_CLOSE"), (0, 0, 0, 0));
        assert_eq!(stats("TOO_MANY_FACES"), (1, 0, 0, 1));
        assert_eq!(stats("FACE_CROPPED"), (1, 0, 0, 1));
        assert_eq!(stats("FACE_CLOSE_TO_BORDER"), (0, 0, 1, 0));
        assert_eq!(stats("FACE_NOT_FOUND"), (0, 0, 0, 0));
        let small = r.gate.per_code["FACE_TOO_SMALL"];
        assert!(close(small.precision, 0.5) && close(small.recall, 1.0));
        let border = r.gate.per_code["FACE_CLOSE_TO_BORDER"];
        assert!(close(border.precision, 0.0) && border.recall.is_nan());
        assert!(r.gate.per_code["FACE_TOO_CLOSE"].precision.is_nan());
        assert_eq!(r.confusion["FACE_ANGLE_TOO_LARGE"]["FACE_TOO_CLOSE"], 1);
        assert_eq!(r.confusion["TOO_MANY_FACES"]["PASS"], 1);
    }

    #[test]
    fn labels_take_optional_columns_and_refuse_unknown_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("labels.csv"),
            "file,label,expected_error,acceptable_errors\n\
             a.jpg,gate,FACE_NOT_FOUND,FACE_CROPPED; FACE_TOO_CLOSE\n\
             b.jpg,spoof,,\n",
        )
        .unwrap();
        let rows = read_labels(dir.path()).unwrap();
        let a = FileResult::new(
            rows[0].clone(),
            Ok(assessment(Outcome::Scored { score: 0.3 })),
        );
        assert_eq!(a.acceptable_errors, ["FACE_CROPPED", "FACE_TOO_CLOSE"]);
        assert_eq!(a.attack_type, None);
        let b = FileResult::new(
            rows[1].clone(),
            Ok(assessment(Outcome::Scored { score: 0.3 })),
        );
        assert_eq!(b.attack_type.as_deref(), Some(UNKNOWN_ATTACK_TYPE));
        assert_eq!(b.model_scores["minifasnet_v2"], 0.25);
        assert_eq!((b.score, b.fused), (Some(0.3), Some(0.2)));

        std::fs::write(dir.path().join("labels.csv"), "file,label\nc.jpg,fake\n").unwrap();
        let err = read_labels(dir.path()).unwrap_err().to_string();
        assert!(err.contains("c.jpg") && err.contains("fake"), "{err}");
    }

    fn assessment(outcome: Outcome) -> Assessment {
        Assessment {
            outcome,
            timings: Default::default(),
            diagnostics: Diagnostics {
                anti_spoof: vec![ModelScore {
                    model: "minifasnet_v2".into(),
                    p_live: 0.25,
                    crop: [0, 0, 1, 1],
                }],
                fused: Some(0.2),
                ..Default::default()
            },
        }
    }
}
