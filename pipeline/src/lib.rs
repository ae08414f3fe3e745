//! dino-stream's data side, free of any deep-learning framework: the Parquet shard format and
//! its manifest, the `ingest` writer, and the streaming multi-crop [`loader`] (epoch order,
//! row-group reader, JPEG decode, DINO augmentations, batch assembly, metrics).

pub mod augment;
pub mod batch;
pub mod dataset;
pub mod eval;
pub mod ingest;
pub mod jpeg;
pub mod loader;
pub mod manifest;
pub mod order;
pub mod rng;
pub mod shard;
pub mod stats;
