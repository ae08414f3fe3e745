//! dino-stream: DINO self-supervised pre-training of Vision Transformers, fed by a streaming
//! multi-crop pipeline (the `dino-pipeline` crate).

pub mod cli;
