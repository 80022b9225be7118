//! Structure-aware fuzzing of the weight-file readers (zip and legacy `.pth`, `.safetensors`, the
//! pickle VM), on stable Rust, seeded and reproducible.
//!
//! Seeds are small files written by PyTorch (`tests/fixtures/weights/`, made by
//! `tests/reference/make_fuzz_seeds.py`). Each input is a seed mutated at the byte level (bit flips,
//! interesting bytes, 1/2/4/8-byte integers overwritten with huge or negative values, truncation,
//! chunk insertion/duplication/deletion) and/or structurally: a zip's `data.pkl` and storage records
//! are mutated and re-packed into a valid zip (so mutations get past the CRC checks), a legacy
//! file's pickles and storage headers are mutated in place, a safetensors JSON header is edited
//! (shapes, offsets, dtypes, header length).
//!
//! Every input must end in `Ok` or a `WeightsError` naming the file — never a panic — and no single
//! allocation may exceed [`ALLOC_LIMIT`] (a counting global allocator records the largest request;
//! libtorch's own allocations bypass it, which is why the readers check every tensor's byte size
//! against the bytes present before creating it, and why peak RSS is checked too).
//!
//! `FINETUNE_FUZZ_ITERS` (default 100 000) and `FINETUNE_FUZZ_SEED` change the run; a failing input
//! is written to `target/fuzz-failures/` with the seed that reproduces it
//! (`FINETUNE_FUZZ_ONE=<input seed>` runs just that one).

use finetune::model::weights::pickle::unpickle;
use finetune::model::weights::{read_weights_bytes, WeightsError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Counting allocator: the largest single request, overall and since the last reset.

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LARGEST_NOW: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    LARGEST_NOW.fetch_max(size, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// No single Rust allocation may be larger than this while reading a (small) mutated file.
const ALLOC_LIMIT: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Seeds.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Zip,
    Legacy,
    Safetensors,
}

struct Seed {
    name: String,
    bytes: Vec<u8>,
    format: Format,
    /// Zip: the entries in order. Empty otherwise.
    entries: Vec<(String, Vec<u8>)>,
    /// Legacy: byte ranges of the five pickles, then of each storage header+data.
    pickles: Vec<(usize, usize)>,
    storages: Vec<usize>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/weights")
}

fn load_seeds() -> Vec<Seed> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures/weights")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with("malicious"))
        .collect();
    names.sort();
    let seeds: Vec<Seed> = names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(fixtures().join(&name)).unwrap();
            let format = if name.ends_with(".safetensors") {
                Format::Safetensors
            } else if bytes.starts_with(b"PK") {
                Format::Zip
            } else {
                Format::Legacy
            };
            let mut seed = Seed {
                name,
                bytes,
                format,
                entries: Vec::new(),
                pickles: Vec::new(),
                storages: Vec::new(),
            };
            match format {
                Format::Zip => seed.entries = unzip(&seed.bytes),
                Format::Legacy => (seed.pickles, seed.storages) = legacy_layout(&seed.bytes),
                Format::Safetensors => {}
            }
            seed
        })
        .collect();
    for f in [Format::Zip, Format::Legacy, Format::Safetensors] {
        assert!(
            seeds.iter().any(|s| s.format == f),
            "no {f:?} seed in tests/fixtures/weights (run tests/reference/make_fuzz_seeds.py)"
        );
    }
    seeds
}

fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().to_string(), b)
        })
        .collect()
}

/// A valid zip of `entries`, mostly stored (as torch.save writes them), sometimes deflated.
fn rezip(entries: &[(String, Vec<u8>)], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        let opts = if rng.gen_ratio(1, 10) {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .compression_level(Some(1))
        } else {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
        };
        // Mutated names may clash: skip the ones the writer refuses.
        if w.start_file(name.as_str(), opts).is_ok() {
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// Legacy layout: five pickles back to back (the first, the magic number, is a fixed 15 bytes the
/// VM does not read: its integer is wider than 64 bits), then `(u64 numel, data)` per storage.
fn legacy_layout(bytes: &[u8]) -> (Vec<(usize, usize)>, Vec<usize>) {
    let mut pickles = vec![(0, 15)];
    let mut pos = 15;
    for _ in 0..4 {
        let (_, n) = unpickle(&bytes[pos..]).unwrap();
        pickles.push((pos, pos + n));
        pos += n;
    }
    // The element sizes are in the object pickle; finding the partition of the rest into
    // `(numel, numel × size)` records is simpler.
    fn walk(b: &[u8], pos: usize) -> Option<Vec<usize>> {
        if pos == b.len() {
            return Some(Vec::new());
        }
        let numel = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?) as usize;
        [4usize, 2, 8, 1].into_iter().find_map(|e| {
            let mut rest = walk(b, pos.checked_add(8 + numel.checked_mul(e)?)?)?;
            rest.insert(0, pos);
            Some(rest)
        })
    }
    let storages = walk(bytes, pos).expect("legacy seed: storage records do not add up");
    (pickles, storages)
}

// ---------------------------------------------------------------------------------------------
// Mutations.

const INTERESTING_BYTES: [u8; 6] = [0, 0xff, 0x7f, 0x80, 1, 0xfe];
const INTERESTING_INTS: [i64; 16] = [
    0,
    -1,
    1,
    -2,
    i8::MAX as i64,
    i8::MIN as i64,
    i16::MAX as i64,
    u16::MAX as i64,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    1 << 32,
    1 << 40,
    i64::MAX,
    i64::MIN,
    1 << 62,
];

fn interesting_int(rng: &mut ChaCha8Rng) -> i64 {
    if rng.gen_ratio(1, 4) {
        rng.gen()
    } else {
        INTERESTING_INTS[rng.gen_range(0..INTERESTING_INTS.len())]
    }
}

fn write_int(b: &mut [u8], at: usize, width: usize, v: i64, big_endian: bool) {
    let le = v.to_le_bytes();
    for i in 0..width {
        if let Some(x) = b.get_mut(at + i) {
            *x = if big_endian { le[width - 1 - i] } else { le[i] };
        }
    }
}

/// One byte-level mutation.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let len = b.len();
    let pos = |rng: &mut ChaCha8Rng| if len == 0 { 0 } else { rng.gen_range(0..len) };
    match rng.gen_range(0..9) {
        0 if len > 0 => {
            let p = pos(rng);
            b[p] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let p = pos(rng);
            b[p] = INTERESTING_BYTES[rng.gen_range(0..INTERESTING_BYTES.len())];
        }
        2 | 3 if len > 0 => {
            let width = [1, 2, 4, 8][rng.gen_range(0..4)];
            let p = pos(rng);
            let v = interesting_int(rng);
            write_int(b, p, width, v, rng.gen_ratio(1, 4));
        }
        4 => b.truncate(pos(rng)),
        5 => {
            let n = rng.gen_range(1..=64);
            let chunk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let p = pos(rng);
            b.splice(p..p, chunk);
        }
        6 if len > 0 => {
            let s = pos(rng);
            let e = (s + rng.gen_range(1..=256)).min(len);
            let chunk = b[s..e].to_vec();
            let p = pos(rng);
            b.splice(p..p, chunk);
        }
        7 if len > 0 => {
            let s = pos(rng);
            let e = (s + rng.gen_range(1..=256)).min(len);
            b.drain(s..e);
        }
        _ if len > 0 => {
            // Copy one chunk over another.
            let s = pos(rng);
            let d = pos(rng);
            let n = rng.gen_range(1..=32).min(len - s).min(len - d);
            let chunk = b[s..s + n].to_vec();
            b[d..d + n].copy_from_slice(&chunk);
        }
        _ => b.push(rng.gen()),
    }
}

/// Pickle opcodes with their argument layout, enough to walk what torch.save writes.
#[derive(Clone, Copy)]
enum Arg {
    None,
    Fixed(usize),
    /// A length of this many bytes, then that many bytes.
    Counted(usize),
    Lines(usize),
}

fn op_arg(op: u8) -> Option<Arg> {
    Some(match op {
        0x80 | b'K' | b'q' | b'h' | b'C' => Arg::Fixed(1),
        b'M' => Arg::Fixed(2),
        b'J' | b'r' | b'j' => Arg::Fixed(4),
        0x95 | b'G' => Arg::Fixed(8),
        0x8a | 0x8c | b'U' => Arg::Counted(1),
        b'X' | b'T' | b'B' | 0x8b => Arg::Counted(4),
        0x8d | 0x8e => Arg::Counted(8),
        b'c' => Arg::Lines(2),
        b'I' | b'L' | b'F' | b'V' | b'S' | b'P' | b'p' | b'g' => Arg::Lines(1),
        b'.' | b'(' | b'N' | 0x88 | 0x89 | b'}' | b']' | b')' | 0x8f | b'd' | b'l' | b't'
        | 0x91 | 0x85 | 0x86 | 0x87 | b'a' | b'e' | 0x90 | b's' | b'u' | 0x93 | b'R' | 0x81
        | b'b' | b'Q' | 0x94 | b'0' | b'1' | b'2' => Arg::None,
        _ => return None,
    })
}

/// `(start, end)` of each opcode with its argument, until STOP or something unknown.
fn ops(p: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let Some(arg) = op_arg(p[i]) else { break };
        let start = i;
        i += 1;
        match arg {
            Arg::None => {}
            Arg::Fixed(n) => i += n,
            Arg::Counted(w) => {
                let mut n = [0u8; 8];
                let Some(l) = p.get(i..i + w) else { break };
                n[..w].copy_from_slice(l);
                i += w + u64::from_le_bytes(n) as usize;
            }
            Arg::Lines(k) => {
                for _ in 0..k {
                    match p[i.min(p.len())..].iter().position(|&c| c == b'\n') {
                        Some(j) => i += j + 1,
                        None => i = p.len(),
                    }
                }
            }
        }
        if i > p.len() {
            break;
        }
        out.push((start, i));
        if p[start] == b'.' {
            break;
        }
    }
    out
}

/// Hand-written hostile gadgets inserted into pickles.
fn gadget(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.gen_range(0..6) {
        // Deep nesting: TUPLE1 many times over whatever is on top.
        0 => vec![0x85; rng.gen_range(100..5000)],
        // Deep nesting with MARK ... LIST.
        1 => {
            let n = rng.gen_range(100..3000);
            let mut v = vec![b'('; n];
            v.extend(std::iter::repeat_n(b'l', n));
            v
        }
        // Billion laughs: put, then get twice and pair, over and over.
        2 => {
            let mut v = b"]q\x00".to_vec();
            for i in 0..rng.gen_range(10..60u8) {
                v.extend([b'h', i, b'h', i, 0x86, b'q', i + 1]);
            }
            v
        }
        // DUP many times.
        3 => vec![b'2'; rng.gen_range(10..10_000)],
        // A huge string length.
        4 => {
            let mut v = vec![b'X'];
            v.extend((rng.gen::<u32>() | 0x8000_0000).to_le_bytes());
            v
        }
        // A forbidden global.
        _ => b"cposix\nsystem\n".to_vec(),
    }
}

/// One pickle-aware mutation: at opcode boundaries, or on an opcode's integer argument.
fn mutate_pickle(p: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let o = ops(p);
    if o.is_empty() {
        return mutate_bytes(p, rng);
    }
    let pick = |rng: &mut ChaCha8Rng| o[rng.gen_range(0..o.len())];
    match rng.gen_range(0..10) {
        // An integer argument (shape, stride, offset, numel, memo index, length) made extreme.
        0..=3 => {
            let ints: Vec<&(usize, usize)> = o
                .iter()
                .filter(|(s, _)| {
                    matches!(p[*s], b'K' | b'M' | b'J' | b'q' | b'h' | b'r' | b'j' | 0x8a)
                })
                .collect();
            let Some(&&(s, e)) = ints.get(rng.gen_range(0..ints.len().max(1))) else {
                return mutate_bytes(p, rng);
            };
            let v = interesting_int(rng);
            if p[s] == 0x8a {
                // LONG1: rewrite as an 8-byte little-endian integer.
                let mut new = vec![0x8a, 8];
                new.extend(v.to_le_bytes());
                p.splice(s..e, new);
            } else if rng.gen_ratio(1, 2) {
                // Widen to BININT / LONG1 so any value fits.
                let mut new = vec![0x8a, 8];
                new.extend(v.to_le_bytes());
                if matches!(p[s], b'q' | b'h' | b'r' | b'j') {
                    new = vec![p[s]];
                    new.extend(&v.to_le_bytes()[..e - s - 1]);
                }
                p.splice(s..e, new);
            } else {
                write_int(p, s + 1, e - s - 1, v, false);
            }
        }
        // Duplicate a run of opcodes (memo reads, tensor entries, SETITEMS...).
        4 => {
            let a = rng.gen_range(0..o.len());
            let b = (a + rng.gen_range(1..=8)).min(o.len());
            let run = p[o[a].0..o[b - 1].1].to_vec();
            let at = pick(rng).0;
            let times = if rng.gen_ratio(1, 8) {
                rng.gen_range(2..200)
            } else {
                1
            };
            for _ in 0..times {
                p.splice(at..at, run.iter().copied());
            }
        }
        // Delete a run of opcodes.
        5 => {
            let a = rng.gen_range(0..o.len());
            let b = (a + rng.gen_range(1..=4)).min(o.len());
            p.drain(o[a].0..o[b - 1].1);
        }
        // Swap two opcodes.
        6 => {
            let (x, y) = (pick(rng), pick(rng));
            let (x, y) = if x.0 <= y.0 { (x, y) } else { (y, x) };
            if x.1 <= y.0 {
                let (bx, by) = (p[x.0..x.1].to_vec(), p[y.0..y.1].to_vec());
                p.splice(y.0..y.1, bx);
                p.splice(x.0..x.1, by);
            }
        }
        // Replace an opcode byte by another known one (its argument is then misread).
        7 => {
            const KNOWN: &[u8] = b"(N}])dltaesuRbQ012hqKMJX\x85\x86\x87\x88\x89\x8a\x8c\x93\x94";
            let s = pick(rng).0;
            p[s] = KNOWN[rng.gen_range(0..KNOWN.len())];
        }
        // Insert a hostile gadget at an opcode boundary.
        8 => {
            let at = pick(rng).0;
            let g = gadget(rng);
            p.splice(at..at, g);
        }
        _ => mutate_bytes(p, rng),
    }
}

fn mutate_zip(seed: &Seed, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut entries = seed.entries.clone();
    for _ in 0..rng.gen_range(1..=3) {
        let i = rng.gen_range(0..entries.len());
        let is_pkl = entries[i].0.ends_with("data.pkl");
        let pkl = entries
            .iter()
            .position(|(n, _)| n.ends_with("data.pkl"))
            .unwrap_or(0);
        match rng.gen_range(0..10) {
            // Most often the pickle: that is where shapes, strides and storage keys live.
            0..=5 => mutate_pickle(&mut entries[pkl].1, rng),
            // A storage record: truncated, extended, corrupted.
            6 | 7 if !is_pkl => mutate_bytes(&mut entries[i].1, rng),
            // Drop an entry.
            8 => {
                entries.remove(i);
                if entries.is_empty() {
                    break;
                }
            }
            // Rename one.
            _ => {
                let mut n = entries[i].0.clone().into_bytes();
                mutate_bytes(&mut n, rng);
                entries[i].0 = String::from_utf8_lossy(&n).into_owned();
            }
        }
    }
    rezip(&entries, rng)
}

fn mutate_legacy(seed: &Seed, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let b = &seed.bytes;
    if rng.gen_ratio(1, 3) && !seed.storages.is_empty() {
        // A storage header's element count.
        let mut out = b.clone();
        let at = seed.storages[rng.gen_range(0..seed.storages.len())];
        let v = interesting_int(rng);
        write_int(&mut out, at, 8, v, false);
        return out;
    }
    // One of the pickles (mostly the object pickle and the storage key list), re-assembled.
    let k = [1, 2, 3, 3, 3, 4, 4][rng.gen_range(0..7)];
    let (s, e) = seed.pickles[k];
    let mut p = b[s..e].to_vec();
    for _ in 0..rng.gen_range(1..=2) {
        mutate_pickle(&mut p, rng);
    }
    let mut out = b[..s].to_vec();
    out.extend(p);
    out.extend(&b[e..]);
    out
}

fn mutate_safetensors(seed: &Seed, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let b = &seed.bytes;
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut data = b[8 + n..].to_vec();
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let big = |rng: &mut ChaCha8Rng| -> serde_json::Value {
        match rng.gen_range(0..4) {
            0 => serde_json::json!(interesting_int(rng)),
            1 => serde_json::json!(interesting_int(rng) as u64),
            2 => serde_json::json!(rng.gen_range(0..100)),
            _ => serde_json::json!(u64::MAX),
        }
    };
    for _ in 0..rng.gen_range(1..=3) {
        let name = &names[rng.gen_range(0..names.len())];
        let Some(t) = header.get_mut(name).and_then(|t| t.as_object_mut()) else {
            continue;
        };
        match rng.gen_range(0..9) {
            0 | 1 => {
                if let Some(shape) = t.get_mut("shape").and_then(|s| s.as_array_mut()) {
                    match rng.gen_range(0..3) {
                        0 if !shape.is_empty() => {
                            let i = rng.gen_range(0..shape.len());
                            shape[i] = big(rng);
                        }
                        1 => shape.push(big(rng)),
                        _ => {
                            shape.pop();
                        }
                    }
                }
            }
            2 | 3 => {
                if let Some(off) = t.get_mut("data_offsets").and_then(|s| s.as_array_mut()) {
                    let i = rng.gen_range(0..off.len().max(1));
                    if i < off.len() {
                        off[i] = big(rng);
                    }
                    if rng.gen_ratio(1, 4) {
                        off.reverse();
                    }
                }
            }
            4 => {
                const DTYPES: [&str; 14] = [
                    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16",
                    "U64", "F8_E4M3", "XX",
                ];
                t.insert(
                    "dtype".into(),
                    DTYPES[rng.gen_range(0..DTYPES.len())].into(),
                );
            }
            5 => {
                let copy = serde_json::Value::Object(t.clone());
                header.insert(format!("{name}.copy"), copy);
            }
            6 => {
                header.remove(name);
            }
            7 => mutate_bytes(&mut data, rng),
            _ => {
                header.insert(
                    "__metadata__".into(),
                    serde_json::json!({ "format": "pt", "x": big(rng) }),
                );
            }
        }
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    if rng.gen_ratio(1, 5) {
        mutate_bytes(&mut h, rng); // the JSON text itself
    }
    let mut len = h.len() as u64;
    if rng.gen_ratio(1, 6) {
        len = match rng.gen_range(0..4) {
            0 => len.wrapping_add(rng.gen_range(1..16)),
            1 => len.saturating_sub(rng.gen_range(1..16)),
            2 => 99_999_999,
            _ => interesting_int(rng) as u64,
        };
    }
    let mut out = len.to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// The input for one fuzz case, fully determined by `input_seed`.
fn make_input(seeds: &[Seed], input_seed: u64) -> (&Seed, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(input_seed);
    let seed = &seeds[rng.gen_range(0..seeds.len())];
    let structural = rng.gen_ratio(7, 10);
    let mut bytes = if structural {
        match seed.format {
            Format::Zip => mutate_zip(seed, &mut rng),
            Format::Legacy => mutate_legacy(seed, &mut rng),
            Format::Safetensors => mutate_safetensors(seed, &mut rng),
        }
    } else {
        seed.bytes.clone()
    };
    // Byte-level mutations on top: always for the plain path, sometimes after a structural one.
    if !structural || rng.gen_ratio(1, 10) {
        for _ in 0..rng.gen_range(1..=4) {
            mutate_bytes(&mut bytes, &mut rng);
        }
    }
    (seed, bytes)
}

// ---------------------------------------------------------------------------------------------
// The run.

/// splitmix64: independent per-input seeds from one base seed.
fn input_seed(base: u64, i: u64) -> u64 {
    let mut z = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Peak resident set size in bytes (Linux), to bound what libtorch allocates.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

static PANIC_MSG: Mutex<Option<String>> = Mutex::new(None);

enum Outcome {
    Ok,
    Err(String),
}

/// Reads `bytes` with the in-memory reader (zip, legacy and safetensors, the pickle VM inside).
fn run_one(name: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let r = catch_unwind(AssertUnwindSafe(|| read_weights_bytes(name, bytes)));
    match r {
        Ok(Ok(_)) => Ok(Outcome::Ok),
        Ok(Err(e)) => {
            let msg = e.to_string();
            if !msg.contains(&name.display().to_string()) {
                return Err(format!("error does not name the file: {msg}"));
            }
            let kind = match e {
                WeightsError::Io { .. } => "io",
                WeightsError::Format { .. } => "format",
                WeightsError::Mismatch { .. } => "mismatch",
            };
            Ok(Outcome::Err(kind.to_string()))
        }
        Err(_) => Err(format!(
            "panic: {}",
            PANIC_MSG.lock().unwrap().take().unwrap_or_default()
        )),
    }
}

fn save_failure(input_seed: u64, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{input_seed:016x}.bin"));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn fuzz_weight_readers() {
    let seeds = load_seeds();
    // Every seed reads cleanly before mutation.
    for s in &seeds {
        let t = read_weights_bytes(Path::new(&s.name), &s.bytes)
            .unwrap_or_else(|e| panic!("seed {} does not load: {e}", s.name));
        assert!(t.len() >= 6, "seed {} has {} tensors", s.name, t.len());
    }
    let iters = env_u64("FINETUNE_FUZZ_ITERS").unwrap_or(100_000);
    let base = env_u64("FINETUNE_FUZZ_SEED").unwrap_or(0x5eed_f00d);
    let only = env_u64("FINETUNE_FUZZ_ONE");

    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // libtorch errors carry a whole C++ backtrace: the first line says what happened.
        let msg: String = msg.lines().next().unwrap_or("").chars().take(300).collect();
        *PANIC_MSG.lock().unwrap() = Some(format!("{msg}{loc}"));
    }));

    let rss_before = peak_rss();
    LARGEST.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let mut failures = Vec::new();
    let (mut ok, mut errs) = (0usize, std::collections::BTreeMap::<String, usize>::new());
    let mut slowest = (Duration::ZERO, 0u64);
    let mut by_format = [0usize; 3];
    let mut time_by_format = [Duration::ZERO; 3];
    let mut make_time = Duration::ZERO;
    let cases: Box<dyn Iterator<Item = u64>> = match only {
        Some(s) => Box::new(std::iter::once(s)),
        None => Box::new((0..iters).map(|i| input_seed(base, i))),
    };
    for s in cases {
        let t0 = Instant::now();
        let (seed, bytes) = make_input(&seeds, s);
        make_time += t0.elapsed();
        by_format[seed.format as usize] += 1;
        let name = PathBuf::from(format!("fuzz-{s:016x}-{}", seed.name));
        LARGEST_NOW.store(0, Ordering::SeqCst);
        let t0 = Instant::now();
        let r = run_one(&name, &bytes);
        let dt = t0.elapsed();
        time_by_format[seed.format as usize] += dt;
        if dt > slowest.0 {
            slowest = (dt, s);
        }
        let big = LARGEST_NOW.load(Ordering::SeqCst);
        let r = match r {
            Ok(_) if big > ALLOC_LIMIT => Err(format!("allocated {big} bytes at once")),
            r => r,
        };
        match r {
            Ok(Outcome::Ok) => ok += 1,
            Ok(Outcome::Err(kind)) => *errs.entry(kind).or_default() += 1,
            Err(why) => {
                let p = save_failure(s, &bytes);
                eprintln!(
                    "FAIL input seed {s:#018x} (from {}): {why}\n  input saved to {}\n  \
                     rerun: FINETUNE_FUZZ_ONE={s:#x} cargo test --release --test fuzz_weights",
                    seed.name,
                    p.display()
                );
                failures.push(s);
            }
        }
    }
    std::panic::set_hook(hook);
    let secs = start.elapsed().as_secs_f64();
    let n = ok + errs.values().sum::<usize>() + failures.len();
    let largest = LARGEST.load(Ordering::SeqCst);
    let rss_growth = match (rss_before, peak_rss()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    println!(
        "fuzz: {n} inputs (zip {}, legacy {}, safetensors {}) in {secs:.1}s = {:.0}/s, base seed \
         {base:#x}; {ok} Ok, errors {errs:?}, {} failures; largest single allocation {largest} \
         bytes ({:.1} MB); peak RSS grew {:.1} MB; slowest input {:.1} ms (seed {:#x}); seconds \
         mutating {:.1}, reading zip/legacy/safetensors {:.1}/{:.1}/{:.1}",
        by_format[0],
        by_format[1],
        by_format[2],
        n as f64 / secs,
        failures.len(),
        largest as f64 / 1e6,
        rss_growth as f64 / 1e6,
        slowest.0.as_secs_f64() * 1e3,
        slowest.1,
        make_time.as_secs_f64(),
        time_by_format[0].as_secs_f64(),
        time_by_format[1].as_secs_f64(),
        time_by_format[2].as_secs_f64(),
    );
    assert!(
        failures.is_empty(),
        "{} inputs failed (saved under target/fuzz-failures/): {failures:#x?}",
        failures.len()
    );
    assert!(
        largest < ALLOC_LIMIT,
        "largest single allocation {largest} bytes ≥ {ALLOC_LIMIT}"
    );
    assert!(
        rss_growth < 1 << 30,
        "peak RSS grew by {rss_growth} bytes: some input made libtorch allocate too much"
    );
    assert!(
        slowest.0 < Duration::from_secs(10),
        "input {:#x} took {:?}",
        slowest.1,
        slowest.0
    );
    if only.is_none() {
        assert!(
            ok > 100,
            "too few mutated inputs still load ({ok}): mutations too blunt"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written hostile inputs and the malicious pickle.

fn pickle_err(data: &[u8]) -> String {
    match unpickle(data) {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hostile_pickles_are_bounded() {
    // 100 000 nested tuples: refused by depth, not by a stack overflow.
    let mut p = b"\x80\x02N".to_vec();
    p.extend(vec![0x85u8; 100_000]);
    p.push(b'.');
    assert!(pickle_err(&p).contains("nested too deeply"));
    // Nested MARK ... LIST.
    let mut p = b"\x80\x02".to_vec();
    p.extend(vec![b'('; 50_000]);
    p.extend(vec![b'l'; 50_000]);
    p.push(b'.');
    assert!(pickle_err(&p).contains("nested too deeply"));
    // Billion laughs: 60 doublings of a list would be 2^60 values.
    let mut p = b"\x80\x02]q\x00".to_vec();
    for i in 0..60u8 {
        p.extend([b'h', i, b'h', i, 0x86, b'q', i + 1]);
    }
    p.push(b'.');
    LARGEST_NOW.store(0, Ordering::SeqCst);
    let t = Instant::now();
    assert!(pickle_err(&p).contains("size limit"), "{}", pickle_err(&p));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A 4 GB string length in a 20-byte file.
    assert!(pickle_err(b"\x80\x02X\xff\xff\xff\xffab.").contains("ends early"));
    assert!(LARGEST_NOW.load(Ordering::SeqCst) < ALLOC_LIMIT);
}

#[test]
fn hostile_tensor_sizes_are_refused_before_allocating() {
    // zip_fp32's first tensor is `0.weight` of shape (3, 2, 3, 3): rewrite its shape to a huge one
    // with a zero stride (it would pass a naive "last element inside the storage" check).
    let seeds = load_seeds();
    let seed = seeds.iter().find(|s| s.name == "zip_fp32.pth").unwrap();
    let mut entries = seed.entries.clone();
    let pkl = entries
        .iter_mut()
        .find(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    // (K3 K2 K3 K3 t) is the size tuple; (K18 K9 K3 K1 t) the stride tuple.
    let size = b"(K\x03K\x02K\x03K\x03t";
    let at = pkl.1.windows(size.len()).position(|w| w == size).unwrap();
    let mut huge = b"(J\x00\x00\x10\x00J\x00\x00\x10\x00K\x03K\x03t".to_vec();
    let stride_at = at + size.len();
    let stride_end = stride_at + pkl.1[stride_at..].iter().position(|&c| c == b't').unwrap() + 1;
    huge.extend(b"(K\x00K\x00K\x00K\x00t");
    pkl.1.splice(at..stride_end, huge);
    let bytes = rezip(&entries, &mut ChaCha8Rng::seed_from_u64(0));
    let e = read_weights_bytes(Path::new("huge.pth"), &bytes)
        .map(|t| t.len())
        .expect_err("must refuse");
    let e = e.to_string();
    assert!(e.contains("huge.pth") && e.contains("0.weight"), "{e}");
    assert!(e.contains("bytes but its storage holds"), "{e}");
}

#[test]
fn malicious_pickle_is_refused_and_nothing_runs() {
    let marker = Path::new("/tmp/finetune-pwned");
    let _ = std::fs::remove_file(marker);
    for name in ["malicious.pth", "malicious_legacy.pth"] {
        let p = fixtures().join(name);
        let bytes = std::fs::read(&p).unwrap();
        let e = read_weights_bytes(&p, &bytes)
            .map(|t| t.len())
            .expect_err("a pickle calling os.system must be refused")
            .to_string();
        assert!(e.contains(name), "{e}");
        assert!(e.contains("refusing to load"), "{e}");
        assert!(e.contains("posix.system"), "{e}");
        assert!(e.contains("nothing was executed"), "{e}");
        // Through the file API too (what --weights uses).
        let e = finetune::model::weights::read_weights(&p)
            .map(|t| t.len())
            .expect_err("refused")
            .to_string();
        assert!(e.contains("posix.system"), "{e}");
    }
    assert!(!marker.exists(), "the payload ran");
    // STACK_GLOBAL and `builtins.eval` are caught as well; a harmless unknown class is not.
    let e = pickle_err(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.");
    assert!(e.contains("builtins.eval"), "{e}");
    let e = pickle_err(b"\x80\x02csubprocess\nPopen\n.");
    assert!(e.contains("subprocess.Popen"), "{e}");
    let (v, _) = unpickle(b"\x80\x02cargparse\nNamespace\n)R.").unwrap();
    assert!(matches!(
        v,
        finetune::model::weights::pickle::Value::Call { .. }
    ));
}

#[test]
fn seeds_agree_across_formats() {
    // The same state dict through every layout gives the same tensors (values checked against
    // torch.load when the seeds were made; here the layouts are checked against each other).
    let read = |name: &str| -> std::collections::BTreeMap<String, tch::Tensor> {
        let p = fixtures().join(name);
        finetune::model::weights::read_weights(&p)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k.trim_start_matches("module.").to_string(), t))
            .collect()
    };
    for group in [
        &[
            "zip_fp32.pth",
            "legacy_fp32.pth",
            "tiny_fp32.safetensors",
            "zip_wrapped_module.pth",
            "legacy_wrapped_module.pth",
        ][..],
        &["zip_fp16.pth", "legacy_fp16.pth", "tiny_fp16.safetensors"][..],
        &["zip_bf16.pth", "legacy_bf16.pth"][..],
    ] {
        let first = read(group[0]);
        for other in &group[1..] {
            let o = read(other);
            for (k, t) in &o {
                let r = &first[k];
                assert_eq!(r.size(), t.size(), "{other} {k}");
                assert!(r.equal(t), "{other}: {k} differs from {}", group[0]);
            }
            assert!(o.len() >= 8, "{other}");
        }
    }
    // The transposed view and the tied copy are rebuilt from their storage.
    let t = read("zip_fp32.pth");
    assert!(t["3.weight_t"].equal(&t["3.weight"].tr()));
    assert!(t["tied.weight"].equal(&t["3.weight"]));
    let t = read("legacy_fp32.pth");
    assert!(t["3.weight_t"].equal(&t["3.weight"].tr()));
}
