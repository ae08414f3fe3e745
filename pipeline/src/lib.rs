//! dino-stream's data side, free of any deep-learning framework: the Parquet shard format and
//! its manifest, the `ingest` writer, JPEG decoding, and the seeded randomness that fixes
//! shard layouts and epoch orders.

pub mod augment;
pub mod ingest;
pub mod jpeg;
pub mod manifest;
pub mod rng;
pub mod shard;
