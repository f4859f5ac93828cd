#!/usr/bin/env bash
# Build the core library, generate the Kotlin and Swift bindings from it,
# compile the Kotlin layer (android/sdk) and its tests with kotlinc, and run
# them on the host JVM against the host-built library and the real relay.
# Installs kotlinc (npm), JNA and JUnit (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    fi
}

KOTLIN_VERSION=2.4.20
tools=$root/target/jvm-tools
kotlin_home=$tools/node_modules/kotlin-compiler
command -v java >/dev/null || apt_install default-jdk-headless
[ -f /usr/share/java/jna.jar ] || apt_install libjna-java
[ -f /usr/share/java/junit4.jar ] || apt_install junit4
if ! grep -qx "$KOTLIN_VERSION" <(node -p "require('$kotlin_home/package.json').version" 2>/dev/null); then
    command -v npm >/dev/null || apt_install npm
    mkdir -p "$tools"
    (cd "$tools" && npm install --no-audit --no-fund --silent "kotlin-compiler@$KOTLIN_VERSION")
fi

echo "== build the library, the relay and the generator"
# The whole workspace with every target: the same features `cargo test
# --workspace` resolved, so after it nothing is rebuilt (building only some
# packages, or `cargo run -p uniffi-bindgen`, resolves other features and
# rebuilds minutes of dependencies).
cargo build --locked --workspace --all-targets
lib=$root/target/debug/libhandoff_ffi.so
bindgen=$root/target/debug/uniffi-bindgen

echo "== generate bindings (Kotlin, Swift)"
rm -rf target/bindings
"$bindgen" generate --no-format --library "$lib" --language kotlin --out-dir target/bindings/kotlin
"$bindgen" generate --no-format --library "$lib" --language swift --out-dir target/bindings/swift
test -s target/bindings/swift/HandoffFFI.swift

echo "== compile the Kotlin layer and its tests"
klib=$kotlin_home/lib
cp_compile=/usr/share/java/jna.jar:/usr/share/java/junit4.jar:$klib/kotlinx-coroutines-core-jvm.jar:$klib/kotlin-test.jar:$klib/kotlin-test-junit.jar
out=$root/target/jvm/classes
rm -rf "$out" && mkdir -p "$out"
"$kotlin_home/bin/kotlinc" -jvm-target 17 -Werror -cp "$cp_compile" -d "$out" \
    target/bindings/kotlin \
    android/sdk/src/main/kotlin \
    android/sdk/src/test/kotlin 2>&1 | grep -v '^warning: unable to find kotlin-stdlib' || true
test -f "$out/app/handoff/sdk/HandoffTest.class"

echo "== run the Kotlin tests on the JVM"
java -Djna.library.path="$root/target/debug" \
    -Dhandoff.relay="$root/target/debug/handoff-server" \
    -cp "$out:$cp_compile:$klib/kotlin-stdlib.jar:/usr/share/java/hamcrest-core.jar" \
    org.junit.runner.JUnitCore app.handoff.sdk.HandoffTest
