//! Makes the binary find libtorch by itself and really use CUDA when libtorch has it.
//!
//! torch-sys tells us where libtorch's libraries are (`DEP_TCH_LIBTORCH_LIB`, from its `links`).
//! - rpath to that directory, so users need no LD_LIBRARY_PATH;
//! - libtorch_cuda is linked with `--no-as-needed`: nothing in our code references its symbols, so
//!   the default `--as-needed` drops it and CUDA then never registers (`Cuda::is_available()` false).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" && target_os != "macos" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let dir = std::path::Path::new(&lib);
    if target_os == "linux" && dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
