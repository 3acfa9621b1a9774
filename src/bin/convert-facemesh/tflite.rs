//! A minimal, read-only TFLite model reader (FlatBuffers, schema v3) covering what the converter
//! needs: tensors (name, shape, type, constant data) and operators (builtin code, inputs,
//! outputs, the convolution/pooling options).
//!
//! FlatBuffers layout, as used here: a table starts with an `i32` offset back to its vtable; the
//! vtable lists `u16` byte offsets of each field inside the table (0 = field absent). Reference
//! fields (tables, vectors, strings) hold a `u32` offset relative to the field's own position;
//! a vector is a `u32` length followed by its elements.

use anyhow::{bail, ensure, Context, Result};

/// A position inside the model buffer where a table starts.
#[derive(Clone, Copy)]
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn read_u32(buf: &[u8], pos: usize) -> Result<u32> {
    let bytes = buf
        .get(pos..pos + 4)
        .context("flatbuffer read past the end")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

fn read_u16(buf: &[u8], pos: usize) -> Result<u16> {
    let bytes = buf
        .get(pos..pos + 2)
        .context("flatbuffer read past the end")?;
    Ok(u16::from_le_bytes(bytes.try_into()?))
}

impl<'a> Table<'a> {
    fn root(buf: &'a [u8]) -> Result<Self> {
        let pos = read_u32(buf, 0)? as usize;
        ensure!(
            buf.get(4..8) == Some(b"TFL3"),
            "not a TFLite (TFL3) flatbuffer"
        );
        Ok(Self { buf, pos })
    }

    /// Absolute position of field `index`, or `None` when the field is absent.
    fn field(&self, index: usize) -> Result<Option<usize>> {
        let soffset = read_u32(self.buf, self.pos)? as i32;
        let vtable = (self.pos as i64 - soffset as i64) as usize;
        let vtable_len = read_u16(self.buf, vtable)? as usize;
        let slot = 4 + 2 * index;
        if slot + 2 > vtable_len {
            return Ok(None);
        }
        let offset = read_u16(self.buf, vtable + slot)? as usize;
        Ok((offset != 0).then_some(self.pos + offset))
    }

    fn deref(&self, pos: usize) -> Result<usize> {
        Ok(pos + read_u32(self.buf, pos)? as usize)
    }

    fn scalar_i32(&self, index: usize, default: i32) -> Result<i32> {
        match self.field(index)? {
            Some(p) => Ok(read_u32(self.buf, p)? as i32),
            None => Ok(default),
        }
    }

    fn scalar_u8(&self, index: usize, default: u8) -> Result<u8> {
        match self.field(index)? {
            Some(p) => self
                .buf
                .get(p)
                .copied()
                .context("flatbuffer read past the end"),
            None => Ok(default),
        }
    }

    fn table(&self, index: usize) -> Result<Option<Table<'a>>> {
        match self.field(index)? {
            Some(p) => Ok(Some(Table {
                buf: self.buf,
                pos: self.deref(p)?,
            })),
            None => Ok(None),
        }
    }

    /// `(start of the first element, element count)` of a vector field.
    fn vector(&self, index: usize) -> Result<Option<(usize, usize)>> {
        match self.field(index)? {
            Some(p) => {
                let v = self.deref(p)?;
                Ok(Some((v + 4, read_u32(self.buf, v)? as usize)))
            }
            None => Ok(None),
        }
    }

    fn bytes(&self, index: usize) -> Result<&'a [u8]> {
        match self.vector(index)? {
            Some((start, len)) => self
                .buf
                .get(start..start + len)
                .context("flatbuffer vector past the end"),
            None => Ok(&[]),
        }
    }

    fn string(&self, index: usize) -> Result<String> {
        Ok(String::from_utf8(self.bytes(index)?.to_vec())?)
    }

    fn i32s(&self, index: usize) -> Result<Vec<i32>> {
        match self.vector(index)? {
            Some((start, len)) => (0..len)
                .map(|i| Ok(read_u32(self.buf, start + 4 * i)? as i32))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    fn tables(&self, index: usize) -> Result<Vec<Table<'a>>> {
        match self.vector(index)? {
            Some((start, len)) => (0..len)
                .map(|i| {
                    Ok(Table {
                        buf: self.buf,
                        pos: self.deref(start + 4 * i)?,
                    })
                })
                .collect(),
            None => Ok(Vec::new()),
        }
    }
}

/// A tensor of the graph; `data` is empty for activations.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// TFLite `Padding` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
}

/// The builtin operators this model uses, with the options we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Conv2d {
        stride: usize,
        padding: Padding,
    },
    DepthwiseConv2d {
        stride: usize,
        padding: Padding,
    },
    MaxPool2d {
        stride: usize,
        filter: usize,
        padding: Padding,
    },
    PRelu,
    Add,
    Pad,
    Reshape,
}

/// One operator: kind and input tensor indices.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    pub inputs: Vec<usize>,
}

/// The single subgraph of a model.
#[derive(Debug)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<Op>,
}

// BuiltinOperator codes of schema v3.
const ADD: i32 = 0;
const CONV_2D: i32 = 3;
const DEPTHWISE_CONV_2D: i32 = 4;
const MAX_POOL_2D: i32 = 17;
const RESHAPE: i32 = 22;
const PAD: i32 = 34;
const PRELU: i32 = 54;
// TensorType codes.
const FLOAT32: u8 = 0;
const INT32: u8 = 2;
// Fused activation NONE.
const ACT_NONE: u8 = 0;

fn padding(code: u8) -> Result<Padding> {
    match code {
        0 => Ok(Padding::Same),
        1 => Ok(Padding::Valid),
        other => bail!("unknown padding code {other}"),
    }
}

/// Parses a float32 TFLite model with one subgraph.
pub fn parse(buf: &[u8]) -> Result<Graph> {
    let model = Table::root(buf)?;
    let opcodes: Vec<i32> = model
        .tables(1)?
        .iter()
        .map(|c| {
            // `builtin_code` (field 3) supersedes the deprecated i8 field 0 when present.
            let deprecated = c.scalar_u8(0, 0)? as i8 as i32;
            let code = c.scalar_i32(3, 0)?;
            Ok(code.max(deprecated))
        })
        .collect::<Result<_>>()?;
    let buffers = model.tables(4)?;
    let subgraphs = model.tables(2)?;
    ensure!(
        subgraphs.len() == 1,
        "expected one subgraph, found {}",
        subgraphs.len()
    );
    let graph = subgraphs[0];

    let mut tensors = Vec::new();
    for t in graph.tables(0)? {
        let name = t.string(3)?;
        let shape = t
            .i32s(0)?
            .into_iter()
            .map(|d| usize::try_from(d).context("negative dimension"))
            .collect::<Result<Vec<_>>>()?;
        let ty = t.scalar_u8(1, FLOAT32)?;
        let buffer = t.scalar_i32(2, 0)? as usize;
        let raw = match buffers.get(buffer) {
            Some(b) => b.bytes(0)?,
            None => &[],
        };
        let data = match (ty, raw.is_empty()) {
            (_, true) => Vec::new(),
            (FLOAT32, false) => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            // Integer constants (pad amounts, reshape targets) are kept as exact f32 values.
            (INT32, false) => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            (other, false) => bail!("tensor {name}: unsupported constant type {other}"),
        };
        if !data.is_empty() {
            let n: usize = shape.iter().product();
            ensure!(
                data.len() == n,
                "tensor {name}: {} values for shape {shape:?}",
                data.len()
            );
        }
        tensors.push(TensorInfo { name, shape, data });
    }

    let mut ops = Vec::new();
    for o in graph.tables(3)? {
        let code = *opcodes
            .get(o.scalar_i32(0, 0)? as usize)
            .context("operator code index out of range")?;
        let options = o.table(4)?;
        let opt = || options.context("operator without options");
        let square = |w: i32, h: i32| -> Result<usize> {
            ensure!(w == h && w > 0, "non-square stride/filter {w}x{h}");
            Ok(w as usize)
        };
        let kind = match code {
            CONV_2D => {
                let t = opt()?;
                ensure!(
                    t.scalar_u8(3, 0)? == ACT_NONE,
                    "fused activation on CONV_2D"
                );
                ensure!(
                    t.scalar_i32(4, 1)? == 1 && t.scalar_i32(5, 1)? == 1,
                    "dilated conv"
                );
                OpKind::Conv2d {
                    stride: square(t.scalar_i32(1, 1)?, t.scalar_i32(2, 1)?)?,
                    padding: padding(t.scalar_u8(0, 0)?)?,
                }
            }
            DEPTHWISE_CONV_2D => {
                let t = opt()?;
                ensure!(t.scalar_i32(3, 1)? == 1, "depth multiplier != 1");
                ensure!(
                    t.scalar_u8(4, 0)? == ACT_NONE,
                    "fused activation on depthwise"
                );
                ensure!(
                    t.scalar_i32(5, 1)? == 1 && t.scalar_i32(6, 1)? == 1,
                    "dilated conv"
                );
                OpKind::DepthwiseConv2d {
                    stride: square(t.scalar_i32(1, 1)?, t.scalar_i32(2, 1)?)?,
                    padding: padding(t.scalar_u8(0, 0)?)?,
                }
            }
            MAX_POOL_2D => {
                let t = opt()?;
                ensure!(t.scalar_u8(5, 0)? == ACT_NONE, "fused activation on pool");
                OpKind::MaxPool2d {
                    stride: square(t.scalar_i32(1, 1)?, t.scalar_i32(2, 1)?)?,
                    filter: square(t.scalar_i32(3, 1)?, t.scalar_i32(4, 1)?)?,
                    padding: padding(t.scalar_u8(0, 0)?)?,
                }
            }
            ADD => {
                if let Some(t) = options {
                    ensure!(t.scalar_u8(0, 0)? == ACT_NONE, "fused activation on ADD");
                }
                OpKind::Add
            }
            PRELU => OpKind::PRelu,
            PAD => OpKind::Pad,
            RESHAPE => OpKind::Reshape,
            other => bail!("unsupported builtin operator {other}"),
        };
        let index = |v: Vec<i32>| -> Result<Vec<usize>> {
            v.into_iter()
                .map(|i| usize::try_from(i).context("optional tensor input"))
                .collect()
        };
        ops.push(Op {
            kind,
            inputs: index(o.i32s(1)?)?,
        });
    }
    Ok(Graph { tensors, ops })
}
