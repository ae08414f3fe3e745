//! The integration tests of dino-stream, as one binary: every test binary links all of Burn,
//! so one binary instead of one per file saves a link and a compile of the shared helpers
//! each. Filter by module: `tools/test.sh train::`.

mod common;
mod eval;
mod fused;
mod hostile;
mod ingest;
mod model;
mod parallel;
mod resnet;
mod train;
