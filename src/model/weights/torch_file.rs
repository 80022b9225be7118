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

/// Tensors may add up to at most this many times the file's size (plus [`TOTAL_SLACK`]): views of
/// one storage can legitimately overlap (tied weights), but a hostile file could otherwise name
/// the same large storage thousands of times and have libtorch allocate each copy.
const TOTAL_FACTOR: usize = 4;
const TOTAL_SLACK: usize = 1 << 20;

/// Checks that `spec`'s strided view fits in `data` (sizes × strides with checked arithmetic, its
/// element count and byte size no larger than the storage), then copies just the bytes it spans
/// into a contiguous tensor. Returns the tensor and its byte size. Nothing is allocated by libtorch
/// before the checks pass.
fn build(path: &Path, spec: &TensorSpec, data: &[u8]) -> Result<(Tensor, usize), WeightsError> {
    let err = |what: &str| WeightsError::format(path, format!("tensor {}: {what}", spec.name));
    let kind = spec.storage.kind;
    let elt = kind.elt_size_in_bytes();
    if spec.size.len() != spec.stride.len() {
        return Err(err("size and stride have different lengths"));
    }
    if spec.size.len() > 64 {
        return Err(err("more than 64 dimensions"));
    }
    if spec.size.iter().any(|&s| s < 0) || spec.stride.iter().any(|&s| s < 0) || spec.offset < 0 {
        return Err(err("negative size, stride or offset"));
    }
    let too_big = || err("size overflows");
    let numel = spec
        .size
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(usize::try_from(s).ok()?))
        .ok_or_else(too_big)?;
    let nbytes = numel.checked_mul(elt).ok_or_else(too_big)?;
    if numel == 0 {
        return Tensor::f_zeros(spec.size.as_slice(), (kind, tch::Device::Cpu))
            .map(|t| (t, 0))
            .map_err(|e| err(&e.to_string()));
    }
    // Last element the view touches; every term is checked, so a huge stride cannot wrap around.
    let last = spec
        .size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |acc, (&s, &st)| {
            acc.checked_add((s - 1).checked_mul(st)?)
        })
        .ok_or_else(too_big)?;
    let storage_numel = data.len() / elt;
    if last as u64 >= storage_numel as u64 {
        return Err(err(&format!(
            "reaches past the end of its storage ({} elements; file truncated?)",
            storage_numel
        )));
    }
    if nbytes > data.len() {
        return Err(err(&format!(
            "needs {nbytes} bytes but its storage holds {}",
            data.len()
        )));
    }
    // Only the span the view covers: a small view of a large shared storage stays small.
    let (first, last) = (spec.offset as usize, last as usize);
    let span = &data[first * elt..(last + 1) * elt];
    let flat = Tensor::f_from_data_size(span, &[(last + 1 - first) as i64], kind)
        .map_err(|e| err(&e.to_string()))?;
    let t = flat
        .f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), 0)
        .and_then(|v| v.f_contiguous())
        .map_err(|e| err(&e.to_string()))?;
    Ok((t, nbytes))
}

/// Builds every tensor, bounding their total size by the file's (see [`TOTAL_FACTOR`]).
fn build_all<'a>(
    path: &Path,
    file_len: usize,
    specs: &[TensorSpec],
    storage: impl Fn(&TensorSpec) -> Result<&'a [u8], WeightsError>,
) -> Result<NamedTensors, WeightsError> {
    let limit = file_len
        .saturating_mul(TOTAL_FACTOR)
        .saturating_add(TOTAL_SLACK);
    let mut total = 0usize;
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let (t, n) = build(path, spec, storage(spec)?)?;
        total = total.saturating_add(n);
        if total > limit {
            return Err(WeightsError::format(
                path,
                format!(
                    "tensors add up to more than {TOTAL_FACTOR}× the file's {file_len} bytes \
                     (the same storage named again and again?): refusing a malformed file"
                ),
            ));
        }
        out.push((spec.name.clone(), t));
    }
    Ok(out)
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
    let archive_len = bytes.len() as u64;
    let mut read_entry = |name: &str| -> Result<Vec<u8>, WeightsError> {
        let f = zip.by_name(name).map_err(|e| bad(&e))?;
        // torch.save stores entries uncompressed; a compressed one may expand at most as far as
        // deflate can (~1032×), so a lying size field cannot make us reserve gigabytes.
        let size = f.size();
        if size > f.compressed_size().saturating_mul(1100).max(archive_len) {
            return Err(bad(&format!(
                "entry {name} claims {size} bytes, more than its compressed data can hold"
            )));
        }
        let mut buf = Vec::with_capacity(size.min(archive_len) as usize);
        f.take(size).read_to_end(&mut buf).map_err(|e| bad(&e))?;
        Ok(buf)
    };
    let pkl = read_entry(&pkl_name)?;
    let (root, _) = unpickle(&pkl).map_err(|e| WeightsError::format(path, e.to_string()))?;
    let specs = collect_specs(&root);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for spec in &specs {
        if !storages.contains_key(&spec.storage.key) {
            let data = read_entry(&format!("{prefix}data/{}", spec.storage.key))?;
            storages.insert(spec.storage.key.clone(), data);
        }
    }
    build_all(path, bytes.len(), &specs, |spec| {
        storages
            .get(&spec.storage.key)
            .map(Vec::as_slice)
            .ok_or_else(|| bad(&format!("storage {} missing", spec.storage.key)))
    })
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
        let truncated = || fmt(&"file ends inside the storage data (truncated?)");
        let head = pos
            .checked_add(8)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(truncated)?;
        let numel = u64::from_le_bytes(head.try_into().map_err(|_| fmt(&"size"))?);
        pos += 8;
        let elt = kinds
            .get(key.as_str())
            .map(|k| k.elt_size_in_bytes())
            .unwrap_or(4);
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(elt))
            .ok_or_else(|| fmt(&"storage size overflows"))?;
        let data = pos
            .checked_add(len)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(truncated)?;
        pos += len;
        storages.insert(key, data);
    }
    build_all(path, bytes.len(), &specs, |spec| {
        storages.get(&spec.storage.key).copied().ok_or_else(|| {
            fmt(&format!(
                "storage {} of {} missing",
                spec.storage.key, spec.name
            ))
        })
    })
}
