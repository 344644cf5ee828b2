//! End-to-end tests: the real `quiver` binary on a loopback port, real
//! Delta/Parquet files on disk, clients talking gRPC and Arrow Flight.

mod bad_input;
mod crash;
mod ingest;
