//! Regenerates `src/gen/` from `quiver/v1/*.proto` (committed, so a plain
//! build needs no protoc): `cargo run -p quiver-proto --features codegen --bin quiver-proto-gen`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let protos = [
        "ingest.proto",
        "workspace.proto",
        "query.proto",
        "identity.proto",
        "tag.proto",
        "segment.proto",
        "analytics.proto",
    ]
    .map(|p| root.join("quiver/v1").join(p));
    tonic_prost_build::configure()
        .out_dir(root.join("src/gen"))
        .file_descriptor_set_path(root.join("src/gen/quiver_descriptor.bin"))
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &protos, &[root.to_path_buf()])?;
    Ok(())
}
