#!/usr/bin/env bash
# Build the Rust core for Apple platforms and package it for Package.swift:
#   build/HandoffFFIC.xcframework  (static libraries + the C header/modulemap)
#   Sources/HandoffFFI/HandoffFFI.swift  (generated bindings)
# Needs macOS with Xcode and the rustup targets below. Never run on the
# project's Linux machines (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin)
for t in "${targets[@]}"; do
    rustup target add "$t"
    cargo rustc --locked --release -p handoff-ffi --lib --crate-type staticlib --target "$t"
done

# Bindings come from the host build of the same source.
cargo build --locked --release -p handoff-ffi
gen=$root/target/bindings/swift
rm -rf "$gen"
cargo uniffi-bindgen generate --library target/release/libhandoff_ffi.dylib --language swift --out-dir "$gen"
cp "$gen/HandoffFFI.swift" ios/Sources/HandoffFFI/

headers=$root/target/ios-headers
rm -rf "$headers" && mkdir -p "$headers"
cp "$gen/HandoffFFIC.h" "$headers/"
cp "$gen/HandoffFFIC.modulemap" "$headers/module.modulemap"

# The simulator slices share one fat library.
sim=$root/target/ios-sim/libhandoff_ffi.a
mkdir -p "$(dirname "$sim")"
lipo -create target/aarch64-apple-ios-sim/release/libhandoff_ffi.a \
    target/x86_64-apple-ios/release/libhandoff_ffi.a -output "$sim"

rm -rf ios/build/HandoffFFIC.xcframework
xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/libhandoff_ffi.a -headers "$headers" \
    -library "$sim" -headers "$headers" \
    -library target/aarch64-apple-darwin/release/libhandoff_ffi.a -headers "$headers" \
    -output ios/build/HandoffFFIC.xcframework
echo "built ios/build/HandoffFFIC.xcframework"
