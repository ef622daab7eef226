//! The "surface covers core" check: every public method of `qpq_core::Client` (the `debug_*`
//! test hooks excepted) has an export of the same name in `qpq-uniffi`, and nothing is
//! exported under a name core does not have. Reads both sources, so a method added to core
//! without an export fails here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

/// Names of the `pub fn`s inside `impl <ty> {` blocks of `src`.
fn pub_fns(src: &str, ty: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    let mut depth = 0i32;
    let header = format!("impl {ty} {{");
    for line in src.lines() {
        let t = line.trim();
        if !inside && t == header {
            inside = true;
            depth = 0;
        }
        if !inside {
            continue;
        }
        if let Some(rest) = t.strip_prefix("pub fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
        depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
        if depth == 0 && t.ends_with('}') {
            inside = false;
        }
    }
    out
}

#[test]
fn every_public_client_method_of_core_is_exported() {
    let root = env!("CARGO_MANIFEST_DIR");
    let core_src =
        std::fs::read_to_string(format!("{root}/../../core/client/src/client.rs")).unwrap();
    let ours = std::fs::read_to_string(format!("{root}/src/client.rs")).unwrap();
    let core: BTreeSet<String> = pub_fns(&core_src, "Client")
        .into_iter()
        .filter(|n| !n.starts_with("debug_"))
        .collect();
    let exported = pub_fns(&ours, "Client");
    assert!(
        core.len() >= 30,
        "core's Client methods were not found: {core:?}"
    );
    let missing: Vec<_> = core.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "core Client methods without a UniFFI export: {missing:?}"
    );
    let extra: Vec<_> = exported.difference(&core).collect();
    assert!(
        extra.is_empty(),
        "exports that core's Client does not have: {extra:?}"
    );
    let sub_core = pub_fns(&core_src, "Subscription");
    let sub_ours = pub_fns(&ours, "Subscription");
    assert_eq!(sub_core, sub_ours, "Subscription methods");
}
