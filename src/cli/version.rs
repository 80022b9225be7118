//! `finetune --version`: the version, and the libtorch and CUDA it runs on, so a bug report (or a
//! user wondering why no GPU is used) starts from facts. clap's own flag prints a fixed string;
//! this one probes the runtime, which only `--version` alone pays for.

use std::ffi::OsString;

/// Whether the command line is just `finetune --version` (or `-V`).
pub fn asked(argv: &[OsString]) -> bool {
    argv.len() == 2 && (argv[1] == "--version" || argv[1] == "-V")
}

pub fn text() -> String {
    let rt = finetune::device::runtime();
    let path = rt
        .libtorch_path
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    let cuda = match rt.cuda {
        Ok(n) => format!("usable, {n} device(s)"),
        Err(why) => format!("not usable ({why})"),
    };
    format!(
        "finetune {}\nlibtorch {}{path}\nCUDA: {cuda}\n",
        env!("CARGO_PKG_VERSION"),
        rt.libtorch
    )
}
