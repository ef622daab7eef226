//! Gives the shared library a versioned soname: `libqpq.so.0` (the ABI's major version).
//! A removal from `abi/symbols.txt` bumps it (see the changelog).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libqpq.so.0");
    }
    // `cfg(cbindgen)` is never set when compiling: it hides `repr(transparent)` from cbindgen.
    println!("cargo::rustc-check-cfg=cfg(cbindgen)");
    println!("cargo:rerun-if-changed=build.rs");
}
