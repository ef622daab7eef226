//! `uniffi-bindgen`: UniFFI's command line, pinned to the workspace's uniffi version so the
//! generated Kotlin and Swift always match the scaffolding compiled into `qpq_uniffi`.
//! Run it through `bindings/uniffi/generate.sh`, never with the library in the same cargo
//! command (that bloated the library 6x).

fn main() {
    uniffi::uniffi_bindgen_main()
}
