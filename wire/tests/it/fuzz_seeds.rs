//! Replays the committed fuzz seed corpus (`wire/fuzz/corpus-seed/<target>/`) and the
//! golden vectors through the fuzz targets' code, so `cargo test` exercises them without a
//! nightly toolchain.

use std::path::Path;

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e == "bin"))
        .collect();
    out.sort();
    out.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn stream_decoder_seeds() {
    let seeds = files(&root().join("fuzz/corpus-seed/stream_decoder"));
    assert!(!seeds.is_empty());
    for seed in &seeds {
        haberci_wire::fuzzing::stream_decoder(seed);
    }
    // Every golden vector as a stream, whole and in 1-, 2- and 3-byte chunks.
    for vector in files(&root().join("tests/vectors")) {
        for chunk in [0u8, 1, 2, 3] {
            let mut input = vec![chunk, 0];
            input.extend_from_slice(&vector);
            haberci_wire::fuzzing::stream_decoder(&input);
        }
    }
}

#[test]
fn frame_to_domain_seeds() {
    let seeds = files(&root().join("fuzz/corpus-seed/frame_to_domain"));
    assert!(!seeds.is_empty());
    for seed in &seeds {
        haberci_wire::fuzzing::frame_to_domain(seed);
    }
}
