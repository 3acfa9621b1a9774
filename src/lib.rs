//! Passive face liveness: one still photo in, a liveness score out.
//!
//! The pipeline is `decode -> detect (RetinaFace) -> quality gate -> score (MiniFASNet pair)`.
//! Networks run as native candle code with the hand-written kernels in [`nn`].

pub mod api;
pub mod config;
pub mod detector;
pub mod eval;
pub mod gate;
pub mod image_io;
pub mod imgproc;
pub mod models;
pub mod nn;
pub mod pipeline;
