#!/usr/bin/env bash
# Every test Handoff has: formatting, lints, the test suites of every crate
# (rules, views, merging, storage, encryption, the 1,000-case convergence
# property test, the 1,000-kill crash test, the relay end to end), then the
# generated Kotlin and Swift bindings and the Kotlin layer's tests on the JVM.
# Installs what it needs when missing. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    fi
}

# The encryption test checks the store file against an independent, plain
# SQLite: Python's sqlite3 module. SQLCipher's vendored OpenSSL builds with perl and make.
command -v python3 >/dev/null || apt_install python3
# Debian's perl-base gives a `perl` without the modules OpenSSL's
# Configure loads (FindBin, IPC::Cmd): those come with the full perl.
perl -MFindBin -MIPC::Cmd -e1 2>/dev/null || apt_install perl
command -v make >/dev/null || apt_install make
command -v cc >/dev/null || apt_install gcc
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc -D warnings (the docs' links resolve)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
step "cargo test"
cargo test --workspace --locked
step "bindings: generate Kotlin + Swift, Kotlin tests on the JVM"
bash android/sdk/test-on-jvm.sh
