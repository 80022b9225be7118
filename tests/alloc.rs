//! The binary's allocator replaces malloc for libtorch too, with no LD_PRELOAD or environment
//! variable (src/main.rs says why and what it measured).

mod common;
use common::*;

/// The dynamic linker's own record (LD_DEBUG=bindings, every symbol resolved at load time): libtorch's
/// and c10's allocation calls must bind to the finetune executable, not to glibc.
#[test]
fn libtorch_allocates_through_the_binarys_malloc() {
    if !cfg!(target_os = "linux") {
        return skip(
            "LD_DEBUG bindings are a glibc feature",
            "run the suite on a glibc Linux",
        );
    }
    let o = run(bin()
        .arg("--version")
        .env("LD_DEBUG", "bindings")
        .env("LD_BIND_NOW", "1"));
    assert!(o.status.success(), "{}", o.stderr);
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_finetune"))
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("finetune")
        .to_string();
    let bound_to_exe = |lib: &str, sym: &str| {
        o.stderr.lines().any(|l| {
            l.contains("binding file")
                && l.contains(lib)
                && l.contains(&format!("`{sym}'"))
                && l.split(" to ")
                    .nth(1)
                    .is_some_and(|to| to.contains(&exe) && !to.contains("libc.so"))
        })
    };
    for (lib, sym) in [
        ("libc10.so", "posix_memalign"),
        ("libc10.so", "free"),
        ("libtorch_cpu.so", "malloc"),
        ("libtorch_cpu.so", "free"),
    ] {
        assert!(
            bound_to_exe(lib, sym),
            "{lib}'s `{sym}` is not bound to the finetune executable; bindings seen for it:\n{}",
            o.stderr
                .lines()
                .filter(|l| l.contains(lib) && l.contains(&format!("`{sym}'")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The mapped libraries of this process whose file name starts with `name`.
fn mapped(name: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            std::path::Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(name))
        })
        .map(str::to_string)
        .collect()
}

/// libtorch's CUDA half is not loaded at start-up (on a CPU-only machine it cost 0.19 s and 230 MB
/// before `main`) but on demand: by a device choice other than `cpu`, and only with an NVIDIA
/// driver present. When loaded, it is found through the binary's rpath.
#[test]
fn libtorch_cuda_loads_only_on_demand() {
    if !cfg!(target_os = "linux") {
        return skip(
            "LD_DEBUG=files is a glibc feature",
            "run the suite on a glibc Linux",
        );
    }
    let loaded = |args: &[&str]| {
        let o = run(bin().args(args).env("LD_DEBUG", "files"));
        assert!(o.status.success(), "{args:?}: {}", o.stderr);
        o.stderr.contains("libtorch_cuda.so")
    };
    // (`--help`: `--version` probes CUDA on purpose, loading it where a driver is.)
    assert!(!loaded(&["--help"]), "loaded at start-up");
    let driver = unsafe { !libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY).is_null() };
    let photo = repo().join("assets/sample/test/hat/2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg");
    let weights = reference().join("resnet18.pth");
    for device in ["cpu", "auto"] {
        let args = [
            "classify-imagenet",
            "--arch",
            "resnet18",
            "--weights",
            weights.to_str().unwrap(),
            "--device",
            device,
            photo.to_str().unwrap(),
        ];
        assert_eq!(
            loaded(&args),
            device == "auto" && driver,
            "--device {device}, NVIDIA driver present: {driver}"
        );
    }
    // In this process (linked like the binary): libtorch_cpu is mapped; libtorch_cuda loads from
    // beside it when this libtorch has one.
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let cpu = mapped("libtorch_cpu.so");
    assert!(!cpu.is_empty());
    let has_cuda = std::path::Path::new(&cpu[0])
        .with_file_name("libtorch_cuda.so")
        .exists();
    assert_eq!(finetune::device::load_torch_cuda(), has_cuda);
    assert_eq!(!mapped("libtorch_cuda.so").is_empty(), has_cuda);
}
