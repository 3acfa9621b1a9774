//! `liveness`: check photos, evaluate on a labelled set, benchmark, or serve the API locally.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use liveness::api::contract::{ApiError, LivenessResponse};
use liveness::config::PipelineConfig;
use liveness::det_plot::draw_det_plot;
use liveness::eval::{
    final_score_lists, network_score_lists, read_labels, summarize, FileResult, OperatingPoint,
    PadMetrics, Report, TargetedOperatingPoint, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, GATE_CODES,
};
use liveness::pipeline::{Outcome, Pipeline};
use liveness::scoring::{
    fit_calibration, Calibration, FusionWeights, ScoreModel, CALIBRATION_FILE,
};

#[derive(Parser)]
#[command(
    version,
    about = "Passive face liveness: one photo in, a liveness score out"
)]
struct Cli {
    /// Threads per request: 2 runs the gate beside the anti-spoof networks and splits large layers (overrides LIVENESS_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score photos; prints one JSON line per image in the API response shape.
    Check {
        images: Vec<PathBuf>,
        /// Also print face box, landmarks, per-model probabilities and stage timings.
        #[arg(long)]
        verbose: bool,
    },
    /// Evaluate on DIR/labels.csv (live | spoof | gate | other rows): APCER per attack type,
    /// BPCER, ACER with bootstrap CIs, EER, AUC, rates at fixed targets, gate precision/recall.
    Eval {
        dir: PathBuf,
        /// Write the full JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Decision threshold (overrides LIVENESS_SCORE_THRESHOLD).
        #[arg(long)]
        threshold: Option<f32>,
        /// Draw DET curves (each network and the final score) into this PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Fit the score calibration on labelled directories (live and spoof rows of labels.csv):
    /// the fused value at which score = 0.5 keeps BPCER (gated lives counted) at or below the
    /// target, and the slope of the logistic map; writes the scoring file.
    Calibrate {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Highest BPCER allowed at score 0.5, over the live photos of all directories.
        #[arg(long, default_value_t = 0.05)]
        target_bpcer: f64,
        /// Fusion weights `name=weight,...` (default: those of the current scoring file).
        #[arg(long)]
        weights: Option<FusionWeights>,
        /// Where to write the scoring file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Time decode, detect, gate, crop, classify and total on 640x480 and 1920x1080 JPEGs.
    Bench {
        /// Source photo (re-encoded at both sizes).
        #[arg(long, default_value = "../shared/data/faces-dev/live_siwm_001.jpg")]
        image: PathBuf,
        /// Timed iterations per configuration.
        #[arg(long, default_value_t = 50)]
        iterations: usize,
        /// Only the per-network forward times (used by `make bench-peer` and for profiling).
        #[arg(long)]
        networks_only: bool,
        /// Per-layer times and GFLOP/s of every network's convolutions (median per layer).
        #[arg(long, conflicts_with = "networks_only")]
        layers: bool,
        /// Decode and each network's input preparation on the 1920x1080 JPEG, with the caches
        /// warm and flushed.
        #[arg(long, conflicts_with_all = ["networks_only", "layers"])]
        preprocessing: bool,
    },
    /// Serve the HTTP API locally (same router as the Lambda); see docs/api.md.
    Serve {
        /// TCP port on LIVENESS_BIND_ADDR (default 127.0.0.1).
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut config = PipelineConfig::from_env()?;
    if let Some(threads) = cli.threads {
        config.threads = threads;
    }
    liveness::nn::limit_thread_pools_at_startup(config.threads);
    match cli.command {
        Command::Check { images, verbose } => check(config, &images, verbose),
        Command::Eval {
            dir,
            json,
            threshold,
            plot,
        } => {
            if let Some(t) = threshold {
                config.score_threshold = t;
            }
            eval(config, &dir, json.as_deref(), plot.as_deref())
        }
        Command::Calibrate {
            dirs,
            target_bpcer,
            weights,
            out,
        } => calibrate(config, &dirs, target_bpcer, weights, &out),
        Command::Bench {
            image,
            iterations,
            networks_only,
            layers,
            preprocessing,
        } => match (networks_only, layers, preprocessing) {
            (_, true, _) => bench_networks(&config.model_dir, iterations, NetworkBench::Layers),
            (true, ..) => bench_networks(&config.model_dir, iterations, NetworkBench::Forward),
            (.., true) => bench_preprocessing(config, &image, iterations),
            _ => bench(config, &image, iterations),
        },
        Command::Serve { port } => serve(config, port),
    }
}

fn serve(config: PipelineConfig, port: u16) -> Result<()> {
    liveness::api::init_tracing(false);
    let api_config = liveness::api::ApiConfig::from_env()?;
    let pipeline = std::sync::Arc::new(Pipeline::load(config)?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(liveness::api::server::serve(pipeline, api_config, port))?;
    Ok(())
}

fn check(config: PipelineConfig, images: &[PathBuf], verbose: bool) -> Result<()> {
    let pipeline = Pipeline::load(config)?;
    for path in images {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let line = match pipeline.assess_encoded(&bytes) {
            Ok(a) => {
                let body = LivenessResponse::for_outcome(Some(name), &a.outcome);
                let mut line = serde_json::to_value(body)?;
                if verbose {
                    line["diagnostics"] = serde_json::to_value(&a.diagnostics)?;
                    line["timings"] = serde_json::to_value(&a.timings)?;
                }
                line
            }
            Err(e) => serde_json::to_value(LivenessResponse::error(
                Some(name),
                ApiError::from(e).code(),
            ))?,
        };
        println!("{line}");
    }
    Ok(())
}

fn eval(
    config: PipelineConfig,
    dir: &Path,
    json_out: Option<&Path>,
    plot_out: Option<&Path>,
) -> Result<()> {
    let threshold = config.score_threshold;
    let pipeline = Pipeline::load(config)?;
    let labels = read_labels(dir)?;
    let progress = progress_bar(labels.len());
    let mut per_file = Vec::with_capacity(labels.len());
    for row in labels {
        let bytes =
            std::fs::read(dir.join(&row.file)).with_context(|| format!("reading {}", row.file))?;
        per_file.push(FileResult::new(row, pipeline.assess_encoded(&bytes)));
        progress.inc(1);
    }
    progress.finish_and_clear();
    let report = summarize(per_file, threshold);
    print_report(&report);
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = plot_out {
        let title = format!(
            "DET on {} (threshold {:.2}; a gate refusal counts as an error)",
            dir.file_name().unwrap_or(dir.as_os_str()).to_string_lossy(),
            threshold
        );
        let operating_point = OperatingPoint {
            threshold,
            apcer: report.headline.apcer,
            bpcer: report.headline.bpcer,
        };
        draw_det_plot(
            path,
            &title,
            &network_score_lists(&report.per_file),
            &final_score_lists(&report.per_file),
            &operating_point,
        )
        .with_context(|| format!("drawing {}", path.display()))?;
        println!("DET plot written to {}", path.display());
    }
    Ok(())
}

/// A rate as a percentage, `n/a` when undefined (NaN).
fn percent(rate: f64) -> String {
    if rate.is_nan() {
        "n/a".to_string()
    } else {
        format!("{:.1}%", rate * 100.0)
    }
}

/// A 95% interval of rates, e.g. `[2.1%, 9.8%]`.
fn percent_interval([low, high]: [f64; 2]) -> String {
    format!("[{}, {}]", percent(low), percent(high))
}

/// An AUC or other fraction to three decimals, `n/a` when undefined.
fn fraction(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_string()
    } else {
        format!("{value:.3}")
    }
}

/// A threshold for display: `any` for the lowest finite one (accepts every scored photo), `inf`
/// for the one that rejects everything.
fn threshold_text(threshold: f32) -> String {
    if threshold == f32::MIN {
        "any".to_string()
    } else if threshold.is_infinite() {
        "inf".to_string()
    } else {
        format!("{threshold:.3}")
    }
}

fn print_report(r: &Report) {
    println!(
        "{:<44} {:<6} {:<14} {:>7}  {:<48} error / expected",
        "file", "label", "attack", "score", "networks (fused)"
    );
    for f in &r.per_file {
        let score = f.score.map_or_else(|| "-".into(), |s| format!("{s:.4}"));
        let networks: Vec<String> = f
            .model_scores
            .iter()
            .map(|(model, p)| format!("{}={p:.3}", model.trim_start_matches("minifasnet_")))
            .chain(f.fused.map(|p| format!("({p:.3})")))
            .collect();
        let error = f.error.as_deref().unwrap_or("");
        let mut expected = String::new();
        if !f.expected_error.is_empty() {
            expected = format!(" (expected {}", f.expected_error);
            if !f.acceptable_errors.is_empty() {
                expected += &format!(" or {}", f.acceptable_errors.join(" / "));
            }
            expected += ")";
        }
        println!(
            "{:<44} {:<6} {:<14} {:>7}  {:<48} {error}{expected}",
            f.file,
            f.label,
            f.attack_type.as_deref().unwrap_or(""),
            score,
            networks.join(" ")
        );
    }

    println!();
    println!("expected \\ produced:");
    for (expected, produced) in &r.confusion {
        let cells: Vec<String> = produced.iter().map(|(p, n)| format!("{p}={n}")).collect();
        println!("  {expected:<22} {}", cells.join("  "));
    }

    println!();
    println!(
        "gate: {}/{} gate photos got their expected or an acceptable code",
        r.gate.correct, r.gate.total
    );
    println!(
        "gate codes (gate and live rows; an acceptable code is a TP of the expected one, a gated \
         live photo an FP of the code produced; codes never expected nor produced omitted):"
    );
    println!(
        "  {:<22} {:>7} {:>4} {:>4} {:>4} {:>10} {:>8}",
        "code", "support", "TP", "FP", "FN", "precision", "recall"
    );
    for code in GATE_CODES.map(|c| c.code()) {
        let s = &r.gate.per_code[code];
        if s.support + s.false_positives == 0 {
            continue;
        }
        println!(
            "  {code:<22} {:>7} {:>4} {:>4} {:>4} {:>10} {:>8}",
            s.support,
            s.true_positives,
            s.false_positives,
            s.false_negatives,
            percent(s.precision),
            percent(s.recall)
        );
    }

    println!();
    println!(
        "threshold {:.2} (accept when score >= threshold): {} live, {} spoof, {} gate, {} other",
        r.threshold, r.n_live, r.n_spoof, r.n_gate, r.n_other
    );
    println!(
        "95% CIs: percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples (seed {BOOTSTRAP_SEED}), \
         lives and spoofs resampled separately"
    );
    println!("headline (a gate refusal rejects a live photo and refuses an attack):");
    print_pad_metrics(&r.headline);
    println!("scored only (the photos the gate let through):");
    print_pad_metrics(&r.scored_only);
    println!(
        "gate rate: live {}/{} ({}), spoof {}/{} ({})",
        r.gate.live_gated,
        r.n_live,
        percent(r.gate.live_gate_rate),
        r.gate.spoof_gated,
        r.n_spoof,
        percent(r.gate.spoof_gate_rate)
    );
    for (network, m) in r.per_network.iter().filter(|(_, m)| !m.auc.is_nan()) {
        println!(
            "network {network:<20} AUC {}  EER {} at {}",
            fraction(m.auc),
            percent(m.eer),
            threshold_text(m.eer_threshold)
        );
    }
}

fn print_pad_metrics(m: &PadMetrics) {
    if m.n_live == 0 || m.n_spoof == 0 {
        println!(
            "  APCER {}  BPCER {}  ({} attacks, {} live: the other metrics need both)",
            percent(m.apcer),
            percent(m.bpcer),
            m.n_spoof,
            m.n_live
        );
        return;
    }
    println!(
        "  APCER {:>6} {}  over {} attacks",
        percent(m.apcer),
        percent_interval(m.ci.apcer),
        m.n_spoof
    );
    for (attack_type, t) in &m.apcer_per_attack_type {
        println!(
            "    {attack_type:<16} {:>6}  ({} attacks)",
            percent(t.apcer),
            t.n
        );
    }
    let worst: Vec<&str> = m
        .apcer_per_attack_type
        .iter()
        .filter(|(_, t)| t.apcer == m.apcer_max)
        .map(|(attack_type, _)| attack_type.as_str())
        .collect();
    println!(
        "    {:<16} {:>6}  ({})",
        "worst type",
        percent(m.apcer_max),
        worst.join(", ")
    );
    println!(
        "  BPCER {:>6} {}  over {} live",
        percent(m.bpcer),
        percent_interval(m.ci.bpcer),
        m.n_live
    );
    println!(
        "  ACER  {:>6} {}",
        percent(m.acer),
        percent_interval(m.ci.acer)
    );
    println!(
        "  EER   {:>6} at {}",
        percent(m.eer),
        threshold_text(m.eer_threshold)
    );
    println!(
        "  AUC   {:>6} [{}, {}]",
        fraction(m.auc),
        fraction(m.ci.auc[0]),
        fraction(m.ci.auc[1])
    );
    let at_targets =
        |name: &str, points: &[TargetedOperatingPoint], rate: fn(&OperatingPoint) -> f64| {
            let cells: Vec<String> = points
                .iter()
                .map(|p| match &p.operating_point {
                    Some(op) => format!(
                        "{:.0}%: {} (t {})",
                        p.target * 100.0,
                        percent(rate(op)),
                        threshold_text(op.threshold)
                    ),
                    None => format!(
                        "{:.0}%: unreachable (the gate alone rejects more)",
                        p.target * 100.0
                    ),
                })
                .collect();
            println!("  {name} {}", cells.join(" | "));
        };
    at_targets("BPCER at APCER", &m.bpcer_at_apcer, |op| op.bpcer);
    at_targets("APCER at BPCER", &m.apcer_at_bpcer, |op| op.apcer);
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Fused values of one labelled directory's live and spoof photos.
struct CalibrationSet {
    name: String,
    live: Vec<f32>,
    spoof: Vec<f32>,
    live_gated: usize,
    spoof_gated: usize,
}

impl CalibrationSet {
    /// APCER and BPCER when photos with a fused value >= `pivot` are accepted (gated lives
    /// rejected, gated spoofs refused).
    fn error_rates(&self, pivot: f32) -> (f64, f64) {
        let rate = |n: usize, d: usize| n as f64 / d.max(1) as f64;
        let accepted_spoofs = self.spoof.iter().filter(|f| **f >= pivot).count();
        let rejected_lives = self.live.iter().filter(|f| **f < pivot).count() + self.live_gated;
        (
            rate(accepted_spoofs, self.spoof.len() + self.spoof_gated),
            rate(rejected_lives, self.live.len() + self.live_gated),
        )
    }

    fn report(&self, pivot: f32) -> serde_json::Value {
        let (apcer, bpcer) = self.error_rates(pivot);
        serde_json::json!({
            "set": self.name,
            "live": self.live.len() + self.live_gated,
            "spoof": self.spoof.len() + self.spoof_gated,
            "live_gated": self.live_gated,
            "spoof_gated": self.spoof_gated,
            "apcer": apcer,
            "bpcer": bpcer,
        })
    }
}

fn calibrate(
    config: PipelineConfig,
    dirs: &[PathBuf],
    target_bpcer: f64,
    weights: Option<FusionWeights>,
    out: &Path,
) -> Result<()> {
    let weights = match weights.or_else(|| config.fusion_weights.clone()) {
        Some(w) => w,
        None => {
            let current = config
                .calibration_file
                .clone()
                .unwrap_or_else(|| config.model_dir.join(CALIBRATION_FILE));
            ScoreModel::load(&current)
                .context("no --weights given and the current scoring file is unusable")?
                .fusion_weights
        }
    };
    // The networks' outputs and the fusion do not depend on the calibration being fitted.
    let provisional = ScoreModel {
        fusion_weights: weights.clone(),
        calibration: Calibration {
            pivot: 0.5,
            slope: 1.0,
        },
        fit: None,
    };
    let pipeline = Pipeline::with_score_model(config, provisional)?;
    let mut sets = Vec::new();
    for dir in dirs {
        let labels = read_labels(dir)?;
        let progress = progress_bar(labels.len());
        let mut set = CalibrationSet {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            live: Vec::new(),
            spoof: Vec::new(),
            live_gated: 0,
            spoof_gated: 0,
        };
        for row in labels {
            progress.inc(1);
            let is_live = match row.label.as_str() {
                "live" => true,
                "spoof" => false,
                _ => continue,
            };
            let bytes = std::fs::read(dir.join(&row.file))
                .with_context(|| format!("reading {}", row.file))?;
            let fused = match pipeline.assess_encoded(&bytes) {
                Ok(a) if matches!(a.outcome, Outcome::Scored { .. }) => a.diagnostics.fused,
                _ => None,
            };
            match (is_live, fused) {
                (true, Some(f)) => set.live.push(f),
                (true, None) => set.live_gated += 1,
                (false, Some(f)) => set.spoof.push(f),
                (false, None) => set.spoof_gated += 1,
            }
        }
        progress.finish_and_clear();
        sets.push(set);
    }
    let all_live: Vec<f32> = sets.iter().flat_map(|s| s.live.iter().copied()).collect();
    let all_spoof: Vec<f32> = sets.iter().flat_map(|s| s.spoof.iter().copied()).collect();
    let live_gated = sets.iter().map(|s| s.live_gated).sum();
    let calibration = fit_calibration(&all_live, &all_spoof, live_gated, target_bpcer)
        .context("no scored live photo to calibrate on")?;
    let pooled = CalibrationSet {
        name: "all".into(),
        live: all_live,
        spoof: all_spoof,
        live_gated,
        spoof_gated: sets.iter().map(|s| s.spoof_gated).sum(),
    };
    let reports: Vec<serde_json::Value> = sets
        .iter()
        .chain([&pooled])
        .map(|s| s.report(calibration.pivot))
        .collect();
    println!(
        "fusion weights {}; target BPCER {:.1}%",
        serde_json::to_string(&weights)?,
        target_bpcer * 100.0
    );
    println!(
        "operating point: fused {:.5} -> score 0.5; slope {:.4} (score = sigmoid(slope * (logit(fused) - logit(pivot))))",
        calibration.pivot, calibration.slope
    );
    for r in &reports {
        println!(
            "  {:<16} live {:>3} (gated {:>2})  spoof {:>3} (gated {:>2})  APCER {:>5.1}%  BPCER {:>5.1}%",
            r["set"].as_str().unwrap_or_default(),
            r["live"],
            r["live_gated"],
            r["spoof"],
            r["spoof_gated"],
            r["apcer"].as_f64().unwrap_or_default() * 100.0,
            r["bpcer"].as_f64().unwrap_or_default() * 100.0,
        );
    }
    let model = ScoreModel {
        fusion_weights: weights,
        calibration,
        fit: Some(serde_json::json!({
            "command": format!(
                "liveness calibrate {} --target-bpcer {target_bpcer}",
                sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(" ")
            ),
            "target_bpcer": target_bpcer,
            "sets": reports,
        })),
    };
    std::fs::write(out, serde_json::to_string_pretty(&model)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

fn bench(config: PipelineConfig, image: &Path, iterations: usize) -> Result<()> {
    let threads = config.threads;
    let model_dir = config.model_dir.clone();
    let source = liveness::image_io::decode_rgb(&std::fs::read(image)?, Default::default())?;
    let load_start = Instant::now();
    let pipeline = Pipeline::load(config)?;
    pipeline.assess_image(&source)?;
    println!(
        "cold start (load every network + first inference on {}x{}): {:.1} ms",
        source.width(),
        source.height(),
        load_start.elapsed().as_secs_f64() * 1e3
    );
    println!("threads: {threads}; median (min-max) ms over {iterations} iterations");
    println!(
        "{:<10} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "image", "decode", "detect", "gate", "crop", "classify", "total"
    );
    for (w, h) in [(640u32, 480u32), (1920, 1080)] {
        let jpeg = reencoded(&source, w, h)?;
        let mut stages: [Vec<f64>; 6] = Default::default();
        for _ in 0..iterations {
            let t = pipeline.assess_encoded(&jpeg)?.timings;
            let values = [
                t.decode_ms,
                t.detect_ms,
                t.gate_ms,
                t.crop_ms,
                t.classify_ms,
                t.total_ms,
            ];
            for (stage, v) in stages.iter_mut().zip(values) {
                stage.push(v);
            }
        }
        let cells: Vec<String> = stages
            .iter_mut()
            .map(|v| format!("{:>16}", summary(v)))
            .collect();
        println!("{:<10} {}", format!("{w}x{h}"), cells.join(" "));
    }
    bench_networks(&model_dir, iterations, NetworkBench::Forward)
}

/// The photo at `w x h`, as a quality-90 JPEG.
fn reencoded(source: &image::RgbImage, w: u32, h: u32) -> Result<Vec<u8>> {
    let resized = image::imageops::resize(source, w, h, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&resized)?;
    Ok(jpeg)
}

/// Decode and every network's input preparation for the face of the 1920x1080 JPEG, each
/// timed with the caches warm (the same step just before) and flushed (64 MiB written first,
/// as when a request's photo has been decoded and the networks have run since).
fn bench_preprocessing(config: PipelineConfig, image: &Path, iterations: usize) -> Result<()> {
    use liveness::imgproc::{resize_bilinear, Window};
    let source = liveness::image_io::decode_rgb(&std::fs::read(image)?, Default::default())?;
    let jpeg = reencoded(&source, 1920, 1080)?;
    let decode = || liveness::image_io::decode_rgb(&jpeg, config.decode);
    let photo = decode()?;
    let pipeline = Pipeline::load(config.clone())?;
    let Some(face) = pipeline.assess_image(&photo)?.diagnostics.selected else {
        anyhow::bail!("no face selected in {}", image.display());
    };
    let anti_spoof = liveness::models::minifasnet::Variant::ALL
        .into_iter()
        .map(|v| liveness::antispoof::AntiSpoofModel::load(&config.model_dir, v))
        .collect::<Result<Vec<_>, _>>()?;
    let (w, h) = photo.dimensions();
    let (dw, dh) = liveness::detector::detector_input_size(w, h, config.detector_long_side);
    let [left_eye, right_eye, ..] = face.landmarks;
    type Step<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let mut steps: Vec<(String, Step)> = vec![
        (
            "decode 1920x1080 JPEG".into(),
            Box::new(|| decode().map(drop).map_err(Into::into)),
        ),
        (
            format!("detector input {dw}x{dh}"),
            Box::new(|| {
                let full = Window { x: 0, y: 0, w, h };
                std::hint::black_box(resize_bilinear(&photo, full, dw, dh));
                Ok(())
            }),
        ),
        (
            "FaceMesh input 192x192".into(),
            Box::new(|| {
                let mesh = liveness::models::facemesh::mesh_input;
                mesh(&photo, face.bbox, left_eye, right_eye)
                    .map(drop)
                    .map_err(Into::into)
            }),
        ),
        (
            "mask input 224x224".into(),
            Box::new(|| {
                liveness::models::mask::mask_input(&photo, face.bbox)
                    .map(drop)
                    .map_err(Into::into)
            }),
        ),
    ];
    for model in &anti_spoof {
        let name = format!("{} input", model.variant().name());
        let step: Step = Box::new(|| model.input(&photo, face.bbox).map(drop).map_err(Into::into));
        steps.push((name, step));
    }
    println!(
        "face box {:?} in a {w}x{h} photo; median (min-max) ms over {iterations} iterations",
        face.bbox.map(|v| v.round())
    );
    println!("{:<28} {:>18} {:>18}", "step", "warm", "caches flushed");
    let mut flush = vec![0u8; 64 << 20];
    for (name, step) in &steps {
        let (mut warm, mut cold) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            step()?;
            let start = Instant::now();
            step()?;
            warm.push(start.elapsed().as_secs_f64() * 1e3);
            for byte in flush.iter_mut().step_by(64) {
                *byte = byte.wrapping_add(1);
            }
            std::hint::black_box(&flush);
            let start = Instant::now();
            step()?;
            cold.push(start.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{name:<28} {:>18} {:>18}",
            summary(&mut warm),
            summary(&mut cold)
        );
    }
    Ok(())
}

/// What `bench_networks` reports for each network.
#[derive(Clone, Copy, PartialEq)]
enum NetworkBench {
    /// The whole forward pass.
    Forward,
    /// Each convolution layer (`liveness::nn::conv::profile`).
    Layers,
}

/// "median (min-max)" of `samples`, in place.
fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    format!(
        "{:.2} ({:.2}-{:.2})",
        samples[n / 2],
        samples[0],
        samples[n - 1]
    )
}

/// Forward time of each network alone, on fixed pseudo-random inputs of its real input size.
fn bench_networks(model_dir: &Path, iterations: usize, report: NetworkBench) -> Result<()> {
    use candle_core::{Device, Module, Tensor};
    use liveness::models::{facemesh::FaceMesh, load_weights, mask::MaskClassifier};
    use liveness::models::{minifasnet::MiniFasNet, minifasnet::Variant, retinaface::RetinaFace};
    use liveness::pipeline::{FACEMESH_FILE, MASK_FILE, RETINAFACE_FILE};

    type Forward = Box<dyn Fn() -> candle_core::Result<()> + Send + Sync>;
    let input = |shape: (usize, usize, usize, usize), lo: f32, hi: f32| {
        Tensor::rand(lo, hi, shape, &Device::Cpu)
    };
    let mut networks: Vec<(String, Forward)> = Vec::new();
    let retinaface = RetinaFace::new(load_weights(model_dir.join(RETINAFACE_FILE))?)?;
    let x = input((1, 3, 240, 320), -128.0, 128.0)?;
    networks.push((
        "RetinaFace 320x240".into(),
        Box::new(move || retinaface.forward(&x).map(drop)),
    ));
    for variant in Variant::ALL {
        let file = liveness::antispoof::weights_file(variant);
        let net = MiniFasNet::new(load_weights(model_dir.join(file))?, variant)?;
        let size = variant.input_size();
        let x = input((1, 3, size, size), 0.0, 255.0)?;
        let name = format!("{} {size}x{size}", variant.name());
        networks.push((name, Box::new(move || net.forward(&x).map(drop))));
    }
    let mesh = FaceMesh::load(model_dir.join(FACEMESH_FILE))?;
    let x = input((1, 3, 192, 192), 0.0, 1.0)?;
    networks.push((
        "FaceMesh 192x192".into(),
        Box::new(move || mesh.forward(&x).map(drop)),
    ));
    let mask = MaskClassifier::load(model_dir.join(MASK_FILE))?;
    let x = input((1, 3, 224, 224), -1.0, 1.0)?;
    networks.push((
        "mask classifier 224x224".into(),
        Box::new(move || mask.forward(&x).map(drop)),
    ));

    if report == NetworkBench::Forward {
        println!("network forward, median (min-max) ms:");
    }
    for (name, forward) in &networks {
        forward()?;
        let mut samples = Vec::with_capacity(iterations);
        let mut layers: Vec<Vec<liveness::nn::conv::profile::LayerTime>> = Vec::new();
        for _ in 0..iterations {
            // With more than one thread, the second takes half of each large layer (and the
            // layers are recorded on the thread that runs the network).
            let (elapsed, recorded) = liveness::nn::parallel::with_helper(|| {
                if report == NetworkBench::Layers {
                    liveness::nn::conv::profile::start();
                }
                let start = Instant::now();
                let result = forward();
                let elapsed = start.elapsed();
                (
                    result.map(|()| elapsed),
                    liveness::nn::conv::profile::finish(),
                )
            });
            samples.push(elapsed?.as_secs_f64() * 1e3);
            if report == NetworkBench::Layers {
                layers.push(recorded);
            }
        }
        match report {
            NetworkBench::Forward => println!("  {name:<28} {}", summary(&mut samples)),
            NetworkBench::Layers => print_layers(name, &mut samples, &layers),
        }
    }
    Ok(())
}

/// Per-layer medians of `runs` (each the layers of one forward pass, in order), then the time
/// per kind of layer (the first word of its description) against the whole forward pass.
fn print_layers(
    name: &str,
    forward_ms: &mut [f64],
    runs: &[Vec<liveness::nn::conv::profile::LayerTime>],
) {
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let forward = median(&mut forward_ms.to_vec());
    println!("\n{name}: forward {forward:.2} ms (median)");
    println!("  {:<40} {:>8} {:>8}", "layer", "ms", "GFLOP/s");
    let mut by_kind: Vec<(String, f64)> = Vec::new();
    let first = runs.first().map(Vec::as_slice).unwrap_or_default();
    for (i, layer) in first.iter().enumerate() {
        let mut times: Vec<f64> = runs
            .iter()
            .filter_map(|run| run.get(i))
            .map(|l| l.elapsed.as_secs_f64() * 1e3)
            .collect();
        let ms = median(&mut times);
        println!(
            "  {:<40} {ms:>8.3} {:>8.1}",
            layer.layer,
            layer.flops / ms / 1e6
        );
        let kind = layer
            .layer
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, total)) => *total += ms,
            None => by_kind.push((kind, ms)),
        }
    }
    let convolutions: f64 = by_kind.iter().map(|(_, ms)| ms).sum();
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(kind, ms)| format!("{kind} {ms:.2}"))
        .collect();
    println!(
        "  convolutions {convolutions:.2} ms ({}), everything else {:.2} ms",
        kinds.join(", "),
        forward - convolutions
    );
}
