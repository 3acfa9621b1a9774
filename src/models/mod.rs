//! Network definitions, built from checkpoints with `candle_nn::VarBuilder`.

pub mod minifasnet;
