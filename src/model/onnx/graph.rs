//! Building an ONNX graph from a network's own layers: initializers straight from the variables,
//! nodes with fresh names, and the few layer helpers every architecture needs.

use super::proto::{
    self, data_type, tensor_shape_proto::dimension, AttributeProto, AttributeType, NodeProto,
    TensorProto,
};
use std::collections::HashMap;
use tch::nn;
use tch::Tensor;

/// An ONNX attribute, as the helpers below pass them.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

/// A graph under construction for one target opset. Layer exports add nodes through it and get the
/// name of each node's output back.
pub struct Graph {
    opset: i64,
    /// The input's fixed height and width (the batch size is free).
    input_hw: (i64, i64),
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Variable names by storage address, so weights keep their bundle names (`body.layer1.0.conv1.weight`)
    /// and a tensor used twice is stored once.
    var_names: HashMap<usize, String>,
    stored: HashMap<usize, String>,
    used: HashMap<String, usize>,
    /// The newest opset an op used so far requires, and that op, for the error message.
    needs: (i64, &'static str),
    /// The first tensor that could not be read; layer exports have no error path of their own.
    error: Option<String>,
}

/// Opset in which an op got the form emitted here, where that is newer than 13 (the oldest we write).
fn op_since(op: &str) -> (i64, &'static str) {
    match op {
        "LayerNormalization" => (17, "LayerNormalization"),
        _ => (13, ""),
    }
}

impl Graph {
    pub fn new(opset: i64, input_hw: (i64, i64)) -> Self {
        Graph {
            opset,
            input_hw,
            nodes: Vec::new(),
            initializers: Vec::new(),
            var_names: HashMap::new(),
            stored: HashMap::new(),
            used: HashMap::new(),
            needs: (13, ""),
            error: None,
        }
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The input's height and width: shape-dependent constants (ViT's position embedding) are
    /// computed for it at export time.
    pub fn input_hw(&self) -> (i64, i64) {
        self.input_hw
    }

    /// Names initializers after these variables (a VarStore's `variables()`).
    pub fn name_variables(&mut self, vars: impl IntoIterator<Item = (String, Tensor)>) {
        for (name, t) in vars {
            self.var_names.insert(t.data_ptr() as usize, name);
        }
    }

    /// `hint`, or `hint_N` when taken.
    pub fn fresh(&mut self, hint: &str) -> String {
        let n = self.used.entry(hint.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            hint.to_string()
        } else {
            format!("{hint}_{}", *n - 1)
        }
    }

    /// A float initializer holding `t` (as little-endian f32), named after its variable when known.
    pub fn weight(&mut self, hint: &str, t: &Tensor) -> String {
        let key = t.data_ptr() as usize;
        if let Some(name) = self.stored.get(&key) {
            return name.clone();
        }
        let name = match self.var_names.get(&key).cloned() {
            Some(n) if !self.used.contains_key(&n) => {
                self.used.insert(n.clone(), 1);
                n
            }
            _ => self.fresh(hint),
        };
        self.push_tensor(&name, t);
        self.stored.insert(key, name.clone());
        name
    }

    /// A float initializer computed from the variable `of` (a transposed or resampled copy), named
    /// `<variable><suffix>`.
    pub fn derived(&mut self, of: &Tensor, suffix: &str, value: &Tensor) -> String {
        let base = self
            .var_names
            .get(&(of.data_ptr() as usize))
            .cloned()
            .unwrap_or_else(|| "weight".into());
        let name = self.fresh(&format!("{base}{suffix}"));
        self.push_tensor(&name, value);
        name
    }

    /// Stores `t` as the float32 initializer `name`, in logical (NCHW) order whatever its strides
    /// (`contiguous` reorders a channels-last weight); a tensor that cannot be read is recorded as
    /// the export's error.
    fn push_tensor(&mut self, name: &str, t: &Tensor) {
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        // Copied once, straight into the little-endian bytes ONNX stores (libtorch's CPUs are
        // little-endian: x86-64, aarch64): fresh memory is what exporting a large network spends
        // its time on (measured: the kernel zeroing new pages was 43 % of wide_resnet50_2's).
        let numel = t.numel();
        let mut raw = vec![0u8; numel * 4];
        if let Err(e) = t.f_copy_data_u8(&mut raw, numel) {
            self.error.get_or_insert(format!("cannot read {name}: {e}"));
            raw.clear();
        }
        self.push_raw(name, &t.size(), data_type::FLOAT, raw);
    }

    fn push_floats(&mut self, name: &str, dims: &[i64], values: &[f32]) {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_raw(name, dims, data_type::FLOAT, raw);
    }

    /// One initializer of little-endian `raw_data`.
    fn push_raw(&mut self, name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) {
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type,
            name: name.to_string(),
            raw_data: raw,
            ..Default::default()
        });
    }

    /// A float constant of the given shape (e.g. Clip's bounds, a scalar `[]`).
    pub fn constant(&mut self, hint: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.push_floats(&name, dims, values);
        name
    }

    /// An int64 vector constant (shapes, axes).
    pub fn int64s(&mut self, hint: &str, values: &[i64]) -> String {
        self.int64_tensor(hint, &[values.len() as i64], values)
    }

    /// An int64 constant of any shape (`[]` for a scalar index).
    pub fn int64_tensor(&mut self, hint: &str, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh(hint);
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_raw(&name, dims, data_type::INT64, raw);
        name
    }

    /// Adds a node of the default domain with one output; returns the output's name.
    pub fn node(&mut self, op: &'static str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let since = op_since(op);
        if since.0 > self.needs.0 {
            self.needs = since;
        }
        let name = self.fresh(op);
        let attribute = attrs
            .into_iter()
            .map(|(n, a)| {
                let mut p = AttributeProto {
                    name: n.to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(v) => {
                        p.r#type = AttributeType::Int as i32;
                        p.i = Some(v);
                    }
                    Attr::Ints(v) => {
                        p.r#type = AttributeType::Ints as i32;
                        p.ints = v;
                    }
                    Attr::Float(v) => {
                        p.r#type = AttributeType::Float as i32;
                        p.f = Some(v);
                    }
                    Attr::Str(v) => {
                        p.r#type = AttributeType::String as i32;
                        p.s = Some(v.as_bytes().to_vec());
                    }
                }
                p
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        name
    }

    /// Gives the value `old` (a node output) the public name `new`, for graph outputs.
    pub fn rename(&mut self, old: &str, new: &str) {
        for n in &mut self.nodes {
            for v in n.output.iter_mut().chain(n.input.iter_mut()) {
                if v == old {
                    *v = new.to_string();
                }
            }
        }
        self.used.insert(new.to_string(), 1);
    }

    // Layer helpers shared by every architecture.

    /// A 2-D convolution with symmetric padding (`pad` on every side).
    pub fn conv(
        &mut self,
        x: &str,
        conv: &nn::Conv2D,
        stride: i64,
        pad: i64,
        groups: i64,
    ) -> String {
        self.conv_padded(x, conv, stride, Some(pad), groups)
    }

    /// A 2-D convolution with TensorFlow's "SAME" padding (output `ceil(in / stride)`, the odd pixel
    /// after): ONNX's `auto_pad = SAME_UPPER`, so it holds for any input size.
    pub fn conv_same(&mut self, x: &str, conv: &nn::Conv2D, stride: i64, groups: i64) -> String {
        self.conv_padded(x, conv, stride, None, groups)
    }

    fn conv_padded(
        &mut self,
        x: &str,
        conv: &nn::Conv2D,
        stride: i64,
        pad: Option<i64>,
        groups: i64,
    ) -> String {
        let k = conv.ws.size();
        let w = self.weight("conv.weight", &conv.ws);
        let b = conv.bs.as_ref().map(|b| self.weight("conv.bias", b));
        let mut inputs = vec![x, w.as_str()];
        if let Some(b) = &b {
            inputs.push(b);
        }
        let padding = match pad {
            Some(p) => ("pads", Attr::Ints(vec![p; 4])),
            None => ("auto_pad", Attr::Str("SAME_UPPER")),
        };
        self.node(
            "Conv",
            &inputs,
            vec![
                ("kernel_shape", Attr::Ints(k[2..].to_vec())),
                ("strides", Attr::Ints(vec![stride, stride])),
                padding,
                ("dilations", Attr::Ints(vec![1, 1])),
                ("group", Attr::Int(groups)),
            ],
        )
    }

    /// Eval-mode BatchNorm (running statistics) over channel axis 1, for `[N,C]` or `[N,C,H,W]`.
    pub fn batch_norm(&mut self, x: &str, bn: &nn::BatchNorm, eps: f64) -> String {
        let c = bn.running_mean.size()[0] as usize;
        let w = match &bn.ws {
            Some(w) => self.weight("bn.weight", w),
            None => self.constant("bn.weight", &[c as i64], &vec![1.0; c]),
        };
        let b = match &bn.bs {
            Some(b) => self.weight("bn.bias", b),
            None => self.constant("bn.bias", &[c as i64], &vec![0.0; c]),
        };
        let m = self.weight("bn.running_mean", &bn.running_mean);
        let v = self.weight("bn.running_var", &bn.running_var);
        self.node(
            "BatchNormalization",
            &[x, &w, &b, &m, &v],
            vec![("epsilon", Attr::Float(eps as f32))],
        )
    }

    /// `x · Wᵀ (+ b)` for `[N, in]` inputs: a Gemm on the variable as stored (`[out, in]`).
    pub fn linear(&mut self, x: &str, lin: &nn::Linear) -> String {
        let w = self.weight("linear.weight", &lin.ws);
        let b = lin.bs.as_ref().map(|b| self.weight("linear.bias", b));
        let mut inputs = vec![x, w.as_str()];
        if let Some(b) = &b {
            inputs.push(b);
        }
        self.node("Gemm", &inputs, vec![("transB", Attr::Int(1))])
    }

    /// `x · Wᵀ + b` over the last axis of an input of any rank (tokens `[N, L, C]`, channels-last
    /// maps): MatMul with the transposed weight, then Add.
    pub fn linear_nd(&mut self, x: &str, lin: &nn::Linear) -> String {
        self.matmul_bias(x, &lin.ws, lin.bs.as_ref())
    }

    /// `x · wᵀ (+ b)` over the last axis, for a weight given as a tensor (`[out, in]`).
    pub fn matmul_bias(&mut self, x: &str, w: &Tensor, b: Option<&Tensor>) -> String {
        let wt = self.derived(w, ".T", &w.tr());
        let y = self.node("MatMul", &[x, &wt], vec![]);
        match b {
            Some(b) => {
                let b = self.weight("bias", b);
                self.add(&y, &b)
            }
            None => y,
        }
    }

    /// LayerNorm over the last axis (`LayerNormalization`, opset 17).
    pub fn layer_norm(&mut self, x: &str, ln: &nn::LayerNorm, eps: f64) -> String {
        let c = ln.normalized_shape.iter().product::<i64>() as usize;
        let w = match &ln.ws {
            Some(w) => self.weight("ln.weight", w),
            None => self.constant("ln.weight", &[c as i64], &vec![1.0; c]),
        };
        let b = match &ln.bs {
            Some(b) => self.weight("ln.bias", b),
            None => self.constant("ln.bias", &[c as i64], &vec![0.0; c]),
        };
        self.node(
            "LayerNormalization",
            &[x, &w, &b],
            vec![
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
            ],
        )
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.node("Mul", &[a, b], vec![])
    }

    pub fn sigmoid(&mut self, x: &str) -> String {
        self.node("Sigmoid", &[x], vec![])
    }

    /// PyTorch's `hardsigmoid`: `clamp(x/6 + 1/2, 0, 1)`.
    pub fn hardsigmoid(&mut self, x: &str) -> String {
        self.node(
            "HardSigmoid",
            &[x],
            vec![
                ("alpha", Attr::Float(1.0 / 6.0)),
                ("beta", Attr::Float(0.5)),
            ],
        )
    }

    /// `x · hardsigmoid(x)`; written without the `HardSwish` op so that opset 13 has it too.
    pub fn hardswish(&mut self, x: &str) -> String {
        let g = self.hardsigmoid(x);
        self.mul(x, &g)
    }

    /// SiLU (swish): `x · sigmoid(x)`.
    pub fn silu(&mut self, x: &str) -> String {
        let g = self.sigmoid(x);
        self.mul(x, &g)
    }

    /// Exact GELU, PyTorch's default: `x · ½(1 + erf(x/√2))` (the `Gelu` op needs opset 20).
    pub fn gelu(&mut self, x: &str) -> String {
        let r2 = self.constant("sqrt2", &[], &[std::f32::consts::SQRT_2]);
        let one = self.constant("one", &[], &[1.0]);
        let half = self.constant("half", &[], &[0.5]);
        let d = self.node("Div", &[x, &r2], vec![]);
        let e = self.node("Erf", &[&d], vec![]);
        let e1 = self.add(&e, &one);
        let m = self.mul(x, &e1);
        self.mul(&m, &half)
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }

    /// Reshape; `0` keeps that input dimension (the free batch), `-1` is inferred.
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.int64s("shape", shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    pub fn global_avg_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], vec![])
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    /// `clamp(x, lo, hi)`: ReLU6 and the like (Clip's bounds are inputs since opset 11).
    pub fn clip(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let lo = self.constant("clip.min", &[], &[lo]);
        let hi = self.constant("clip.max", &[], &[hi]);
        self.node("Clip", &[x, &lo, &hi], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    pub fn max_pool(&mut self, x: &str, k: i64, stride: i64, pad: i64) -> String {
        self.node(
            "MaxPool",
            &[x],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(vec![pad; 4])),
                ("ceil_mode", Attr::Int(0)),
            ],
        )
    }

    /// `[N,C,H,W]` → `[N,C]` flattened after axis 1 (also flattens a `[N,C,1,1]` pool output).
    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![("axis", Attr::Int(1))])
    }

    /// Builds the model: one float input `[batch, 3, h, w]` named `input`, float outputs
    /// `[batch, n_out]` with the given names, and the metadata.
    pub fn finish(
        self,
        input_hw: (i64, i64),
        outputs: &[(&str, i64)],
        metadata: Vec<(String, String)>,
        doc: &str,
    ) -> Result<proto::ModelProto, GraphError> {
        if let Some(e) = self.error {
            return Err(GraphError::Tensor(e));
        }
        if self.needs.0 > self.opset {
            return Err(GraphError::Opset {
                asked: self.opset,
                needs: self.needs.0,
                op: self.needs.1,
            });
        }
        let value = |name: &str, dims: Vec<dimension::Value>| proto::ValueInfoProto {
            name: name.to_string(),
            r#type: Some(proto::TypeProto {
                value: Some(proto::type_proto::Value::TensorType(
                    proto::type_proto::Tensor {
                        elem_type: data_type::FLOAT,
                        shape: Some(proto::TensorShapeProto {
                            dim: dims
                                .into_iter()
                                .map(|v| proto::tensor_shape_proto::Dimension {
                                    value: Some(v),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let batch = || dimension::Value::DimParam("batch".into());
        let graph = proto::GraphProto {
            node: self.nodes,
            name: "finetune".into(),
            initializer: self.initializers,
            input: vec![value(
                "input",
                vec![
                    batch(),
                    dimension::Value::DimValue(3),
                    dimension::Value::DimValue(input_hw.0),
                    dimension::Value::DimValue(input_hw.1),
                ],
            )],
            output: outputs
                .iter()
                .map(|(n, c)| value(n, vec![batch(), dimension::Value::DimValue(*c)]))
                .collect(),
            ..Default::default()
        };
        Ok(proto::ModelProto {
            ir_version: ir_version(self.opset),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            producer_name: "finetune".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            model_version: 1,
            doc_string: doc.to_string(),
            graph: Some(graph),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| proto::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        })
    }
}

/// The IR version released with each opset (onnx's `VERSION_TABLE`): runtimes refuse files whose
/// IR is newer than they know, so write the oldest one the opset allows.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("this network needs ONNX opset {needs} or later ({op}); asked for opset {asked}")]
    Opset {
        asked: i64,
        needs: i64,
        op: &'static str,
    },
    #[error("cannot export a weight: {0}")]
    Tensor(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// proto2 semantics: an attribute whose value is 0 (`ceil_mode = 0`) is still written, and the
    /// field numbers are onnx.proto's (name 1, i 3, type 20).
    #[test]
    fn zero_valued_attributes_are_written_with_onnx_field_numbers() {
        let mut g = Graph::new(17, (8, 8));
        g.node("MaxPool", &["x"], vec![("ceil_mode", Attr::Int(0))]);
        let attr = g.nodes[0].attribute[0].encode_to_vec();
        assert_eq!(
            attr,
            [
                &[0x0a, 9][..],
                b"ceil_mode",
                &[0x18, 0x00],
                &[0xa0, 0x01, AttributeType::Int as u8],
            ]
            .concat()
        );
    }

    #[test]
    fn opset_too_old_for_an_op_is_refused() {
        let mut g = Graph::new(16, (8, 8));
        g.node("LayerNormalization", &["x", "w", "b"], vec![]);
        let e = g.finish((8, 8), &[], vec![], "").unwrap_err().to_string();
        assert!(e.contains("opset 17 or later (LayerNormalization)"), "{e}");
    }
}
