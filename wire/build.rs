//! Compiles `proto/haberci/v1/*.proto` with protox (pure Rust: no system `protoc`) and
//! generates prost types into `OUT_DIR`.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "haberci/v1/common.proto",
    "haberci/v1/client.proto",
    "haberci/v1/server.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`, so decoding from a `Bytes` frame slices ids
        // out of it instead of allocating a Vec per id.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
