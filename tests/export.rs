//! `finetune export --format onnx`: the exported file, run by onnxruntime (from the venv), gives
//! finetune's logits on real photos for every architecture, at batch sizes 1 and 7; its metadata is
//! enough to use it; bad opsets and old bundles are refused clearly.

mod common;

use common::{bin, run};
use finetune::bundle::{self, ModelInfo, Normalization, FORMAT_VERSION};
use finetune::data::decode::decode_file;
use finetune::data::tensor::{normalize, stack_u8};
use finetune::data::{PadMode, ResizeMethod, Size};
use finetune::infer::predict::preprocess;
use finetune::model::{Arch, Network};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

const CLASSES: [&str; 5] = ["hat", "pants", "shoes", "t-shirt", "crème \"brûlée\", [x]"];

/// Seven real photos from the embedded sample, from every class.
fn photos() -> Vec<PathBuf> {
    let root = common::repo().join("assets/sample/test");
    let mut out = Vec::new();
    for class in ["hat", "pants", "shoes", "t-shirt"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        out.extend(files.into_iter().take(2));
    }
    out.truncate(7);
    out
}

fn info(arch: Arch, size: Size, resize: ResizeMethod) -> ModelInfo {
    ModelInfo {
        format_version: FORMAT_VERSION,
        finetune_version: env!("CARGO_PKG_VERSION").into(),
        arch,
        task: Default::default(),
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        size,
        resize,
        pad_mode: PadMode::Reflection,
        normalization: Normalization {
            mean: arch.normalization().0,
            std: arch.normalization().1,
        },
        training: None,
        data: None,
        metrics: None,
        calibration: None,
        unknown: None,
    }
}

/// The photos through the library's own validation transform: the exact input finetune uses.
fn inputs(info: &ModelInfo) -> Tensor {
    let imgs: Vec<image::RgbImage> = photos()
        .iter()
        .map(|p| {
            preprocess(
                &decode_file(p, finetune::data::files::DEFAULT_MAX_FILE_BYTES).unwrap(),
                info,
            )
        })
        .collect();
    let refs: Vec<&image::RgbImage> = imgs.iter().collect();
    normalize(
        &stack_u8(&refs),
        Device::Cpu,
        info.normalization.mean,
        info.normalization.std,
    )
    .contiguous()
}

/// A bundle with random weights and non-trivial BatchNorm: random affine parameters, then running
/// statistics gathered from the photos in training mode, so every eval-mode BatchNorm normalises
/// real activations and the logits are of order 1 (a 1e-4 bound then means something).
fn make_bundle(dir: &Path, arch: Arch, size: Size, resize: ResizeMethod) -> ModelInfo {
    tch::manual_seed(7);
    let info = info(arch, size, resize);
    let net = Network::classifier(arch, CLASSES.len() as i64, Device::Cpu);
    let x = inputs(&info);
    tch::no_grad(|| {
        // Sorted: the same draws go to the same variables in every run.
        let mut vars: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            if !net.is_bn_param(&name) {
                continue;
            }
            if name.ends_with(".weight") {
                let _ = t.uniform_(0.5, 1.5);
            } else if name.ends_with(".bias") {
                let _ = t.normal_(0.0, 0.1);
            }
        }
        for _ in 0..12 {
            let _ = net.forward_t(&x, true);
        }
        // Logits spread like a fine-tuned classifier's (std 2: probabilities from near-uniform to
        // 0.99), not the tens that a random deep ResNet's residual stream gives: float32 rounding is
        // relative (measured ≈ 1e-5 of the logits' scale), an export bug is of the logits' own size.
        let s = net.forward_t(&x, false).std(true).double_value(&[]);
        // The head's last Linear: `Sequential` index 8, or 6 in the unpooled (ViT) head.
        let vars = net.vs.variables();
        let last = ["head.8.weight", "head.6.weight"]
            .iter()
            .find_map(|k| vars.get(*k))
            .unwrap();
        let mut last = last.shallow_clone();
        let _ = last.g_mul_scalar_(2.0 / s);
    });
    bundle::save(dir, &net, &info, &[], None).unwrap();
    info
}

struct OrtRun {
    meta: Value,
    out: std::collections::HashMap<String, Tensor>,
}

fn ort(model: &Path, inputs: Vec<(String, Tensor)>) -> OrtRun {
    let dir = tempfile::tempdir().unwrap();
    let i = dir.path().join("in.safetensors");
    let o = dir.path().join("out.safetensors");
    Tensor::write_safetensors(&inputs, &i).unwrap();
    let r = std::process::Command::new(common::python())
        .arg(common::repo().join("tests/export/check_onnx.py"))
        .arg(model)
        .arg(&i)
        .arg(&o)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "onnxruntime check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    OrtRun {
        meta: serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap(),
        out: Tensor::read_safetensors(&o).unwrap().into_iter().collect(),
    }
}

fn has_onnxruntime() -> bool {
    let ok = std::process::Command::new(common::python())
        .args(["-c", "import onnxruntime, onnx, safetensors"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip(
            "no onnxruntime/onnx in the venv",
            "run `make test`: scripts/setup-venv.sh installs them",
        );
    }
    ok
}

/// Exports with the CLI (default output path) and compares onnxruntime's logits with finetune's at
/// batch sizes 1 and 7; returns the metadata run for further checks.
fn parity(arch: Arch, size: Size, opset: Option<i64>) -> (OrtRun, ModelInfo) {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    let info = make_bundle(&model, arch, size, ResizeMethod::Squish);
    let mut cmd = bin();
    cmd.arg("export").arg(&model).args(["--format", "onnx"]);
    if let Some(o) = opset {
        cmd.args(["--opset", &o.to_string()]);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", o.stderr);
    let file = model.join("model.onnx");
    assert!(o.stderr.contains("model.onnx"), "{}", o.stderr);

    let b = bundle::load(&model, Device::Cpu).unwrap();
    let x7 = inputs(&b.info);
    let x1 = x7.narrow(0, 3, 1).contiguous();
    let ours = |x: &Tensor| tch::no_grad(|| b.net.forward_t(x, false));
    let (l1, l7) = (ours(&x1), ours(&x7));
    let r = ort(&file, vec![("b1".into(), x1), ("b7".into(), x7)]);
    for (name, want) in [("b1", &l1), ("b7", &l7)] {
        let got = &r.out[&format!("{name}_logits")];
        assert_eq!(got.size(), want.size(), "{arch} {name}");
        let d = common::max_abs_diff(got, want);
        let spread = want.std(true).double_value(&[]);
        eprintln!("{arch} {name}: max |Δlogit| {d:.2e} (logit std {spread:.2})");
        assert!(d <= 1e-4, "{arch} {name}: max |Δlogit| {d}");
        // The bound means something only if the logits are not all alike.
        assert!(spread > 0.1, "{arch}: logits too flat ({spread})");
        let probs = &r.out[&format!("{name}_probabilities")];
        let dp = common::max_abs_diff(probs, &want.softmax(-1, Kind::Float));
        assert!(dp <= 1e-4, "{arch} {name}: max |Δprob| {dp}");
    }
    (r, info)
}

macro_rules! parity_tests {
    ($($name:ident: $arch:expr,)*) => {$(
        #[test]
        fn $name() {
            if !has_onnxruntime() {
                return;
            }
            // Odd, non-square input: catches H/W mix-ups and padding arithmetic.
            let (r, _) = parity($arch, Size { w: 61, h: 45 }, None);
            assert_eq!(r.meta["metadata"]["arch"], $arch.name());
        }
    )*};
}

parity_tests! {
    onnx_parity_resnet18: Arch::Resnet18,
    onnx_parity_resnet34: Arch::Resnet34,
    onnx_parity_resnet50: Arch::Resnet50,
    onnx_parity_resnet101: Arch::Resnet101,
    onnx_parity_resnet152: Arch::Resnet152,
    onnx_parity_resnext50_32x4d: Arch::Resnext50,
    onnx_parity_wide_resnet50_2: Arch::WideResnet50,
    onnx_parity_mobilenet_v2: Arch::MobilenetV2,
    onnx_parity_regnet_y_400mf: Arch::RegnetY400mf,
    onnx_parity_regnet_y_800mf: Arch::RegnetY800mf,
    onnx_parity_regnet_y_1_6gf: Arch::RegnetY1_6gf,
    onnx_parity_regnet_x_400mf: Arch::RegnetX400mf,
    onnx_parity_convnext_tiny: Arch::ConvnextTiny,
    onnx_parity_convnext_small: Arch::ConvnextSmall,
    onnx_parity_vit_b_16: Arch::VitB16,
    onnx_parity_vit_s_16: Arch::VitS16,
    onnx_parity_mobilenet_v3_small: Arch::MobilenetV3Small,
    onnx_parity_mobilenet_v3_large: Arch::MobilenetV3Large,
    onnx_parity_efficientnet_b0: Arch::EfficientnetB0,
    onnx_parity_efficientnet_b1: Arch::EfficientnetB1,
    onnx_parity_efficientnet_b2: Arch::EfficientnetB2,
    onnx_parity_efficientnet_b3: Arch::EfficientnetB3,
    onnx_parity_efficientnet_v2_s: Arch::EfficientnetV2S,
    onnx_parity_efficientnet_lite0: Arch::EfficientnetLite0,
    onnx_parity_mobilenetv3_small_100: Arch::Mobilenetv3Small100,
    onnx_parity_mobilenetv3_large_100: Arch::Mobilenetv3Large100,
    onnx_parity_tf_efficientnetv2_s: Arch::TfEfficientnetV2S,
}

/// Every architecture the zoo has is covered by a parity test above.
#[test]
fn every_arch_has_a_parity_test() {
    let src = std::fs::read_to_string(common::repo().join("tests/export.rs")).unwrap();
    for a in Arch::ALL {
        assert!(
            src.contains(&format!("onnx_parity_{}: ", a.name())),
            "no ONNX parity test for {a}"
        );
    }
}

/// The file alone is enough: metadata read back by onnxruntime, names, shapes, dynamic batch.
#[test]
fn metadata_and_signature() {
    if !has_onnxruntime() {
        return;
    }
    let (r, info) = parity(Arch::Resnet18, Size { w: 64, h: 48 }, None);
    let m = &r.meta["metadata"];
    let classes: Vec<String> = serde_json::from_str(m["classes"].as_str().unwrap()).unwrap();
    assert_eq!(classes, info.classes);
    assert_eq!(m["input_width"], "64");
    assert_eq!(m["input_height"], "48");
    assert_eq!(m["resize_method"], "squish");
    assert_eq!(m["pad_mode"], "reflection");
    let mean: Vec<f64> = serde_json::from_str(m["mean"].as_str().unwrap()).unwrap();
    let std: Vec<f64> = serde_json::from_str(m["std"].as_str().unwrap()).unwrap();
    assert_eq!(mean, Arch::Resnet18.normalization().0);
    assert_eq!(std, Arch::Resnet18.normalization().1);
    assert_eq!(m["finetune_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r.meta["producer"], "finetune");
    assert_eq!(r.meta["opset"], serde_json::json!([["", 17]]));
    assert_eq!(
        r.meta["inputs"],
        serde_json::json!([["input", ["batch", 3, 48, 64], "tensor(float)"]])
    );
    assert_eq!(
        r.meta["outputs"],
        serde_json::json!([
            ["logits", ["batch", 5], "tensor(float)"],
            ["probabilities", ["batch", 5], "tensor(float)"]
        ])
    );
    // Weights keep the bundle's variable names; eval mode has no dropout.
    let inits: Vec<&str> = r.meta["initializers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(inits.contains(&"body.layer1.0.conv1.weight"));
    assert!(inits.contains(&"head.2.running_var"));
    let ops = r.meta["ops"].to_string();
    assert!(
        !ops.contains("Dropout") && ops.contains("GlobalMaxPool"),
        "{ops}"
    );
}

/// The oldest and newest opsets accepted give the same logits; others are refused clearly.
#[test]
fn opsets() {
    if !has_onnxruntime() {
        return;
    }
    for opset in [13, 21] {
        let (r, _) = parity(Arch::MobilenetV2, Size { w: 40, h: 40 }, Some(opset));
        assert_eq!(r.meta["opset"], serde_json::json!([["", opset]]));
    }
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m");
    make_bundle(
        &model,
        Arch::Resnet18,
        Size { w: 32, h: 32 },
        ResizeMethod::Crop,
    );
    for bad in ["12", "22"] {
        let o = run(bin().arg("export").arg(&model).args(["--opset", bad]));
        assert!(!o.status.success());
        assert!(
            o.stderr.contains(&format!("opset {bad} is not supported"))
                && o.stderr.contains("13 to 21"),
            "{}",
            o.stderr
        );
        assert!(!model.join("model.onnx").exists());
    }
}

/// `--out` is honoured, the write is atomic (no temporaries left), an old bundle or a folder that
/// is not a bundle gives the usual clear error.
#[test]
fn out_path_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m");
    make_bundle(
        &model,
        Arch::Resnet18,
        Size { w: 32, h: 32 },
        ResizeMethod::Pad,
    );
    let out = d.path().join("exported.onnx");
    let o = run(bin().arg("export").arg(&model).arg("--out").arg(&out));
    assert!(o.status.success(), "{}", o.stderr);
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.len() > 40_000_000, "{} bytes", bytes.len());
    assert!(!model.join("model.onnx").exists());
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let o = run(bin().arg("export").arg(d.path().join("nothing")));
    assert!(
        !o.status.success() && o.stderr.contains("is not a model bundle"),
        "{}",
        o.stderr
    );
    let j = std::fs::read_to_string(model.join("model.json"))
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 0");
    std::fs::write(model.join("model.json"), j).unwrap();
    let o = run(bin().arg("export").arg(&model));
    assert!(
        !o.status.success() && o.stderr.contains("format version 0"),
        "{}",
        o.stderr
    );
    assert!(!model.join("model.onnx").exists());
}

/// The Python example of docs/export.md runs as written (its model path and file names) and agrees with
/// `finetune`'s probabilities up to the small difference between Pillow's decoding and resize and ours (measured ≤ 0.02).
#[test]
fn readme_python_example_runs() {
    if !has_onnxruntime() {
        return;
    }
    let readme = std::fs::read_to_string(common::repo().join("docs/export.md")).unwrap();
    let sec = &readme[readme.find("## Export").unwrap()..];
    let start = sec.find("```python\n").unwrap() + "```python\n".len();
    let code = &sec[start..start + sec[start..].find("```").unwrap()];
    assert!(code.contains("custom_metadata_map") && code.contains("models/clothes/model.onnx"));

    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("models/clothes");
    make_bundle(
        &model,
        Arch::Resnet18,
        Size { w: 64, h: 64 },
        ResizeMethod::Squish,
    );
    let o = run(bin().arg("export").arg(&model));
    assert!(o.status.success(), "{}", o.stderr);
    let ph = photos();
    let files = [d.path().join("shoe.jpg"), d.path().join("hat.jpg")];
    std::fs::copy(&ph[5], &files[0]).unwrap();
    std::fs::copy(&ph[0], &files[1]).unwrap();

    let out = std::process::Command::new(common::python())
        .args(["-c", code])
        .current_dir(d.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = bundle::load(&model, Device::Cpu).unwrap();
    let ours = finetune::infer::predict::predict(&b, &files, &Default::default());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, p) in lines.iter().zip(ours) {
        let p = p.unwrap();
        let (label, prob) = line.rsplit_once(' ').unwrap();
        let prob: f32 = prob.parse().unwrap();
        let i = CLASSES.iter().position(|c| *c == label).unwrap();
        let best = p.top(1)[0].1;
        eprintln!(
            "README snippet: {label} {prob}; finetune: {} / best {best}",
            p.probs[i]
        );
        // Its top class is finetune's top class, or one within the resize difference of it.
        assert!((p.probs[i] - prob).abs() < 0.05, "{line} vs {:?}", p.probs);
        assert!(prob > best - 0.05, "{line} vs {:?}", p.probs);
    }
}
