//! Passive face liveness: one still photo in, a liveness score out.
//!
//! The pipeline is `decode -> detect (RetinaFace) -> quality gate -> score (three MiniFASNet
//! anti-spoof networks, fused and calibrated)`.
//! Networks run as native candle code with the hand-written kernels in [`nn`].

pub mod antispoof;
pub mod api;
pub mod config;
pub mod det_plot;
pub mod detector;
pub mod eval;
pub mod gate;
pub mod image_io;
pub mod imgproc;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod scoring;
