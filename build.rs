//! Makes the binary find libtorch by itself, and compiles the c10d shim (`csrc/dist_shim.cpp`).
//!
//! torch-sys tells us where libtorch's libraries are (`DEP_TCH_LIBTORCH_LIB`, from its `links`):
//! an rpath to that directory, so users need no LD_LIBRARY_PATH. libtorch_cuda is not linked: the
//! binary loads it at run time when the machine has an NVIDIA driver (`device::load_cuda` says
//! why), found through this same rpath.
//!
//! The shim reaches PyTorch's distributed engine (TCPStore, ProcessGroupGloo) in libtorch_cpu,
//! which is already linked. It needs Gloo's headers, which the torch wheel lacks: Debian's
//! `libgloo-dev` (headers only; nothing links libgloo), or `GLOO_INCLUDE_DIR`. Without them the
//! crate builds without distributed training (`dist::AVAILABLE` is false and `torchrun` runs say
//! how to get it) rather than failing. NCCL needs libtorch_cuda linked, which the CPU build avoids,
//! so it is compiled in only when asked for with `FINETUNE_NCCL=1` on a CUDA machine.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rustc-check-cfg=cfg(finetune_dist)");
    println!("cargo:rustc-check-cfg=cfg(finetune_nccl)");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" && target_os != "macos" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    libtorch_version(Path::new(&lib));
    dist_shim(Path::new(&lib));
}

/// `FINETUNE_LIBTORCH_VERSION` for `finetune --version`: the headers compiled against (torch-sys
/// checks they are the version it binds), read from `TORCH_VERSION_{MAJOR,MINOR,PATCH}`.
fn libtorch_version(lib: &Path) {
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    let header = [
        "torch/headeronly/version.h",
        "torch/csrc/api/include/torch/version.h",
    ]
    .iter()
    .map(|h| include.join(h))
    .find(|h| std::fs::read_to_string(h).is_ok_and(|t| t.contains("TORCH_VERSION_MAJOR")));
    let Some(header) = header else {
        return;
    };
    println!("cargo:rerun-if-changed={}", header.display());
    let text = std::fs::read_to_string(&header).unwrap_or_default();
    let part = |name: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("#define "))
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
    };
    if let (Some(a), Some(b), Some(c)) = (
        part("TORCH_VERSION_MAJOR"),
        part("TORCH_VERSION_MINOR"),
        part("TORCH_VERSION_PATCH"),
    ) {
        println!("cargo:rustc-env=FINETUNE_LIBTORCH_VERSION={a}.{b}.{c}");
    }
}

fn dist_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/dist_shim.cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=FINETUNE_NCCL");
    // Installing libgloo-dev after a build without it rebuilds with distributed training.
    println!("cargo:rerun-if-changed=/usr/include/gloo/algorithm.h");
    let gloo = std::env::var_os("GLOO_INCLUDE_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ])
        .find(|d| d.join("gloo/algorithm.h").is_file());
    let Some(gloo) = gloo else {
        println!(
            "cargo:warning=Gloo headers not found: building without distributed training \
             (apt-get install libgloo-dev, or set GLOO_INCLUDE_DIR, then rebuild)"
        );
        return;
    };
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    let mut b = cc::Build::new();
    b.cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .flag("-O2")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .file("csrc/dist_shim.cpp");
    let nccl = std::env::var("FINETUNE_NCCL").is_ok_and(|v| v == "1")
        && lib.join("libtorch_cuda.so").is_file();
    if nccl {
        b.define("FT_NCCL", None)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-cfg=finetune_nccl");
    }
    b.compile("ft_dist");
    println!("cargo:rustc-cfg=finetune_dist");
}
