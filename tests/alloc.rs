//! The binary's allocator replaces malloc for libtorch too, with no LD_PRELOAD or environment
//! variable (src/main.rs says why and what it measured).

mod common;
use common::*;

/// The dynamic linker's own record (LD_DEBUG=bindings, every symbol resolved at load time): libtorch's
/// and c10's allocation calls must bind to the finetune executable, not to glibc.
#[test]
fn libtorch_allocates_through_the_binarys_malloc() {
    if !cfg!(target_os = "linux") {
        return skip("LD_DEBUG bindings are a glibc feature");
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
