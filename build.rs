//! Makes the binary find libtorch by itself.
//!
//! torch-sys tells us where libtorch's libraries are (`DEP_TCH_LIBTORCH_LIB`, from its `links`):
//! an rpath to that directory, so users need no LD_LIBRARY_PATH. libtorch_cuda is not linked: the
//! binary loads it at run time when the machine has an NVIDIA driver (`device::load_cuda` says
//! why), found through this same rpath.

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
}
