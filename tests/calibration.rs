//! `models/calibration.json` is what `liveness calibrate` produces: re-running the recorded
//! command on `../shared/data/faces-calib` and `faces-dev` with the committed fusion weights must
//! give the committed pivot and slope. A changed network, crop, gate or fit that moves the
//! calibration fails here until the file is re-generated with the command in models/README.md.

mod common;

use liveness::scoring::ScoreModel;

#[test]
fn committed_calibration_is_reproduced_by_the_command() {
    let committed = ScoreModel::load(&common::repo("models/calibration.json")).unwrap();
    let fit = committed
        .fit
        .as_ref()
        .expect("calibration.json records its fit");
    let target = fit["target_bpcer"].as_f64().expect("target_bpcer");
    let weights: Vec<String> = committed
        .fusion_weights
        .0
        .iter()
        .map(|(name, w)| format!("{name}={w}"))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let refit = out.path().join("calibration.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_liveness"))
        .current_dir(common::repo(""))
        .env("LIVENESS_MODEL_DIR", common::repo("models"))
        .arg("calibrate")
        .arg(common::shared("data/faces-calib"))
        .arg(common::shared("data/faces-dev"))
        .arg("--weights")
        .arg(weights.join(","))
        .arg("--target-bpcer")
        .arg(target.to_string())
        .arg("--out")
        .arg(&refit)
        .output()
        .expect("run liveness calibrate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success());
    assert!(stdout.contains("operating point: fused"), "{stdout}");

    let refitted = ScoreModel::load(&refit).unwrap();
    assert_eq!(refitted.fusion_weights, committed.fusion_weights);
    let (a, b) = (refitted.calibration, committed.calibration);
    assert!(
        (a.pivot - b.pivot).abs() < 1e-5 && (a.slope - b.slope).abs() < 1e-4,
        "refitted {a:?} vs committed {b:?}: re-run the command in models/README.md"
    );
    // The recorded per-set error rates are the ones the command reports now.
    assert_eq!(refitted.fit.unwrap()["sets"], fit["sets"]);
}
