//! An ONNX file on its own, before there is a spec: what its graph takes and gives
//! (names, element types, shapes with their symbolic dimensions), who made it, which
//! operators it uses and whether tract knows them, and a first `model.toml` for it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::*;

use super::error::LoadError;
use super::panic::contain;
use super::spec::DType;

/// One dimension as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OnnxDim {
    /// A fixed size.
    Size(i64),
    /// A symbolic dimension, by its name in the file (`?` when it has none).
    Symbol(String),
}

impl OnnxDim {
    /// The size, when the file fixes one.
    pub fn size(&self) -> Option<usize> {
        match self {
            OnnxDim::Size(n) => usize::try_from(*n).ok(),
            OnnxDim::Symbol(_) => None,
        }
    }
}

/// One graph input or output.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxTensor {
    /// The name in the graph.
    pub name: String,
    /// `f32`, `i64`, ... (the names specs use), or the ONNX type name for other types.
    pub dtype: String,
    /// `None` when the file gives no shape at all.
    pub shape: Option<Vec<OnnxDim>>,
}

/// What an ONNX file says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxFile {
    /// The file read.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The ONNX IR version it was written with.
    pub ir_version: i64,
    /// Producer name and version, as the exporter wrote them.
    pub producer: String,
    /// Operator set versions, by domain (`ai.onnx` for the default domain).
    pub opsets: BTreeMap<String, i64>,
    /// The main graph's inputs, initializers left out.
    pub inputs: Vec<OnnxTensor>,
    /// The main graph's outputs.
    pub outputs: Vec<OnnxTensor>,
    /// Nodes of the main graph.
    pub op_count: usize,
    /// ONNX operator type → number of nodes.
    pub ops: BTreeMap<String, usize>,
    /// Operator types tract does not implement: such a model cannot run here.
    pub unsupported_ops: Vec<String>,
}

/// Reads an ONNX file's graph signature. Refuses an empty, truncated or non-ONNX file
/// with the reason, as the loader does.
pub fn read(path: &Path) -> Result<OnnxFile, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    let size = bytes.len() as u64;
    let parse_err = |reason: String| LoadError::Parse { path: path.to_path_buf(), bytes: size, reason };
    if bytes.is_empty() {
        return Err(parse_err("the file is empty".into()));
    }
    let proto = contain(|| onnx().proto_model_for_read(&mut bytes.as_slice()))
        .map_err(|message| LoadError::Panic { path: path.to_path_buf(), stage: "parsing", message })?
        .map_err(|e| parse_err(format!("{e:#}")))?;
    // Protobuf skips fields it does not know, so arbitrary bytes can decode into an
    // empty message: a real model has a graph with outputs.
    let Some(graph) = proto.graph.as_ref().filter(|g| !g.output.is_empty() && !g.node.is_empty()) else {
        return Err(parse_err("it holds no ONNX graph (is it an ONNX file?)".into()));
    };
    // Old exporters list the weights among the inputs too; they are not fed.
    let weights: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph.input.iter().filter(|v| !weights.contains(v.name.as_str())).map(tensor).collect();
    let outputs = graph.output.iter().map(tensor).collect();
    let mut ops = BTreeMap::new();
    for node in &graph.node {
        *ops.entry(node.op_type.clone()).or_insert(0usize) += 1;
    }
    // Building tract's graph finds dangling references and the operators it lacks.
    let model = contain(|| onnx().model_for_proto_model(&proto))
        .map_err(|message| LoadError::Panic { path: path.to_path_buf(), stage: "parsing", message })?
        .map_err(|e| parse_err(format!("{e:#}")))?;
    let mut unsupported: Vec<String> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let name = n.op.name();
            name.strip_prefix("Unimplemented(").and_then(|s| s.strip_suffix(')')).map(str::to_string)
        })
        .collect();
    unsupported.sort();
    unsupported.dedup();
    let opsets = proto
        .opset_import
        .iter()
        .map(|o| (if o.domain.is_empty() { "ai.onnx".to_string() } else { o.domain.clone() }, o.version))
        .collect();
    let producer = format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string();
    Ok(OnnxFile {
        file: path.to_path_buf(),
        bytes: size,
        ir_version: proto.ir_version,
        producer,
        opsets,
        inputs,
        outputs,
        op_count: graph.node.len(),
        ops,
        unsupported_ops: unsupported,
    })
}

fn tensor(v: &pb::ValueInfoProto) -> OnnxTensor {
    let t = v.r#type.as_ref().and_then(|t| t.value.as_ref()).map(|pb::type_proto::Value::TensorType(t)| t);
    let dtype = t.map(|t| elem_type_name(t.elem_type)).unwrap_or_else(|| "unknown".into());
    let shape = t.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(n)) if *n >= 0 => OnnxDim::Size(*n),
                Some(DimValue::DimParam(p)) if !p.is_empty() => OnnxDim::Symbol(p.clone()),
                // No value, or a negative one (some exporters write -1): open.
                _ => OnnxDim::Symbol("?".into()),
            })
            .collect()
    });
    OnnxTensor { name: v.name.clone(), dtype, shape }
}

/// ONNX `TensorProto.DataType` codes to the names specs use.
fn elem_type_name(code: i32) -> String {
    match code {
        1 => "f32",
        2 => "u8",
        3 => "i8",
        4 => "u16",
        5 => "i16",
        6 => "i32",
        7 => "i64",
        8 => "string",
        9 => "bool",
        10 => "f16",
        11 => "f64",
        12 => "u32",
        13 => "u64",
        16 => "bf16",
        _ => return format!("type {code}"),
    }
    .to_string()
}

/// The element types a spec can declare.
fn spec_dtype(name: &str) -> Option<DType> {
    [DType::F32, DType::F64, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool]
        .into_iter()
        .find(|d| d.name() == name)
}

impl OnnxFile {
    /// A starting `model.toml` for this file: every input declared, recurrent state
    /// paired with its output where the shapes say so, open dimensions marked for the
    /// user to fill in, and no post-processing until they choose one.
    pub fn suggest_spec(&self) -> String {
        let mut stem = self.file.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
        if stem == "model" {
            // `DIR/model.onnx`: the directory names the model.
            stem = self.file.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()).unwrap_or(stem);
        }
        let name: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
            .collect();
        let file = self.file.file_name().and_then(|s| s.to_str()).unwrap_or("model.onnx");
        let mut t = String::new();
        let _ = writeln!(t, "# A first model.toml for {file}: check each line (docs/model-spec.md).");
        let _ = writeln!(t, "name = {}", toml_str(&name));
        let _ = writeln!(t, "version = \"1\"");
        let _ = writeln!(t, "file = {}", toml_str(file));

        // An input whose shape and type match an output's is taken for recurrent state
        // fed by that output (LSTM/GRU state, streaming caches).
        let mut used = Vec::new();
        let mut state_of = BTreeMap::new();
        for (ix, input) in self.inputs.iter().enumerate().skip(1) {
            let Some(shape) = &input.shape else { continue };
            if shape.iter().any(|d| d.size().is_none()) {
                continue;
            }
            if let Some(out) = self.outputs.iter().find(|o| {
                !used.contains(&o.name) && o.dtype == input.dtype && o.shape.as_ref() == Some(shape)
            }) {
                used.push(out.name.clone());
                state_of.insert(ix, out.name.clone());
            }
        }
        let mut data_done = false;
        for (ix, input) in self.inputs.iter().enumerate() {
            let _ = writeln!(t, "\n[[input]]");
            let _ = writeln!(t, "name = {}", toml_str(&input.name));
            match spec_dtype(&input.dtype) {
                Some(d) => {
                    let _ = writeln!(t, "dtype = \"{}\"", d.name());
                }
                None => {
                    let _ = writeln!(
                        t,
                        "dtype = \"f32\"  # the model takes {}, which the agent cannot feed",
                        input.dtype
                    );
                }
            }
            let dims = input.shape.clone().unwrap_or_default();
            let sizes: Vec<String> = dims
                .iter()
                // An open batch dimension takes 1 (a request is one item); other open
                // dimensions take 1 until the user writes their sizes.
                .map(|d| d.size().map(|n| n.to_string()).unwrap_or_else(|| "1".into()))
                .collect();
            let open: Vec<String> = dims
                .iter()
                .enumerate()
                .filter(|(axis, d)| *axis > 0 && d.size().is_none())
                .map(|(axis, d)| match d {
                    OnnxDim::Symbol(s) => format!("{axis} (`{s}`)"),
                    OnnxDim::Size(n) => format!("{axis} ({n})"),
                })
                .collect();
            let note = if input.shape.is_none() {
                "  # the file gives no shape: write the one you feed".to_string()
            } else if open.is_empty() {
                String::new()
            } else {
                format!(
                    "  # axes {} are open in the model: write the sizes you feed, or one range {{ min = .., max = .. }}",
                    open.join(", ")
                )
            };
            let _ = writeln!(t, "shape = [{}]{note}", sizes.join(", "));
            if let Some(out) = state_of.get(&ix) {
                let _ = writeln!(t, "from = \"state\"");
                let _ = writeln!(t, "state_output = {}", toml_str(out));
            } else if data_done {
                let n: usize = sizes.iter().filter_map(|s| s.parse::<usize>().ok()).product();
                let _ =
                    writeln!(t, "from = \"const\"  # or \"state\" with state_output = the output feeding it");
                if n <= 256 {
                    let _ = writeln!(t, "value = [{}]", vec!["0"; n.max(1)].join(", "));
                } else {
                    let _ = writeln!(t, "value = []  # its {n} values, flat");
                }
            } else {
                data_done = true;
            }
        }

        let image = self.inputs.first().and_then(|i| i.shape.as_ref()).and_then(|s| {
            let c = |axis: usize| s.get(axis).and_then(OnnxDim::size);
            (s.len() == 4 && self.inputs[0].dtype == "f32").then_some(())?;
            match (c(1), c(3)) {
                (Some(1 | 3), _) => Some("nchw"),
                (_, Some(1 | 3)) => Some("nhwc"),
                _ => None,
            }
        });
        if let Some(layout) = image {
            let _ = writeln!(t, "\n[pre]\nformat = \"image\"\n\n[pre.image]");
            let _ = writeln!(t, "layout = \"{layout}\"");
            let _ = writeln!(t, "# scale, mean, std, resize, channel_order: as the model was trained");
        } else {
            let _ = writeln!(t, "\n[pre]\nformat = \"json\"  # or f32le, i16le; [pre.window] for streams");
        }
        let post = self.outputs.iter().find(|o| !used.contains(&o.name));
        let _ = writeln!(t, "\n[post]");
        if let Some(o) = post {
            let _ = writeln!(t, "output = {}", toml_str(&o.name));
        }
        let _ = writeln!(
            t,
            "kind = \"none\"  # results hold the raw outputs; for a classifier remove this line and set labels, top_k, softmax"
        );
        t
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
