//! Reads PyTorch `torch.save` checkpoints in both layouts, without Python:
//! - zip (torch >= 1.6): `<name>/data.pkl` plus one raw file per storage under `<name>/data/<key>`;
//! - legacy (pre-zip): magic, protocol and sys-info pickles, the object pickle, a pickle listing
//!   storage keys, then each storage as an 8-byte element count followed by its raw bytes.
//!
//! Tensors are rebuilt from `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.

use super::pickle::{unpickle, Value};
use super::{NamedTensors, WeightsError};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

pub fn read(path: &Path, bytes: &[u8]) -> Result<NamedTensors, WeightsError> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(path, bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(path, bytes)
    } else {
        Err(WeightsError::format(
            path,
            "not a PyTorch checkpoint (neither a zip archive nor a pickle)",
        ))
    }
}

/// Where a storage's bytes live, and its element type.
struct StorageRef {
    key: String,
    kind: Kind,
}

fn storage_kind(t: &Value) -> Option<Kind> {
    let name = match t {
        Value::Global { name, .. } => name.as_str(),
        Value::Str(s) => s.as_str(),
        _ => return None,
    };
    Some(match name {
        "FloatStorage" | "float32" => Kind::Float,
        "HalfStorage" | "float16" => Kind::Half,
        "BFloat16Storage" | "bfloat16" => Kind::BFloat16,
        "DoubleStorage" | "float64" => Kind::Double,
        "LongStorage" | "int64" => Kind::Int64,
        "IntStorage" | "int32" => Kind::Int,
        "ShortStorage" | "int16" => Kind::Int16,
        "CharStorage" | "int8" => Kind::Int8,
        "ByteStorage" | "uint8" => Kind::Uint8,
        "BoolStorage" | "bool" => Kind::Bool,
        _ => return None,
    })
}

/// `('storage', storage_type, key, location, numel[, view_metadata])`.
fn parse_pid(pid: &Value) -> Option<StorageRef> {
    let t = pid.as_seq()?;
    if t.first()?.as_str()? != "storage" {
        return None;
    }
    let kind = storage_kind(t.get(1)?)?;
    let key = match t.get(2)? {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => return None,
    };
    Some(StorageRef { key, kind })
}

/// Walks the unpickled object and yields `(name, storage, offset, size, stride)` for each tensor.
struct TensorSpec {
    name: String,
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    v.as_seq()?.iter().map(|x| x.as_int()).collect()
}

fn tensor_spec(name: &str, v: &Value) -> Option<TensorSpec> {
    let Value::Call { callable, args } = v else {
        return None;
    };
    let Value::Global { name: f, .. } = callable.as_ref() else {
        return None;
    };
    if f != "_rebuild_tensor_v2" && f != "_rebuild_tensor" {
        return None;
    }
    let Value::Persistent(pid) = args.first()? else {
        return None;
    };
    Some(TensorSpec {
        name: name.to_string(),
        storage: parse_pid(pid)?,
        offset: args.get(1)?.as_int()?,
        size: ints(args.get(2)?)?,
        stride: ints(args.get(3)?)?,
    })
}

/// Finds the state dict: the top-level dict itself, or the usual wrappers (`state_dict`, `model`, ...).
fn collect_specs(root: &Value) -> Vec<TensorSpec> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<TensorSpec>) {
        if let Some(spec) = tensor_spec(prefix, v) {
            out.push(spec);
            return;
        }
        if let Value::Dict(items) = v {
            for (k, val) in items {
                let Some(k) = k.as_str() else { continue };
                let name = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&name, val, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Value::Dict(items) = root {
        for wrapper in ["state_dict", "model_state_dict", "model"] {
            if let Some((_, inner)) = items.iter().find(|(k, _)| k.as_str() == Some(wrapper)) {
                walk("", inner, &mut out);
                if !out.is_empty() {
                    return out;
                }
            }
        }
    }
    walk("", root, &mut out);
    out
}

fn build(path: &Path, spec: &TensorSpec, data: &[u8]) -> Result<Tensor, WeightsError> {
    let elt = spec.storage.kind.elt_size_in_bytes();
    let numel = data.len() / elt;
    // Check that the strided view stays inside the storage before handing it to libtorch.
    let max_index: i64 = spec.offset
        + spec
            .size
            .iter()
            .zip(&spec.stride)
            .map(|(s, st)| if *s == 0 { 0 } else { (s - 1) * st })
            .sum::<i64>();
    if spec.size.iter().any(|&s| s < 0) || spec.stride.iter().any(|&s| s < 0) || spec.offset < 0 {
        return Err(WeightsError::format(
            path,
            format!("tensor {} has a negative size or stride", spec.name),
        ));
    }
    if spec.size.contains(&0) {
        return Ok(Tensor::zeros(
            spec.size.as_slice(),
            (spec.storage.kind, tch::Device::Cpu),
        ));
    }
    if max_index as usize >= numel {
        return Err(WeightsError::format(
            path,
            format!(
                "tensor {} reaches past the end of its storage (file truncated?)",
                spec.name
            ),
        ));
    }
    let flat = Tensor::f_from_data_size(&data[..numel * elt], &[numel as i64], spec.storage.kind)
        .map_err(|e| WeightsError::format(path, e.to_string()))?;
    Ok(flat
        .as_strided(spec.size.as_slice(), spec.stride.as_slice(), spec.offset)
        .contiguous())
}

fn read_zip(path: &Path, bytes: &[u8]) -> Result<NamedTensors, WeightsError> {
    let bad = |e: &dyn std::fmt::Display| {
        WeightsError::format(path, format!("broken zip checkpoint: {e}"))
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(&e))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| {
            WeightsError::format(
                path,
                "zip archive has no `<name>/data.pkl`: not a torch.save file",
            )
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>, WeightsError> {
        let mut f = zip.by_name(name).map_err(|e| bad(&e))?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).map_err(|e| bad(&e))?;
        Ok(buf)
    };
    let pkl = read_entry(&pkl_name)?;
    let (root, _) = unpickle(&pkl).map_err(|e| WeightsError::format(path, e.to_string()))?;
    let specs = collect_specs(&root);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in &specs {
        if !storages.contains_key(&spec.storage.key) {
            let data = read_entry(&format!("{prefix}data/{}", spec.storage.key))?;
            storages.insert(spec.storage.key.clone(), data);
        }
        out.push((
            spec.name.clone(),
            build(path, spec, &storages[&spec.storage.key])?,
        ));
    }
    Ok(out)
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<NamedTensors, WeightsError> {
    let fmt =
        |e: &dyn std::fmt::Display| WeightsError::format(path, format!("legacy checkpoint: {e}"));
    // The magic number 0x1950a86a20f9469cfc6c is wider than 64 bits, so its pickle is matched as raw
    // bytes: PROTO 2, LONG1 10 bytes 6c fc 9c 46 f9 20 6a a8 50 19, STOP.
    const MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
    if !bytes.starts_with(MAGIC) {
        return Err(WeightsError::format(
            path,
            "a pickle, but not a PyTorch checkpoint (no legacy magic number)",
        ));
    }
    let mut pos = MAGIC.len();
    let next = |pos: &mut usize| -> Result<Value, WeightsError> {
        let (v, n) = unpickle(&bytes[*pos..]).map_err(|e| fmt(&e))?;
        *pos += n;
        Ok(v)
    };
    let protocol = next(&mut pos)?;
    if protocol.as_int() != Some(1001) {
        return Err(fmt(&"unsupported protocol version"));
    }
    let sys_info = next(&mut pos)?;
    if let Value::Dict(items) = &sys_info {
        let little = items
            .iter()
            .find(|(k, _)| k.as_str() == Some("little_endian"))
            .map(|(_, v)| v.clone());
        if little == Some(Value::Bool(false)) {
            return Err(fmt(&"big-endian checkpoints are not supported"));
        }
    }
    let root = next(&mut pos)?;
    let keys = next(&mut pos)?;
    let keys: Vec<String> = keys
        .as_seq()
        .ok_or_else(|| fmt(&"storage key list missing"))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| fmt(&"storage key is not a string"))
        })
        .collect::<Result<_, _>>()?;
    let specs = collect_specs(&root);
    let kinds: HashMap<&str, Kind> = specs
        .iter()
        .map(|s| (s.storage.key.as_str(), s.storage.kind))
        .collect();
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let head = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| fmt(&"file ends inside the storage data (truncated?)"))?;
        let numel = u64::from_le_bytes(head.try_into().map_err(|_| fmt(&"size"))?) as usize;
        pos += 8;
        let elt = kinds
            .get(key.as_str())
            .map(|k| k.elt_size_in_bytes())
            .unwrap_or(4);
        let len = numel
            .checked_mul(elt)
            .ok_or_else(|| fmt(&"storage size overflows"))?;
        let data = bytes
            .get(pos..pos + len)
            .ok_or_else(|| fmt(&"file ends inside the storage data (truncated?)"))?;
        pos += len;
        storages.insert(key, data);
    }
    specs
        .iter()
        .map(|spec| {
            let data = storages.get(&spec.storage.key).ok_or_else(|| {
                fmt(&format!(
                    "storage {} of {} missing",
                    spec.storage.key, spec.name
                ))
            })?;
            Ok((spec.name.clone(), build(path, spec, data)?))
        })
        .collect()
}
