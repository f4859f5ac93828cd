//! handoff-core's integration tests: one binary, one module per concern.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod clinic;
mod crafting;
mod encryption;
mod folding;
mod merging;
mod properties;
mod rules;
mod schema;
mod storage;
mod views;
