//! Just enough protobuf wire-format decoding to read MediaPipe's
//! `geometry_pipeline_metadata_landmarks.binarypb`:
//!
//! ```text
//! GeometryPipelineMetadata { canonical_mesh: Mesh3d = 1; procrustes_landmark_basis: repeated WeightedLandmarkRef = 2; input_source = 3 }
//! Mesh3d { vertex_type = 1; primitive_type = 2; vertex_buffer: repeated float = 3; index_buffer: repeated uint32 = 4 }
//! WeightedLandmarkRef { landmark_id: uint32 = 1; weight: float = 2 }
//! ```

use anyhow::{bail, ensure, Context, Result};

/// One decoded field: number and value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).context("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    bail!("varint longer than 10 bytes")
}

fn slice<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8]> {
    let bytes = buf.get(*pos..*pos + n).context("truncated field")?;
    *pos += n;
    Ok(bytes)
}

/// Splits a message into `(field number, value)` pairs, in wire order.
pub fn fields(buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)?;
                Value::Bytes(slice(buf, &mut pos, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(slice(buf, &mut pos, 4)?.try_into()?)),
            // 64-bit fields and groups do not occur in this schema.
            other => bail!("unsupported wire type {other}"),
        };
        out.push((number, value));
    }
    Ok(out)
}

/// All values of a `repeated float` field, packed or not.
pub fn floats(fields: &[(u32, Value<'_>)], number: u32) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for (n, v) in fields.iter().filter(|(n, _)| *n == number) {
        match v {
            Value::Fixed32(bits) => out.push(f32::from_bits(*bits)),
            Value::Bytes(packed) => {
                ensure!(packed.len() % 4 == 0, "packed floats of odd length");
                out.extend(
                    packed
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            _ => bail!("field {n} is not a float"),
        }
    }
    Ok(out)
}

/// The single varint value of field `number` (`default` when absent).
pub fn varint_field(fields: &[(u32, Value<'_>)], number: u32, default: u64) -> Result<u64> {
    match fields.iter().rev().find(|(n, _)| *n == number) {
        Some((_, Value::Varint(v))) => Ok(*v),
        Some(_) => bail!("field {number} is not a varint"),
        None => Ok(default),
    }
}

/// Every embedded message stored under field `number`.
pub fn messages<'a>(fields: &[(u32, Value<'a>)], number: u32) -> Result<Vec<&'a [u8]>> {
    fields
        .iter()
        .filter(|(n, _)| *n == number)
        .map(|(_, v)| match v {
            Value::Bytes(b) => Ok(*b),
            _ => bail!("field {number} is not a message"),
        })
        .collect()
}
