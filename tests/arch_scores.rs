//! The same pipeline on two CPU architectures gives the same answers: `make test-arm64` runs this
//! test natively on x86-64 to record every dev photo's outcome and score, then under qemu on
//! aarch64 to compare (scores within 1e-4, identical outcomes).
//!
//! Environment (the test is ignored unless run on purpose, e.g. `-- --ignored`):
//! - `LIVENESS_ARCH_SCORES_OUT=path` writes the results as JSON;
//! - `LIVENESS_ARCH_SCORES_REFERENCE=path` compares with results written on another machine;
//! - `LIVENESS_ARCH_SCORES_EVERY=n` takes every n-th photo of `labels.csv` in file-name order,
//!   starting with the first (default 1 = all of them).

mod common;

use std::collections::BTreeMap;

use common::{read_json, repo};
use liveness::eval::read_labels;
use liveness::pipeline::Outcome;
use serde_json::{json, Value};

/// Largest score difference allowed between architectures.
const TOLERANCE: f64 = 1e-4;

fn env_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

#[test]
#[ignore = "run by `make test-arm64` (LIVENESS_ARCH_SCORES_OUT / _REFERENCE)"]
fn dev_scores_match_across_architectures() {
    let out = env_path("LIVENESS_ARCH_SCORES_OUT");
    let reference = env_path("LIVENESS_ARCH_SCORES_REFERENCE");
    assert!(
        out.is_some() || reference.is_some(),
        "set LIVENESS_ARCH_SCORES_OUT and/or LIVENESS_ARCH_SCORES_REFERENCE"
    );
    let every: usize = std::env::var("LIVENESS_ARCH_SCORES_EVERY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .expect("LIVENESS_ARCH_SCORES_EVERY: a positive integer")
        })
        .unwrap_or(1)
        .max(1);

    let pipeline = common::default_pipeline();
    let dir = repo("../shared/data/faces-dev");
    let mut files: Vec<String> = read_labels(&dir)
        .unwrap()
        .into_iter()
        .map(|row| row.file)
        .collect();
    files.sort();
    let started = std::time::Instant::now();
    let mut results = BTreeMap::new();
    for file in files.iter().step_by(every) {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let result = match pipeline.assess_encoded(&bytes) {
            Ok(a) => match a.outcome {
                Outcome::Scored { score } => json!({"outcome": "scored", "score": score}),
                Outcome::Rejected(gate) => json!({"outcome": gate.code()}),
            },
            Err(e) => json!({"outcome": format!("error: {e}")}),
        };
        results.insert(file.clone(), result);
    }
    eprintln!(
        "{} on {}: {} photos (every {every}) in {:.1} s",
        std::env::consts::ARCH,
        dir.display(),
        results.len(),
        started.elapsed().as_secs_f64()
    );
    let results = Value::from(results.into_iter().collect::<serde_json::Map<_, _>>());
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    }
    if let Some(path) = reference {
        compare(&results, &read_json(&path));
    }
}

/// Every photo in `ours` has the reference's outcome and a score within [`TOLERANCE`].
fn compare(ours: &Value, reference: &Value) {
    let (ours, reference) = (ours.as_object().unwrap(), reference.as_object().unwrap());
    let mut failures = Vec::new();
    let (mut scored, mut gated, mut max_diff, mut worst) = (0, 0, 0f64, String::new());
    for (file, got) in ours {
        let Some(want) = reference.get(file) else {
            failures.push(format!("{file}: not in the reference"));
            continue;
        };
        if got["outcome"] != want["outcome"] {
            failures.push(format!("{file}: {got} vs reference {want}"));
            continue;
        }
        let (Some(a), Some(b)) = (got["score"].as_f64(), want["score"].as_f64()) else {
            gated += 1;
            continue;
        };
        scored += 1;
        let diff = (a - b).abs();
        if diff > max_diff {
            (max_diff, worst) = (diff, file.clone());
        }
        if diff > TOLERANCE {
            failures.push(format!(
                "{file}: score {a} vs reference {b} (diff {diff:.2e})"
            ));
        }
    }
    eprintln!(
        "{} photos compared: {scored} scored, largest score difference {max_diff:.2e} ({worst}); \
         {gated} with the same gate outcome; {} mismatches",
        ours.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
