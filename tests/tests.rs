//! End-to-end tests: the real `quiver` binary on a loopback port, real
//! Delta/Parquet files on disk, clients talking gRPC and Arrow Flight.

mod bad_input;
mod bi;
mod crash;
mod identity;
mod ingest;
mod segments;
mod tags;

/// Points the support code at the binary cargo built for this test run.
fn init() {
    quiver_tests::init(env!("CARGO_BIN_EXE_quiver"));
}
