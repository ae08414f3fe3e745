//! The integration tests of dino-pipeline, as one binary. The sample-photo helpers and the
//! hostile JPEG corpus are the workspace's (`tests/common/`).

#[path = "../../tests/common/corrupt.rs"]
mod corrupt;
#[path = "../../tests/common/data.rs"]
mod data;

mod augment_parity;
mod jpeg;
mod loader;
