"""Runs an exported ONNX file with onnxruntime, for tests/export.rs.

Usage: python check_onnx.py MODEL.onnx INPUTS.safetensors OUTPUTS.safetensors
Checks the file with onnx.checker (full check: shape inference too), runs every input tensor of
INPUTS through onnxruntime's CPU provider, writes `<name>_logits` / `<name>_probabilities` to OUTPUTS,
and prints one JSON line: the metadata (custom_metadata_map), input/output names and shapes, opset.
"""
import json
import sys

import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file

model, inputs, outputs = sys.argv[1:4]
onnx.checker.check_model(model, full_check=True)
proto = onnx.load(model, load_external_data=False)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
out = {}
for name, x in load_file(inputs).items():
    logits, probs = sess.run(["logits", "probabilities"], {"input": x})
    out[f"{name}_logits"] = logits
    out[f"{name}_probabilities"] = probs
save_file(out, outputs)
meta = sess.get_modelmeta()
print(json.dumps({
    "metadata": meta.custom_metadata_map,
    "producer": meta.producer_name,
    "inputs": [[i.name, i.shape, i.type] for i in sess.get_inputs()],
    "outputs": [[o.name, o.shape, o.type] for o in sess.get_outputs()],
    "opset": [[o.domain, o.version] for o in proto.opset_import],
    "ir_version": proto.ir_version,
    "ops": sorted({n.op_type for n in proto.graph.node}),
    "initializers": [i.name for i in proto.graph.initializer],
}))
