//! Seed corpora of the qpq-proto fuzz targets (`proto/fuzz/corpus/<target>/`), written from
//! the golden values in `golden/mod.rs`. Regenerate after a wire change with
//! `cargo test -p qpq-proto --test fuzz_corpus -- --ignored` and commit the result.
#![allow(clippy::unwrap_used)]

mod golden;

use std::path::{Path, PathBuf};

use qpq_proto::MAX_PAYLOAD;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn write_all(target: &str, files: Vec<(String, Vec<u8>)>) {
    let dir = corpus_dir(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
#[ignore = "writes the seed corpora; run by hand after a wire change"]
fn write_seed_corpora() {
    // frame_decode: 4-byte big-endian caller limit, then the frame.
    let mut frames = Vec::new();
    for (i, (kind, frame)) in golden::frames().into_iter().enumerate() {
        for (tag, limit) in [("max", MAX_PAYLOAD as u32), ("small", 64u32)] {
            if tag == "small" && i % 3 != 0 {
                continue;
            }
            let mut input = limit.to_be_bytes().to_vec();
            input.extend_from_slice(&frame);
            frames.push((format!("{i:02}-{kind}-{tag}"), input));
        }
    }
    write_all("frame_decode", frames);

    // message_decode: selector byte (index in the target's list), then the encoding.
    let list = golden::fuzz_message_list();
    let mut messages = Vec::new();
    for (name, encoding) in golden::messages() {
        let index = list.iter().position(|n| n == name).unwrap();
        let mut input = vec![u8::try_from(index).unwrap()];
        input.extend_from_slice(&encoding);
        messages.push((name.to_string(), input));
    }
    write_all("message_decode", messages);
}

#[test]
fn committed_corpora_are_small() {
    for target in ["frame_decode", "message_decode"] {
        let dir = corpus_dir(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let sizes: Vec<u64> = entries
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect();
        assert!(sizes.len() <= 50, "{target}: {} files", sizes.len());
        assert!(
            sizes.iter().sum::<u64>() <= 200 * 1024,
            "{target} over 200 KB"
        );
    }
}
