//! The liveness pipeline: decode -> detect -> quality gate -> score.

use std::time::Instant;

use image::RgbImage;

use crate::antispoof::AntiSpoofModel;
use crate::config::PipelineConfig;
use crate::detector::FaceDetector;
use crate::gate::{check_cropped, check_framing, check_size, nose_offset, select_face, Rejection};
use crate::image_io::{decode_rgb, DecodeError};
use crate::models::face_pose::CanonicalFace;
use crate::models::facemesh::{mesh_input, FaceMesh, MeshOutput};
use crate::models::mask::MaskClassifier;
use crate::models::minifasnet::Variant;
use crate::models::retinaface::Detection;
use crate::scoring::{ScoreModel, ScoreModelError, CALIBRATION_FILE};

pub use crate::gate::GateCode;

/// What the pipeline concluded about one photo.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The photo passed the gate; `score` in [0,1], higher = more live.
    Scored { score: f32 },
    /// The gate refused the photo.
    Rejected(GateCode),
}

/// Wall-clock milliseconds spent per stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub detect_ms: f64,
    pub gate_ms: f64,
    pub crop_ms: f64,
    pub classify_ms: f64,
    pub total_ms: f64,
}

/// Details for verbose output and evaluation; never contains pixels.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Diagnostics {
    pub image_width: u32,
    pub image_height: u32,
    /// Every face the detector returned, best score first, in image pixels.
    pub faces: Vec<FaceSummary>,
    /// The face the gate selected (scored unless a later check refused it).
    pub selected: Option<FaceSummary>,
    /// What each anti-spoof network saw and said, in the order the pipeline runs them.
    pub anti_spoof: Vec<ModelScore>,
    /// The fusion of the networks' live probabilities, before calibration maps it to the score.
    pub fused: Option<f32>,
    /// The gate's sub-cause when it rejected the photo.
    pub gate_detail: Option<String>,
    /// FaceMesh face-presence probability of the selected face.
    pub face_presence: Option<f32>,
    /// Head pose of the selected face: yaw, pitch (zero-calibrated), roll in degrees.
    pub head_pose_deg: Option<[f32; 3]>,
    /// The mask classifier's P(mask) for the selected face.
    pub mask_probability: Option<f32>,
}

/// One anti-spoof network's view of the selected face.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelScore {
    /// Short model name, e.g. `minifasnet_v2` (the key of the fusion weights).
    pub model: String,
    /// The network's probability that the face is live.
    pub p_live: f32,
    /// Inclusive crop rectangle `[l, t, r, b]` in image pixels (may extend past the image where
    /// the network's crop rule pads).
    pub crop: [i32; 4],
}

/// A detection in serialisable form.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaceSummary {
    pub score: f32,
    pub bbox: [f32; 4],
    pub landmarks: [[f32; 2]; 5],
}

impl From<&Detection> for FaceSummary {
    fn from(d: &Detection) -> Self {
        Self {
            score: d.score,
            bbox: d.bbox,
            landmarks: d.landmarks,
        }
    }
}

/// The full result for one photo.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub outcome: Outcome,
    pub timings: StageTimings,
    pub diagnostics: Diagnostics,
}

/// Failures that are not a verdict about the face.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("model inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("model files could not be loaded: {0}")]
    ModelLoad(String),
    #[error(transparent)]
    ScoreModel(#[from] ScoreModelError),
}

/// Loaded networks and configuration; build once, share by reference (`Send + Sync`).
pub struct Pipeline {
    config: PipelineConfig,
    detector: FaceDetector,
    face_mesh: FaceMesh,
    canonical_face: CanonicalFace,
    mask: MaskClassifier,
    /// The networks with a positive fusion weight, in [`Variant::ALL`] order.
    anti_spoof: Vec<AntiSpoofModel>,
    score_model: ScoreModel,
}

/// File names of the weights inside the model directory.
pub const RETINAFACE_FILE: &str = "retinaface_mnet025.safetensors";
/// FaceMesh weights inside the model directory.
pub const FACEMESH_FILE: &str = "face_landmark_468.safetensors";
/// Canonical face and Procrustes basis inside the model directory.
pub const FACE_GEOMETRY_FILE: &str = "face_geometry.safetensors";
/// Mask classifier weights inside the model directory.
pub const MASK_FILE: &str = "face_mask_detector.safetensors";

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// `f()` and how long it took, in milliseconds.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, ms_since(start))
}

/// The assessment of a photo the gate refused, its timing closed at `start + now`.
fn rejected(
    Rejection { code, detail }: Rejection,
    mut timings: StageTimings,
    mut diagnostics: Diagnostics,
    start: Instant,
) -> Assessment {
    diagnostics.gate_detail = Some(detail);
    timings.total_ms = ms_since(start);
    Assessment {
        outcome: Outcome::Rejected(code),
        timings,
        diagnostics,
    }
}

impl Pipeline {
    /// Loads every network from `config.model_dir` and the scoring file (`calibration.json`
    /// there unless `config.calibration_file` names another), with `config.fusion_weights`
    /// applied; see [`Pipeline::with_score_model`].
    pub fn load(config: PipelineConfig) -> Result<Self, PipelineError> {
        let score_file = config
            .calibration_file
            .clone()
            .unwrap_or_else(|| config.model_dir.join(CALIBRATION_FILE));
        let mut score_model = ScoreModel::load(&score_file)?;
        if let Some(weights) = &config.fusion_weights {
            score_model.fusion_weights = weights.clone();
        }
        Self::with_score_model(config, score_model)
    }

    /// Loads every network from `config.model_dir` and scores with `score_model`. Anti-spoof
    /// networks whose fusion weight is 0 are not loaded.
    pub fn with_score_model(
        config: PipelineConfig,
        score_model: ScoreModel,
    ) -> Result<Self, PipelineError> {
        let dir = &config.model_dir;
        let load_error =
            |file: &str, e: candle_core::Error| PipelineError::ModelLoad(format!("{file}: {e}"));
        let detector = FaceDetector::load(&dir.join(RETINAFACE_FILE))
            .map_err(|e| load_error(RETINAFACE_FILE, e))?;
        let face_mesh =
            FaceMesh::load(dir.join(FACEMESH_FILE)).map_err(|e| load_error(FACEMESH_FILE, e))?;
        let canonical_face = CanonicalFace::load(dir.join(FACE_GEOMETRY_FILE))
            .map_err(|e| load_error(FACE_GEOMETRY_FILE, e))?;
        let mask =
            MaskClassifier::load(dir.join(MASK_FILE)).map_err(|e| load_error(MASK_FILE, e))?;
        let known: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
        if let Some(unknown) = score_model
            .fusion_weights
            .0
            .keys()
            .find(|name| !known.contains(&name.as_str()))
        {
            return Err(PipelineError::ModelLoad(format!(
                "fusion weight for unknown network {unknown:?} (known: {})",
                known.join(", ")
            )));
        }
        let mut anti_spoof = Vec::new();
        for variant in Variant::ALL {
            if score_model.fusion_weights.weight(variant.name()) > 0.0 {
                let model = AntiSpoofModel::load(dir, variant)
                    .map_err(|e| load_error(crate::antispoof::weights_file(variant), e))?;
                anti_spoof.push(model);
            }
        }
        if anti_spoof.is_empty() {
            return Err(PipelineError::ModelLoad(
                "no anti-spoof network has a positive fusion weight".into(),
            ));
        }
        Ok(Self {
            config,
            detector,
            face_mesh,
            canonical_face,
            mask,
            anti_spoof,
            score_model,
        })
    }

    /// The configuration the pipeline was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// The fusion weights and calibration in use.
    pub fn score_model(&self) -> &ScoreModel {
        &self.score_model
    }

    /// Decodes `bytes` under the configured limits and assesses the photo.
    pub fn assess_encoded(&self, bytes: &[u8]) -> Result<Assessment, PipelineError> {
        let start = Instant::now();
        let image = decode_rgb(bytes, self.config.decode)?;
        let decode_ms = ms_since(start);
        let mut assessment = self.assess_image(&image)?;
        assessment.timings.decode_ms = decode_ms;
        assessment.timings.total_ms = ms_since(start);
        Ok(assessment)
    }

    /// Assesses an already decoded, upright RGB photo.
    pub fn assess_image(&self, image: &RgbImage) -> Result<Assessment, PipelineError> {
        let start = Instant::now();
        let mut timings = StageTimings::default();
        let mut diagnostics = Diagnostics {
            image_width: image.width(),
            image_height: image.height(),
            ..Default::default()
        };

        let t = Instant::now();
        // With a second thread, it takes half of each large detector layer.
        let faces = if self.config.threads > 1 {
            crate::nn::parallel::with_helper(|| self.detect(image))?
        } else {
            self.detect(image)?
        };
        timings.detect_ms = ms_since(t);
        diagnostics.faces = faces.iter().map(FaceSummary::from).collect();

        let t = Instant::now();
        let selected = self.select_face(image, &faces, &mut diagnostics)?;
        let select_ms = ms_since(t);
        let face = match selected {
            Ok(face) => face,
            Err(rejection) => {
                timings.gate_ms = select_ms;
                return Ok(rejected(rejection, timings, diagnostics, start));
            }
        };
        let score = if self.config.threads > 1 {
            // The rest of the gate and the anti-spoof networks need only the selected face: the
            // mask classifier (the longest network) starts at once on one thread while the
            // other runs FaceMesh and the anti-spoof networks, then helps with the mask
            // classifier's last layers; the gate's checks then run in their usual order on the
            // results, and the score is dropped if the gate refuses.
            let mut scoring_diagnostics = Diagnostics::default();
            let ((p_mask, mask_ms), ((mesh, mesh_ms), score)) = crate::nn::parallel::join_helping(
                || timed(|| self.mask.mask_probability(image, face.bbox)),
                || {
                    let mesh = timed(|| self.face_presence(image, face));
                    let score =
                        self.score_face(image, face, &mut timings, &mut scoring_diagnostics);
                    (mesh, score)
                },
            );
            let t = Instant::now();
            // A failed mask run is retried where the gate needs it, so errors surface as they
            // would one step at a time.
            let appraisal =
                self.appraise_face(image, face, mesh?, p_mask.ok(), &mut diagnostics)?;
            timings.gate_ms = select_ms + mask_ms.max(mesh_ms) + ms_since(t);
            if let Err(rejection) = appraisal {
                timings.crop_ms = 0.0;
                timings.classify_ms = 0.0;
                return Ok(rejected(rejection, timings, diagnostics, start));
            }
            diagnostics.anti_spoof = scoring_diagnostics.anti_spoof;
            diagnostics.fused = scoring_diagnostics.fused;
            score?
        } else {
            let t = Instant::now();
            let mesh = self.face_presence(image, face)?;
            let appraisal = self.appraise_face(image, face, mesh, None, &mut diagnostics)?;
            timings.gate_ms = select_ms + ms_since(t);
            if let Err(rejection) = appraisal {
                return Ok(rejected(rejection, timings, diagnostics, start));
            }
            self.score_face(image, face, &mut timings, &mut diagnostics)?
        };
        timings.total_ms = ms_since(start);
        Ok(Assessment {
            outcome: Outcome::Scored { score },
            timings,
            diagnostics,
        })
    }

    /// The first checks of the quality gate (`gate.rs`): which face, and is it cut by the frame.
    /// `Ok(Err(..))` is a refusal.
    fn select_face<'a>(
        &self,
        image: &RgbImage,
        faces: &'a [Detection],
        diagnostics: &mut Diagnostics,
    ) -> Result<Result<&'a Detection, Rejection>, PipelineError> {
        let gate = &self.config.gate;
        let (width, height) = image.dimensions();
        let face = match select_face(faces, gate) {
            Ok(face) => face,
            Err(not_found) if not_found.code == GateCode::FaceNotFound => {
                return Ok(Err(self.not_found_or_masked(
                    image,
                    faces,
                    not_found,
                    diagnostics,
                )?));
            }
            Err(rejection) => return Ok(Err(rejection)),
        };
        diagnostics.selected = Some(face.into());
        Ok(check_cropped(face, width, height, gate).map(|()| face))
    }

    /// The rest of the quality gate, in its documented order, on the selected face and
    /// FaceMesh's output for it (`presence, mesh`): FaceMesh presence, size, mask, head pose,
    /// framing. `p_mask` is the mask classifier's answer when it already ran, else it runs when
    /// a check needs it. `Ok(Err(..))` is a refusal.
    fn appraise_face(
        &self,
        image: &RgbImage,
        face: &Detection,
        (presence, mesh): (f32, MeshOutput),
        p_mask: Option<f32>,
        diagnostics: &mut Diagnostics,
    ) -> Result<Result<(), Rejection>, PipelineError> {
        let gate = &self.config.gate;
        let (width, height) = image.dimensions();
        diagnostics.face_presence = Some(presence);
        if presence < gate.min_face_presence {
            return Ok(Err(self.rejected_by_face_mesh(
                image,
                face,
                presence,
                p_mask,
                diagnostics,
            )?));
        }
        if let Err(rejection) = check_size(face, height, gate) {
            return Ok(Err(rejection));
        }
        if let Err(rejection) = self.check_appearance(image, face, &mesh, p_mask, diagnostics)? {
            return Ok(Err(rejection));
        }
        Ok(check_framing(face, width, height, gate))
    }

    /// FACE_NOT_FOUND, unless the best low-score candidate is clearly a masked face
    /// (RetinaFace scores masked faces lower), which is FACE_IS_OCCLUDED.
    fn not_found_or_masked(
        &self,
        image: &RgbImage,
        faces: &[Detection],
        not_found: Rejection,
        diagnostics: &mut Diagnostics,
    ) -> Result<Rejection, PipelineError> {
        let gate = &self.config.gate;
        let Some(candidate) = faces.iter().find(|f| f.score >= gate.masked_face_min_score) else {
            return self.not_found_or_cut(image, not_found);
        };
        // A face under the mask must still be there: FaceMesh must see one.
        let presence = self.face_presence(image, candidate)?.0;
        diagnostics.face_presence = Some(presence);
        if presence < gate.min_face_presence {
            return Ok(not_found);
        }
        let threshold = gate.masked_face_mask_threshold;
        if let Some(masked) = self.masked(
            image,
            candidate,
            None,
            threshold,
            "low-score face",
            diagnostics,
        )? {
            return Ok(masked);
        }
        self.not_found_or_cut(image, not_found)
    }

    /// FACE_NOT_FOUND, unless the detector finds a face once the frame is extended by mirroring
    /// a quarter of each side outward, and that face crosses the original frame: half a face at
    /// the edge is too little for RetinaFace, its mirror image completes it, and it is
    /// FACE_CROPPED, not absent.
    fn not_found_or_cut(
        &self,
        image: &RgbImage,
        not_found: Rejection,
    ) -> Result<Rejection, PipelineError> {
        let gate = &self.config.gate;
        let (w, h) = image.dimensions();
        let (pad_x, pad_y) = (w / 4, h / 4);
        let mirror = |i: u32, pad: u32, len: u32| {
            let i = i as i64 - pad as i64;
            let folded = if i < 0 {
                -i - 1
            } else if i >= len as i64 {
                2 * len as i64 - 1 - i
            } else {
                i
            };
            folded.clamp(0, len as i64 - 1) as u32
        };
        let padded = RgbImage::from_fn(w + 2 * pad_x, h + 2 * pad_y, |x, y| {
            *image.get_pixel(mirror(x, pad_x, w), mirror(y, pad_y, h))
        });
        let long_side = self.config.detector_long_side * 3 / 2;
        let faces = self
            .detector
            .detect(&padded, long_side, gate.face_min_score)?;
        let shift = |mut f: Detection| {
            f.bbox = [
                f.bbox[0] - pad_x as f32,
                f.bbox[1] - pad_y as f32,
                f.bbox[2] - pad_x as f32,
                f.bbox[3] - pad_y as f32,
            ];
            f.landmarks
                .iter_mut()
                .for_each(|p| *p = [p[0] - pad_x as f32, p[1] - pad_y as f32]);
            f
        };
        for face in faces.into_iter().map(shift) {
            if let Err(cut) = check_cropped(&face, w, h, gate) {
                return Ok(Rejection {
                    code: GateCode::FaceCropped,
                    detail: format!("found only in an extended frame: {}", cut.detail),
                });
            }
        }
        Ok(not_found)
    }

    /// A detection FaceMesh does not accept as a face: a masked face (FaceMesh cannot see the
    /// lower half) when the mask classifier is sure, a profile when RetinaFace's nose landmark
    /// lies past the eyes, else a false detection.
    fn rejected_by_face_mesh(
        &self,
        image: &RgbImage,
        face: &Detection,
        presence: f32,
        p_mask: Option<f32>,
        diagnostics: &mut Diagnostics,
    ) -> Result<Rejection, PipelineError> {
        let gate = &self.config.gate;
        let context = format!("FaceMesh presence {presence:.2}");
        let threshold = gate.masked_face_mask_threshold;
        if let Some(masked) = self.masked(image, face, p_mask, threshold, &context, diagnostics)? {
            return Ok(masked);
        }
        let offset = nose_offset(face);
        if offset >= gate.profile_nose_offset {
            return Ok(Rejection {
                code: GateCode::FaceAngleTooLarge,
                detail: format!(
                    "profile: FaceMesh presence {presence:.2}, nose {offset:.1} half eye distances from the eyes' midpoint"
                ),
            });
        }
        Ok(Rejection {
            code: GateCode::FaceNotFound,
            detail: format!("FaceMesh presence {presence:.2} on the detected face"),
        })
    }

    /// FaceMesh on the detected face: presence probability and landmarks.
    fn face_presence(
        &self,
        image: &RgbImage,
        face: &Detection,
    ) -> Result<(f32, MeshOutput), PipelineError> {
        let (input, _roi) = mesh_input(image, face.bbox, face.landmarks[0], face.landmarks[1])?;
        let mesh = self.face_mesh.run(&input)?;
        Ok((1.0 / (1.0 + (-mesh.presence_logit).exp()), mesh))
    }

    /// FACE_IS_OCCLUDED when the medical-mask classifier's P(mask) on `face` (`p_mask` when it
    /// already ran) reaches `threshold`; the detail starts with `context` when it is not empty.
    fn masked(
        &self,
        image: &RgbImage,
        face: &Detection,
        p_mask: Option<f32>,
        threshold: f32,
        context: &str,
        diagnostics: &mut Diagnostics,
    ) -> Result<Option<Rejection>, PipelineError> {
        let p_mask = match p_mask {
            Some(p) => p,
            None => self.mask.mask_probability(image, face.bbox)?,
        };
        diagnostics.mask_probability = Some(p_mask);
        Ok((p_mask >= threshold).then(|| Rejection {
            code: GateCode::FaceIsOccluded,
            detail: if context.is_empty() {
                format!("P(mask) {p_mask:.2}")
            } else {
                format!("{context}, P(mask) {p_mask:.2}")
            },
        }))
    }

    /// The medical-mask classifier, then the head pose from FaceMesh's landmarks.
    fn check_appearance(
        &self,
        image: &RgbImage,
        face: &Detection,
        mesh: &MeshOutput,
        p_mask: Option<f32>,
        diagnostics: &mut Diagnostics,
    ) -> Result<Result<(), Rejection>, PipelineError> {
        let gate = &self.config.gate;
        let threshold = gate.mask_threshold;
        if let Some(masked) = self.masked(image, face, p_mask, threshold, "", diagnostics)? {
            return Ok(Err(masked));
        }
        let pose = self.canonical_face.fit(&mesh.landmarks)?;
        let (yaw, pitch) = (
            pose.yaw_deg as f32,
            pose.pitch_deg as f32 - gate.pitch_zero_deg,
        );
        diagnostics.head_pose_deg = Some([yaw, pitch, pose.roll_deg as f32]);
        if yaw.abs() > gate.max_yaw_deg || pitch.abs() > gate.max_pitch_deg {
            return Ok(Err(Rejection {
                code: GateCode::FaceAngleTooLarge,
                detail: format!("yaw {yaw:.0}, pitch {pitch:.0} degrees"),
            }));
        }
        Ok(Ok(()))
    }

    /// Runs the detector at the configured size, and once more at the retry size when the first
    /// pass finds no face (small faces in large photos).
    fn detect(&self, image: &RgbImage) -> Result<Vec<Detection>, PipelineError> {
        let gate = &self.config.gate;
        let threshold = gate.face_min_score.min(gate.masked_face_min_score);
        let faces = self
            .detector
            .detect(image, self.config.detector_long_side, threshold)?;
        let long_side = image.width().max(image.height());
        let retry = self.config.detector_retry_long_side;
        if !faces.iter().any(|f| f.score >= gate.face_min_score)
            && retry > self.config.detector_long_side
            && long_side > self.config.detector_long_side
        {
            return Ok(self.detector.detect(image, retry, threshold)?);
        }
        Ok(faces)
    }

    /// Runs every weighted anti-spoof network on its crop around `face`, fuses their live
    /// probabilities and calibrates the result into the score.
    fn score_face(
        &self,
        image: &RgbImage,
        face: &Detection,
        timings: &mut StageTimings,
        diagnostics: &mut Diagnostics,
    ) -> Result<f32, PipelineError> {
        for model in &self.anti_spoof {
            let t = Instant::now();
            let input = model.input(image, face.bbox)?;
            timings.crop_ms += ms_since(t);
            let t = Instant::now();
            let p_live = model.live_probability(&input)?;
            timings.classify_ms += ms_since(t);
            diagnostics.anti_spoof.push(ModelScore {
                model: model.variant().name().to_string(),
                p_live,
                crop: input.crop,
            });
        }
        let scores = || {
            diagnostics
                .anti_spoof
                .iter()
                .map(|m| (m.model.as_str(), m.p_live))
        };
        let fused = self.score_model.fusion_weights.fuse(scores());
        let score = self.score_model.score(scores());
        diagnostics.fused = fused;
        // `with_score_model` loads only weighted networks and at least one, so both are Some.
        score.ok_or_else(|| {
            PipelineError::ModelLoad("no anti-spoof network has a positive fusion weight".into())
        })
    }
}
