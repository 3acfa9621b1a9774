//! Converts the 128x128 MiniFASNetV2-SE ONNX graph (johnraivenolazo/face-antispoof-onnx,
//! `face_antispoof_minifasv2se_128.onnx`) into safetensors for
//! `liveness::models::minifasnet` (`Variant::V2Se128`).
//!
//! Usage: `convert-antispoof128 IN.onnx OUT.safetensors`.
//!
//! The export's initializers are anonymous (`onnx::Conv_641`), so every weight is named after the
//! node that consumes it: the node name `/conv_3/model/model.3/conv/conv/Conv` gives the module
//! path `conv_3.model.3.conv.conv` (a segment that repeats its parent as a prefix, `model.3`
//! under `model`, keeps only its own part, as in the PyTorch state dict). Stored:
//! - `Conv`: `<module>.weight` (OIHW) and `<module>.bias` (BatchNorm already folded by the export);
//! - `PRelu`: `<module>.weight` as `[C]` (from `[C, 1, 1]`);
//! - `MatMul`: `<module>.weight` transposed to PyTorch's `[out, in]` (`linear`, `logits`);
//! - `BatchNormalization` (the BatchNorm1d after `linear`): `<module>.weight|bias|running_mean|running_var`.
//!
//! Any other operator that consumes an initializer is refused, so a different graph cannot be
//! converted silently into a wrong network.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use candle_onnx::onnx::{NodeProto, TensorProto};

/// Operators that carry no weights (or only shape constants) in this graph.
const WEIGHTLESS_OPS: [&str; 11] = [
    "Add",
    "GlobalAveragePool",
    "ReduceMean",
    "Relu",
    "Sigmoid",
    "Mul",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Concat",
    "Reshape",
];

/// `/conv_3/model/model.3/conv/conv/Conv` -> `conv_3.model.3.conv.conv`.
fn module_path(node_name: &str) -> Result<String> {
    let parts: Vec<&str> = node_name.trim_start_matches('/').split('/').collect();
    ensure!(parts.len() >= 2, "unexpected node name {node_name:?}");
    let mut path: Vec<&str> = Vec::new();
    for part in &parts[..parts.len() - 1] {
        let own = match path.last() {
            Some(parent) => part
                .strip_prefix(parent)
                .and_then(|rest| rest.strip_prefix('.'))
                .unwrap_or(part),
            None => part,
        };
        path.push(own);
    }
    Ok(path.join("."))
}

struct Converter<'a> {
    initializers: HashMap<&'a str, &'a TensorProto>,
    tensors: HashMap<String, Tensor>,
}

impl Converter<'_> {
    fn initializer(&self, name: &str) -> Result<Tensor> {
        let proto = self
            .initializers
            .get(name)
            .with_context(|| format!("initializer {name} missing"))?;
        Ok(candle_onnx::eval::get_tensor(proto, name)?)
    }

    fn store(&mut self, key: String, tensor: Tensor) -> Result<()> {
        ensure!(
            self.tensors.insert(key.clone(), tensor).is_none(),
            "duplicate tensor {key}"
        );
        Ok(())
    }

    fn convert(&mut self, node: &NodeProto) -> Result<()> {
        let module = module_path(&node.name)?;
        let op = node.op_type.as_str();
        match (op, node.input.as_slice()) {
            ("Conv", [_, weight, bias]) => {
                self.store(format!("{module}.weight"), self.initializer(weight)?)?;
                self.store(format!("{module}.bias"), self.initializer(bias)?)?;
            }
            ("PRelu", [_, slope]) => {
                let slope = self.initializer(slope)?;
                self.store(format!("{module}.weight"), slope.flatten_all()?)?;
            }
            ("MatMul", [_, weight]) => {
                let weight = self.initializer(weight)?.t()?.contiguous()?;
                self.store(format!("{module}.weight"), weight)?;
            }
            ("BatchNormalization", [_, gamma, beta, mean, var]) => {
                let epsilon = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "epsilon")
                    .map_or(1e-5, |a| a.f);
                ensure!(
                    (epsilon - 1e-5).abs() < 1e-9,
                    "{module}: BatchNorm epsilon {epsilon}, the network assumes 1e-5"
                );
                for (suffix, name) in [
                    ("weight", gamma),
                    ("bias", beta),
                    ("running_mean", mean),
                    ("running_var", var),
                ] {
                    self.store(format!("{module}.{suffix}"), self.initializer(name)?)?;
                }
            }
            (op, inputs) if WEIGHTLESS_OPS.contains(&op) => {
                // Shape constants (Gather indices, Unsqueeze axes) are the only initializers
                // these may read; anything larger would be a weight we do not know about.
                for input in inputs {
                    if let Some(proto) = self.initializers.get(input.as_str()) {
                        ensure!(
                            proto.dims.iter().product::<i64>() <= 1,
                            "{}: {op} reads initializer {input} of shape {:?}",
                            node.name,
                            proto.dims
                        );
                    }
                }
            }
            (op, _) => bail!("{}: operator {op} is not part of this network", node.name),
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        bail!("usage: convert-antispoof128 IN.onnx OUT.safetensors");
    };
    let model = candle_onnx::read_file(input).with_context(|| format!("reading {input}"))?;
    let graph = model.graph.context("ONNX file has no graph")?;
    let mut converter = Converter {
        initializers: graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect(),
        tensors: HashMap::new(),
    };
    for node in &graph.node {
        converter.convert(node)?;
    }
    candle_core::safetensors::save(&converter.tensors, output)?;
    println!("wrote {} tensors to {output}", converter.tensors.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::module_path;

    #[test]
    fn module_paths_follow_the_pytorch_state_dict() {
        assert_eq!(
            module_path("/conv_3/model/model.3/conv/conv/Conv").unwrap(),
            "conv_3.model.3.conv.conv"
        );
        assert_eq!(
            module_path("/conv_5/model/model.1/se_module/fc1/Conv").unwrap(),
            "conv_5.model.1.se_module.fc1"
        );
        assert_eq!(module_path("/conv1/prelu/PRelu").unwrap(), "conv1.prelu");
        assert_eq!(module_path("/logits/MatMul").unwrap(), "logits");
    }
}
