//! Strict loading of checkpoint tensors into a [`Network`]: every model tensor must be present with
//! its exact shape, and nothing but BatchNorm counters and the replaced classifier may be left over.

use super::network::{Network, BODY, HEAD, TOP};
use super::timm;
use super::weights::Shapes;
use super::weights::{read_weights, NamedTensors, WeightsError};
use super::Arch;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Which part of the network the checkpoint provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Portion {
    /// An ImageNet checkpoint for a fine-tune: the body; the file's classifier is dropped.
    Body,
    /// An ImageNet checkpoint for `classify-imagenet`: body and the 1000-class classifier.
    BodyAndClassifier,
}

fn is_classifier_key(arch: Arch, key: &str) -> bool {
    key.starts_with(arch.classifier_prefix())
}

/// Reads `file` and loads it into `net` (see [`load_tensors`]).
pub fn load_checkpoint(net: &Network, file: &Path, part: Portion) -> Result<(), WeightsError> {
    let tensors = read_weights(file)?;
    load_tensors(net, file, tensors, part)
}

pub fn load_tensors(
    net: &Network,
    file: &Path,
    tensors: NamedTensors,
    part: Portion,
) -> Result<(), WeightsError> {
    // Checkpoints saved from DataParallel prefix every key with `module.`.
    let mut by_key: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            (
                k.strip_prefix("module.").map(str::to_string).unwrap_or(k),
                t,
            )
        })
        .collect();
    let arch = net.arch;
    // Names and shapes as in the file, for recognising its layout.
    let shapes: Shapes = by_key.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    let looks_like = Arch::guess_weights(&shapes).filter(|g| g != arch.name());
    let family = timm::layout_of(&shapes);
    let mismatch = |msg: String| WeightsError::Mismatch {
        path: file.to_path_buf(),
        arch: arch.name().to_string(),
        msg: match family {
            Some(f) if f.archs.contains(&arch) => format!("{msg} (after renaming timm's keys)"),
            _ => msg,
        },
        looks_like: looks_like.clone(),
    };
    // timm-only archs (timm's BatchNorm or padding) take timm's files only, the way torchvision's
    // archs refuse timm's files: the same names would load the right shapes into the wrong net.
    if family.is_none() && arch.timm_only() {
        return Err(mismatch(format!(
            "{arch} takes timm checkpoints, and this file is not in timm's layout"
        )));
    }
    // A timm checkpoint: renamed into our (torchvision) layout, if it is one of this arch's.
    if let Some(family) = family {
        if !family.archs.contains(&arch) {
            return Err(mismatch(format!("it is a timm {} checkpoint", family.name)));
        }
        by_key = (family.remap)(arch, by_key)
            .map_err(|e| mismatch(format!("timm {} checkpoint: {e}", family.name)))?;
    }
    let vars = net.vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut assignments = Vec::new();
    for name in names {
        let key = if let Some(k) = name.strip_prefix(&format!("{BODY}.")) {
            k
        } else if let Some(k) = name.strip_prefix(&format!("{TOP}.")) {
            if part != Portion::BodyAndClassifier {
                continue;
            }
            k
        } else if name.starts_with(&format!("{HEAD}.")) {
            continue;
        } else {
            name.as_str()
        };
        let var = &vars[name];
        let Some(t) = by_key.get(key) else {
            return Err(mismatch(format!("missing tensor `{key}`")));
        };
        if t.size() != var.size() {
            return Err(mismatch(format!(
                "tensor `{key}` has shape {:?}, the model needs {:?}",
                t.size(),
                var.size()
            )));
        }
        assignments.push((key.to_string(), var.shallow_clone()));
    }
    let used: std::collections::HashSet<&str> =
        assignments.iter().map(|(k, _)| k.as_str()).collect();
    let mut unexpected: Vec<&String> = by_key
        .keys()
        .filter(|k| {
            let expected = used.contains(k.as_str())
                || k.ends_with("num_batches_tracked")
                || (part == Portion::Body && is_classifier_key(arch, k));
            !expected
        })
        .collect();
    unexpected.sort();
    if let Some(first) = unexpected.first() {
        return Err(mismatch(format!(
            "unexpected tensor `{first}` ({} tensors the model does not have)",
            unexpected.len()
        )));
    }
    tch::no_grad(|| {
        for (key, mut var) in assignments {
            if let Some(t) = by_key.remove(&key) {
                var.copy_(&t.to_device(var.device()));
            }
        }
    });
    super::plan::weights_changed();
    Ok(())
}

/// Loads a bundle's own tensors: names are the model's variable names, all must match exactly.
pub fn load_exact(net: &Network, file: &Path, tensors: NamedTensors) -> Result<(), WeightsError> {
    let mut by_key: HashMap<String, Tensor> = tensors.into_iter().collect();
    let vars = net.vs.variables();
    let err = |msg: String| WeightsError::Mismatch {
        path: file.to_path_buf(),
        arch: net.arch.name().to_string(),
        msg,
        looks_like: None,
    };
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in &names {
        match by_key.get(name.as_str()) {
            None => return Err(err(format!("missing tensor `{name}`"))),
            Some(t) if t.size() != vars[*name].size() => {
                return Err(err(format!(
                    "tensor `{name}` has shape {:?}, the model needs {:?}",
                    t.size(),
                    vars[*name].size()
                )))
            }
            _ => {}
        }
    }
    if let Some(extra) = by_key.keys().find(|k| !vars.contains_key(*k)) {
        return Err(err(format!("unexpected tensor `{extra}`")));
    }
    tch::no_grad(|| {
        for name in names {
            if let Some(t) = by_key.remove(name) {
                let mut v = vars[name].shallow_clone();
                v.copy_(&t.to_device(v.device()));
            }
        }
    });
    super::plan::weights_changed();
    Ok(())
}
