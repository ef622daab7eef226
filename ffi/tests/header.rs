//! The checked-in `include/qpq.h` is what cbindgen makes of the sources now, and it compiles
//! cleanly as C11 and C++17. `QPQ_BLESS=1 cargo test -p qpq-ffi --test header` rewrites it
//! (that is what `gen-header.sh` runs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let config = cbindgen::Config::from_file(dir().join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir())
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn checked_in_header_is_fresh() {
    let path = dir().join("include/qpq.h");
    let fresh = generate();
    if std::env::var_os("QPQ_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(checked_in == fresh, "ffi/include/qpq.h is stale: run ffi/gen-header.sh and commit it");
}

fn compile(compiler: &str, args: &[&str], source: &Path) {
    let out = std::env::temp_dir().join(format!("qpq-header-{}-{compiler}.o", std::process::id()));
    let status = Command::new(compiler)
        .args(args)
        .arg("-I")
        .arg(dir().join("include"))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("{compiler} must be installed: {e}"));
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "{compiler} {args:?} rejects qpq.h");
}

#[test]
fn header_compiles_as_c11_and_cpp17() {
    let tmp = std::env::temp_dir().join(format!("qpq-header-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let body = "#include <qpq.h>\n#include <qpq.h>\nint qpq_header_check(void) { return QPQ_ABI_VERSION == 0 \
                || QPQ_ERROR_UNAUTHORIZED != 2; }\n";
    let c = tmp.join("check.c");
    let cpp = tmp.join("check.cpp");
    std::fs::write(&c, body).unwrap();
    std::fs::write(&cpp, body.replace("(void)", "()")).unwrap();
    compile("gcc", &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"], &c);
    compile("g++", &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"], &cpp);
    let _ = std::fs::remove_dir_all(&tmp);
}
