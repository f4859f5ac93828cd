//! End-to-end tests: the real `handoff-server` binary on 127.0.0.1, real
//! encrypted device stores syncing through it with the core's engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod bad_input;
mod crafted;
#[path = "../../../core/tests/it/crafting.rs"]
mod crafting;
mod harness;
mod load;
mod proxy;
mod redaction;
mod restore;
mod storage;
mod sync;
mod tls;
mod varied;
mod wire;
