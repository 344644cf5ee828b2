//! # quiver-proto
//!
//! Quiver's gRPC API, `quiver.v1`: the `.proto` files under `quiver/v1/` and
//! the code tonic-build generated from them, committed in `src/gen/` so that a
//! plain build needs no protoc. Regenerate after editing a `.proto`:
//!
//! ```text
//! cargo run -p quiver-proto --features codegen --bin quiver-proto-gen
//! ```

/// `quiver.v1`: messages, clients and servers.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!("gen/quiver.v1.rs");
}

/// The encoded `FileDescriptorSet` of every `quiver.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/quiver_descriptor.bin");
