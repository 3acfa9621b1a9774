//! Native candle ports of the networks.

pub mod mask;
