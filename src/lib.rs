//! dino-stream: DINO self-supervised pre-training of Vision Transformers, fed by a streaming
//! multi-crop pipeline (the `dino-pipeline` crate).

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod device;
pub mod eval;
pub mod fused;
pub mod images;
pub mod interop;
pub mod loss;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod precision;
pub mod schedule;
pub mod train;
