//! Cross-process tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod crash;
mod first_open;
