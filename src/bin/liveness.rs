//! `liveness`: check photos, evaluate on a labelled set, benchmark, or serve the API locally.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use liveness::api::contract::{ApiError, LivenessResponse};
use liveness::config::PipelineConfig;
use liveness::eval::{read_labels, summarize, FileResult, Report};
use liveness::pipeline::{Outcome, Pipeline};

#[derive(Parser)]
#[command(
    version,
    about = "Passive face liveness: one photo in, a liveness score out"
)]
struct Cli {
    /// Kernel threads (overrides LIVENESS_THREADS).
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
    /// Evaluate on DIR/labels.csv (live | spoof | gate rows).
    Eval {
        dir: PathBuf,
        /// Write the full JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Decision threshold (overrides LIVENESS_SCORE_THRESHOLD).
        #[arg(long)]
        threshold: Option<f32>,
    },
    /// Time decode, detect, gate, crop, classify and total on 640x480 and 1920x1080 JPEGs.
    Bench {
        /// Source photo (re-encoded at both sizes).
        #[arg(long, default_value = "../shared/data/faces-dev/live_siwm_001.jpg")]
        image: PathBuf,
        /// Timed iterations per configuration.
        #[arg(long, default_value_t = 50)]
        iterations: usize,
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
        } => {
            if let Some(t) = threshold {
                config.score_threshold = t;
            }
            eval(config, &dir, json.as_deref())
        }
        Command::Bench { image, iterations } => bench(config, &image, iterations),
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

fn eval(config: PipelineConfig, dir: &Path, json_out: Option<&Path>) -> Result<()> {
    let threshold = config.score_threshold;
    let pipeline = Pipeline::load(config)?;
    let labels = read_labels(dir)?;
    let progress = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(labels.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut per_file = Vec::with_capacity(labels.len());
    for row in labels {
        let bytes =
            std::fs::read(dir.join(&row.file)).with_context(|| format!("reading {}", row.file))?;
        let (score, error) = match pipeline.assess_encoded(&bytes) {
            Ok(a) => match a.outcome {
                Outcome::Scored { score } => (Some(score), None),
                Outcome::Rejected(code) => (None, Some(code.code().to_string())),
            },
            Err(e) => (None, Some(ApiError::from(e).code().to_string())),
        };
        per_file.push(FileResult {
            file: row.file,
            label: row.label,
            expected_error: row.expected_error,
            score,
            error,
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    let report = summarize(per_file, threshold);
    print_report(&report);
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "{:<42} {:<6} {:>7}  error / expected",
        "file", "label", "score"
    );
    for f in &r.per_file {
        let score = f
            .score
            .map(|s| format!("{s:.4}"))
            .unwrap_or_else(|| "-".into());
        let error = f.error.as_deref().unwrap_or("");
        let expected = if f.expected_error.is_empty() {
            String::new()
        } else {
            format!(" (expected {})", f.expected_error)
        };
        println!(
            "{:<42} {:<6} {:>7}  {error}{expected}",
            f.file, f.label, score
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
        "threshold {:.2}: live {} spoof {} gate {} | APCER {:.1}%  BPCER {:.1}%  ACER {:.1}% | EER {:.1}% at {:.3} | AUC {:.3}",
        r.threshold, r.n_live, r.n_spoof, r.n_gate, r.apcer * 100.0, r.bpcer * 100.0, r.acer * 100.0, r.eer * 100.0, r.eer_threshold, r.auc
    );
    println!(
        "gate: {}/{} gate images got their expected code; live gated {}, spoof gated {}",
        r.gate_correct, r.gate_total, r.live_gated, r.spoof_gated
    );
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
        let resized = image::imageops::resize(&source, w, h, image::imageops::FilterType::Triangle);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&resized)?;
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
    bench_networks(&model_dir, iterations)
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
fn bench_networks(model_dir: &Path, iterations: usize) -> Result<()> {
    use candle_core::{Device, Module, Tensor};
    use liveness::models::{facemesh::FaceMesh, load_weights, mask::MaskClassifier};
    use liveness::models::{minifasnet::MiniFasNet, minifasnet::Variant, retinaface::RetinaFace};
    use liveness::pipeline::{FACEMESH_FILE, MASK_FILE, MINIFASNET_FILES, RETINAFACE_FILE};

    let input = |shape: (usize, usize, usize, usize), lo: f32, hi: f32| {
        Tensor::rand(lo, hi, shape, &Device::Cpu)
    };
    let time = |forward: &dyn Fn() -> candle_core::Result<()>| -> Result<String> {
        forward()?;
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            forward()?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(summary(&mut samples))
    };
    println!("network forward, median (min-max) ms:");
    let retinaface = RetinaFace::new(load_weights(model_dir.join(RETINAFACE_FILE))?)?;
    let x = input((1, 3, 240, 320), -128.0, 128.0)?;
    println!(
        "  {:<28} {}",
        "RetinaFace 320x240",
        time(&|| retinaface.forward(&x).map(drop))?
    );
    for (variant, file) in Variant::ALL.into_iter().zip(MINIFASNET_FILES) {
        let net = MiniFasNet::new(load_weights(model_dir.join(file))?, variant)?;
        let x = input((1, 3, 80, 80), 0.0, 255.0)?;
        let name = format!("MiniFASNet {variant:?} 80x80");
        println!("  {name:<28} {}", time(&|| net.forward(&x).map(drop))?);
    }
    let mesh = FaceMesh::load(model_dir.join(FACEMESH_FILE))?;
    let x = input((1, 3, 192, 192), 0.0, 1.0)?;
    println!(
        "  {:<28} {}",
        "FaceMesh 192x192",
        time(&|| mesh.forward(&x).map(drop))?
    );
    let mask = MaskClassifier::load(model_dir.join(MASK_FILE))?;
    let x = input((1, 3, 224, 224), -1.0, 1.0)?;
    println!(
        "  {:<28} {}",
        "mask classifier 224x224",
        time(&|| mask.forward(&x).map(drop))?
    );
    Ok(())
}
