//! The on-disk image cache: the same batches as decoding into memory, bit for bit; exactly what
//! changed is decoded again; damaged shards are found and rebuilt; numpy reads the shards; the
//! rank/world split matches PyTorch's DistributedSampler; training metrics do not depend on it.

mod common;
use common::*;
use finetune::data::cache::{self, CacheConfig, RankSplit};
use finetune::data::{DataConfig, DataLoaders, PadMode, ResizeMethod, Size};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Two classes of images of many sizes and aspect ratios (so crop and pad differ per image), as
/// PNG and JPEG, plus one file that is not an image.
fn varied(dir: &Path, n: usize) {
    for (c, cls) in ["cat", "dog ü"].iter().enumerate() {
        let d = dir.join(cls);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let (w, h) = (20 + (i as u32 * 7) % 41, 18 + (i as u32 * 11) % 37);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 5 + i as u32 * 13) as u8,
                    (y * 3 + c as u32 * 90) as u8,
                    ((x ^ y) * 7) as u8,
                ])
            });
            if i % 2 == 0 {
                img.save(d.join(format!("{i}.png"))).unwrap();
            } else {
                std::fs::write(d.join(format!("{i}.jpg")), jpeg(&img, 90)).unwrap();
            }
        }
    }
    std::fs::write(dir.join("cat/broken.jpg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
}

fn cfg(method: ResizeMethod) -> DataConfig {
    DataConfig {
        size: Size { w: 24, h: 16 },
        method,
        pad: PadMode::Reflection,
        bs: 4,
        valid_pct: 0.25,
        seed: 7,
        strict: false,
        max_file_bytes: finetune::data::files::DEFAULT_MAX_FILE_BYTES,
        labels: None,
    }
}

fn load(dir: &Path, c: DataConfig, cache: Option<&CacheConfig>) -> DataLoaders {
    DataLoaders::from_folder_cached(dir, c, cache, &finetune::data::Quiet).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && a.equal(b)
}

/// Same sets, same training batches (for a seeded order and crop positions) and validation batches.
fn assert_same_batches(mem: &DataLoaders, c: &DataLoaders) {
    assert_eq!(mem.classes, c.classes);
    for (a, b) in [(&mem.train, &c.train), (&mem.valid, &c.valid)] {
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.paths, b.paths);
        assert!(!a.is_cached() && b.is_cached());
    }
    assert_eq!(mem.skipped, c.skipped);
    let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _epoch in 0..2 {
        let (o1, o2) = (mem.train_order(&mut r1), c.train_order(&mut r2));
        assert_eq!(o1, o2);
        for idx in &o1 {
            let (x1, y1) = mem.train_batch(idx, &mut r1);
            let (x2, y2) = c.train_batch(idx, &mut r2);
            assert!(
                same(&x1, &x2) && same(&y1, &y2),
                "training batch {idx:?} differs"
            );
        }
    }
    let (v1, v2): (Vec<_>, Vec<_>) = (mem.valid_batches().collect(), c.valid_batches().collect());
    assert_eq!(v1.len(), v2.len());
    for ((x1, y1), (x2, y2)) in v1.iter().zip(&v2) {
        assert!(same(x1, x2) && same(y1, y2), "validation batch differs");
    }
}

#[test]
fn shards_equal_the_in_memory_path_bit_for_bit() {
    let data = tempfile::tempdir().unwrap();
    varied(data.path(), 9);
    let store = tempfile::tempdir().unwrap();
    let cc = CacheConfig::new(store.path().to_path_buf());
    for method in [ResizeMethod::Squish, ResizeMethod::Pad, ResizeMethod::Crop] {
        let mem = load(data.path(), cfg(method), None);
        assert_eq!(
            mem.train.len() + mem.valid.len(),
            18,
            "the broken file is skipped"
        );
        let cold = load(data.path(), cfg(method), Some(&cc));
        let s = cold.cache.clone().unwrap();
        assert_eq!(
            (s.reused, s.decoded, s.shards_written),
            (0, 18, 1),
            "{method:?}"
        );
        assert_same_batches(&mem, &cold);
        let warm = load(data.path(), cfg(method), Some(&cc));
        let s = warm.cache.clone().unwrap();
        assert_eq!(
            (s.reused, s.decoded, s.shards_written),
            (18, 0, 0),
            "{method:?}"
        );
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_same_batches(&mem, &warm);
    }
    // One folder per transform; the crop shard holds each image at its own size (flat array).
    let sets = cache::info(store.path()).unwrap();
    assert_eq!(sets.len(), 3);
    assert!(sets.iter().all(|d| d.images == 18 && d.problem.is_none()));
}

#[test]
fn a_changed_file_invalidates_its_entry_only() {
    let data = tempfile::tempdir().unwrap();
    varied(data.path(), 8);
    let store = tempfile::tempdir().unwrap();
    let cc = CacheConfig::new(store.path().to_path_buf());
    let c = cfg(ResizeMethod::Squish);
    let first = load(data.path(), c.clone(), Some(&cc)).cache.unwrap();
    assert_eq!((first.reused, first.decoded), (0, 16));

    // Rewrite one image with other pixels (and a later mtime, whatever the clock's granularity).
    let changed = data.path().join("dog ü/3.jpg");
    let img = image::RgbImage::from_fn(33, 21, |x, y| image::Rgb([x as u8 * 9, 200, y as u8 * 11]));
    std::fs::write(&changed, jpeg(&img, 80)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&changed)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let again = load(data.path(), c.clone(), Some(&cc));
    let s = again.cache.clone().unwrap();
    assert_eq!((s.reused, s.decoded, s.shards_written), (15, 1, 1));
    assert_same_batches(&load(data.path(), c.clone(), None), &again);

    // A deleted file is dropped without decoding anything.
    std::fs::remove_file(data.path().join("cat/4.png")).unwrap();
    let s = load(data.path(), c.clone(), Some(&cc)).cache.unwrap();
    assert_eq!((s.reused, s.decoded), (15, 0));

    // A new size is another cache; the old one is kept and reused when switching back.
    let bigger = DataConfig {
        size: Size { w: 32, h: 32 },
        ..c.clone()
    };
    let s = load(data.path(), bigger, Some(&cc)).cache.unwrap();
    assert_eq!((s.reused, s.decoded), (0, 15));
    let s = load(data.path(), c, Some(&cc)).cache.unwrap();
    assert_eq!((s.reused, s.decoded), (15, 0));
    assert_eq!(cache::info(store.path()).unwrap().len(), 2);
}

/// (images file, labels file) of every shard in a data set's cache folder.
fn shard_files(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with('s') && n.ends_with(".npy") && !n.ends_with(".labels.npy")
        })
        .map(|p| (p.clone(), p.with_extension("labels.npy")))
        .collect();
    v.sort();
    v
}

#[test]
fn a_truncated_or_corrupt_shard_is_rebuilt_with_a_warning() {
    let data = tempfile::tempdir().unwrap();
    varied(data.path(), 8);
    let store = tempfile::tempdir().unwrap();
    // Shards of 5 images (24×16×3 bytes each), so one damaged shard is a part of the set.
    let cc = CacheConfig {
        shard_bytes: 5 * 24 * 16 * 3,
        ..CacheConfig::new(store.path().to_path_buf())
    };
    let c = cfg(ResizeMethod::Squish);
    let mem = load(data.path(), c.clone(), None);
    let s = load(data.path(), c.clone(), Some(&cc)).cache.unwrap();
    assert_eq!((s.decoded, s.shards_written), (16, 4));
    let shards = shard_files(&s.dir);
    assert_eq!(shards.len(), 4);

    // Cut the second shard short, as an interrupted copy would.
    let (cut, _) = &shards[1];
    let f = std::fs::File::options().write(true).open(cut).unwrap();
    f.set_len(f.metadata().unwrap().len() - 100).unwrap();
    drop(f);
    let again = load(data.path(), c.clone(), Some(&cc));
    let s = again.cache.clone().unwrap();
    assert_eq!(s.rebuilt, vec![cut.clone()]);
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains(&cut.display().to_string()) && s.warnings[0].contains("truncated"),
        "{}",
        s.warnings[0]
    );
    assert_eq!((s.reused, s.decoded), (11, 5));
    assert_same_batches(&mem, &again);

    // A labels file with a damaged header, then an index that is not JSON.
    let (_, labels) = &shard_files(&s.dir)[0];
    let mut bytes = std::fs::read(labels).unwrap();
    bytes[0] = b'X';
    std::fs::write(labels, bytes).unwrap();
    let s = load(data.path(), c.clone(), Some(&cc)).cache.unwrap();
    assert_eq!(s.rebuilt, vec![labels.clone()]);
    assert_eq!(s.decoded, 5);
    std::fs::write(s.dir.join("index.json"), b"{\"format\": 1, \"root\": ").unwrap();
    let again = load(data.path(), c, Some(&cc));
    let s = again.cache.clone().unwrap();
    assert!(s.warnings[0].contains("index.json"), "{:?}", s.warnings);
    assert_eq!((s.reused, s.decoded), (0, 16));
    assert_same_batches(&mem, &again);
    // The shards of the unreadable index were removed, not left as garbage.
    assert_eq!(shard_files(&s.dir).len(), 4);
}

#[test]
fn concurrent_runs_share_one_cache_without_corrupting_it() {
    let data = tempfile::tempdir().unwrap();
    varied(data.path(), 10);
    let store = tempfile::tempdir().unwrap();
    let cc = CacheConfig::new(store.path().to_path_buf());
    let c = cfg(ResizeMethod::Pad);
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (d, cc, c) = (data.path().to_path_buf(), cc.clone(), c.clone());
            std::thread::spawn(move || load(&d, c, Some(&cc)))
        })
        .collect();
    let dls: Vec<DataLoaders> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    let mem = load(data.path(), c, None);
    let decoded: usize = dls.iter().map(|d| d.cache.as_ref().unwrap().decoded).sum();
    assert_eq!(
        decoded, 20,
        "exactly one run decodes; the others wait and reuse"
    );
    for d in &dls {
        assert_same_batches(&mem, d);
    }
    let sets = cache::info(store.path()).unwrap();
    assert_eq!((sets.len(), sets[0].images, sets[0].shards), (1, 20, 1));
}

#[test]
fn numpy_reads_the_shards() {
    let data = tempfile::tempdir().unwrap();
    varied(data.path(), 6);
    let store = tempfile::tempdir().unwrap();
    let cc = CacheConfig::new(store.path().to_path_buf());
    for method in [ResizeMethod::Squish, ResizeMethod::Crop] {
        let dls = load(data.path(), cfg(method), Some(&cc));
        let dir = dls.cache.clone().unwrap().dir;
        // What numpy finds for every cached file: sha256 of its pixels, shape, and its class name.
        let script = r#"
import hashlib, json, os, sys
import numpy as np
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
out = {}
for key, e in idx["entries"].items():
    a = np.load(os.path.join(d, e["shard"] + ".npy"), mmap_mode="r")
    labels = np.load(os.path.join(d, e["shard"] + ".labels.npy"), mmap_mode="r")
    assert a.dtype == np.uint8 and labels.dtype == np.int64, (a.dtype, labels.dtype)
    if a.ndim == 4:
        img = a[e["row"]]
    else:
        n = e["h"] * e["w"] * 3
        img = a[e["offset"]:e["offset"] + n].reshape(e["h"], e["w"], 3)
    out[key] = [hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest(),
                list(img.shape), idx["classes"][int(labels[e["row"]])], a.ndim]
print(json.dumps(out))
"#;
        let o = std::process::Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(&dir)
            .output()
            .expect("run the venv's python");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: BTreeMap<String, (String, Vec<u32>, String, u32)> =
            serde_json::from_slice(&o.stdout).unwrap();
        let mut want = BTreeMap::new();
        for set in [&dls.train, &dls.valid] {
            for i in 0..set.len() {
                let img = set.image(i);
                let key = set.paths[i]
                    .strip_prefix(data.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let class = dls.classes[set.labels[i] as usize].clone();
                let digest: String = sha2::Digest::finalize(
                    <sha2::Sha256 as sha2::Digest>::new_with_prefix(img.as_raw()),
                )
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
                let ndim = if method == ResizeMethod::Crop { 1 } else { 4 };
                want.insert(
                    key,
                    (digest, vec![img.height(), img.width(), 3], class, ndim),
                );
            }
        }
        assert_eq!(got, want, "{method:?}");
        // The reference images themselves equal the in-memory path's.
        let mem = load(data.path(), cfg(method), None);
        for i in 0..mem.train.len() {
            assert_eq!(*mem.train.image(i), *dls.train.image(i));
        }
    }
}

#[test]
fn rank_world_split_is_disjoint_covering_and_equal_length() {
    for n in [0usize, 1, 5, 12, 13, 100, 101] {
        for world in 1..=5 {
            for drop_last in [false, true] {
                let ranks: Vec<Vec<usize>> = (0..world)
                    .map(|r| {
                        RankSplit::new(r, world)
                            .unwrap()
                            .seed(11)
                            .drop_last(drop_last)
                            .indices(n, 3)
                    })
                    .collect();
                let len = ranks[0].len();
                assert!(
                    ranks.iter().all(|r| r.len() == len),
                    "{n} {world}: equal length"
                );
                let mut all: Vec<usize> = ranks.concat();
                assert!(all.iter().all(|&i| i < n));
                all.sort();
                let distinct = {
                    let mut d = all.clone();
                    d.dedup();
                    d
                };
                if drop_last || n % world == 0 {
                    assert_eq!(distinct.len(), all.len(), "{n} {world}: disjoint");
                    assert_eq!(all.len(), n - n % world);
                }
                if !drop_last {
                    assert_eq!(
                        distinct,
                        (0..n).collect::<Vec<_>>(),
                        "{n} {world}: covering"
                    );
                    assert_eq!(len, n.div_ceil(world));
                }
            }
        }
    }
    // Every rank deals from one permutation per epoch; epochs and seeds differ.
    let s = RankSplit::new(0, 3).unwrap().seed(5);
    let order = s.epoch_order(30, 0);
    for r in 0..3 {
        let mine = RankSplit::new(r, 3).unwrap().seed(5).indices(30, 0);
        assert_eq!(
            mine,
            order.iter().copied().skip(r).step_by(3).collect::<Vec<_>>()
        );
    }
    assert_ne!(order, s.epoch_order(30, 1));
    assert_ne!(order, s.seed(6).epoch_order(30, 0));
    assert_ne!(order, (0..30).collect::<Vec<_>>());
}

#[test]
fn unshuffled_split_matches_pytorch_distributed_sampler() {
    let cases: Vec<(usize, usize, bool)> = [(10, 3), (12, 4), (5, 8), (7, 2), (1, 3)]
        .iter()
        .flat_map(|&(n, w)| [(n, w, false), (n, w, true)])
        .collect();
    let script = r#"
import json, sys
from torch.utils.data import DistributedSampler
cases = json.loads(sys.argv[1])
print(json.dumps([[list(DistributedSampler(range(n), num_replicas=w, rank=r, shuffle=False, drop_last=d))
                   for r in range(w)] for n, w, d in cases]))
"#;
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(serde_json::to_string(&cases).unwrap())
        .output()
        .expect("run the venv's python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let torch: Vec<Vec<Vec<usize>>> = serde_json::from_slice(&o.stdout).unwrap();
    for ((n, w, d), want) in cases.iter().zip(torch) {
        let ours: Vec<Vec<usize>> = (0..*w)
            .map(|r| {
                RankSplit::new(r, *w)
                    .unwrap()
                    .shuffle(false)
                    .drop_last(*d)
                    .indices(*n, 0)
            })
            .collect();
        assert_eq!(ours, want, "n {n}, world {w}, drop_last {d}");
    }
}

#[test]
fn same_seed_same_metrics_with_and_without_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 10);
    let store = dir.path().join("cache");
    let train = |out: &str, extra: &[&str]| {
        let mut c = tiny_train_bs(1, 4);
        c.args(["--seed", "3", "--quiet", "--cache-dir"])
            .arg(&store)
            .args(extra)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg(&data);
        let o = run(&mut c);
        assert!(o.status.success(), "{}", o.stderr);
        let csv = std::fs::read_to_string(dir.path().join(out).join("metrics.csv")).unwrap();
        let rows: Vec<String> = csv
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect();
        (rows, o.stderr)
    };
    let (memory, e) = train("memory", &["--no-cache"]);
    assert!(e.contains("decoded into memory"), "{e}");
    assert!(!store.exists(), "--no-cache writes no cache");
    let (cold, e) = train("cold", &[]);
    assert!(e.contains("(0 reused, 20 decoded)"), "{e}");
    // Damage the shard: the warm run names it, decodes again, and still trains the same.
    let sets = cache::info(&store).unwrap();
    let (shard, _) = shard_files(&sets[0].dir).remove(0);
    std::fs::write(&shard, b"\x93NUMPY").unwrap();
    let (rebuilt, e) = train("rebuilt", &[]);
    assert!(
        e.contains(&format!("warning: image cache shard {}", shard.display())),
        "{e}"
    );
    let (warm, e) = train("warm", &[]);
    assert!(e.contains("(20 reused, 0 decoded)"), "{e}");
    assert_eq!(
        memory.len(),
        3,
        "header, frozen and unfrozen rows: {memory:?}"
    );
    for other in [&cold, &rebuilt, &warm] {
        assert_eq!(&memory, other);
    }

    // `cache info` and `cache clear` over the same folder.
    let o = run(bin().args(["cache", "info", "--cache-dir"]).arg(&store));
    assert!(
        o.status.success() && o.stdout.contains("20 images of 2 classes"),
        "{}",
        o.stdout
    );
    let o = run(bin()
        .args(["cache", "clear", "--missing", "--cache-dir"])
        .arg(&store));
    assert!(
        o.stdout.contains("0 cached data set(s) removed"),
        "{}",
        o.stdout
    );
    let o = run(bin()
        .args(["cache", "clear", "--cache-dir"])
        .arg(&store)
        .arg(&data));
    assert!(
        o.stdout.contains("1 cached data set(s) removed"),
        "{}",
        o.stdout
    );
    assert!(cache::info(&store).unwrap().is_empty());
    assert!(
        store.is_dir(),
        "clear removes data sets, never the cache folder itself"
    );
}
