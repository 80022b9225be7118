//! Links the extension against libtorch so that it uses the torch wheel's copy at run time.
//!
//! - rpath `$ORIGIN/../torch/lib`: installed as `site-packages/finetune/_finetune*.so`, the module
//!   finds `site-packages/torch/lib` even when imported before `torch` (the package imports `torch`
//!   first anyway, and the loader then reuses the libraries already in the process).
//! - libtorch_cuda with `--no-as-needed`, as in the main build.rs: nothing references its symbols,
//!   and without it CUDA would never register when torch itself was not imported.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
