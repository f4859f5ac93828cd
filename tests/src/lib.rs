#![doc = include_str!("../README.md")]

/// The 32-byte key the crash writer and the test share.
pub const TEST_KEY: [u8; 32] = [42; 32];
