//! ONNX export of the networks: each layer type writes its own nodes next to its `forward_t`
//! ([`OnnxExport`]), so the exported graph is the network the trainer runs, in eval mode (BatchNorm
//! with running statistics, dropout off).

pub mod graph;
pub mod proto;

pub use graph::{Attr, Graph, GraphError};

/// Writes a layer's eval-mode computation into `g`, reading the value named `x`; returns the name of
/// the result.
pub trait OnnxExport {
    fn onnx(&self, g: &mut Graph, x: &str) -> String;
}

/// PyTorch's BatchNorm epsilon, which every BatchNorm built with tch's defaults uses.
pub const BN_EPS: f64 = 1e-5;
