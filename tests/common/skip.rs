//! The one way a test skips, shared by the integration tests (tests/common) and the library's unit
//! tests (src/lib.rs includes this file): so no skip anywhere goes unseen.

use std::io::Write;
use std::path::PathBuf;

/// Every skip goes through here, so none goes unseen: it is appended to `target/test-skips.tsv`
/// (test, reason, how to enable), which `make test` sums up at the end. Under
/// `FINETUNE_REQUIRE_ALL=1` (CI) a skip is a failure instead: CI installs everything the suite needs.
pub fn skip(why: &str, enable: &str) {
    let test = format!(
        "{}::{}",
        env!("CARGO_CRATE_NAME"),
        std::thread::current().name().unwrap_or("?")
    );
    if std::env::var("FINETUNE_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} would skip ({why}), and FINETUNE_REQUIRE_ALL=1 allows no skip; to run it: {enable}");
    }
    eprintln!("SKIPPED: {why} (to run it: {enable})");
    println!("SKIPPED: {why} (to run it: {enable})");
    let log = std::env::var_os("FINETUNE_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-skips.tsv"));
    let line = format!("{test}\t{why}\t{enable}\n").replace(['\r'], " ");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        eprintln!(
            "warning: could not record the skip in {}: {e}",
            log.display()
        );
    }
}
