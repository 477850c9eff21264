#!/usr/bin/env bash
# Installs, from Debian's packages, what `make arm64` needs to build the
# Graviton artifact and run it on an x86_64 machine:
#   - rustc-web / cargo-web: a Rust whose aarch64 standard library Debian
#     ships (libstd-rust-web-dev:arm64); rustup cannot add a target offline;
#   - libc6:arm64 (pulled in by that standard library): the loader and libc
#     the emulated binary runs on, one glibc build, at / where the binary
#     looks for them;
#   - qemu-user-static: runs the aarch64 binary.
# zig, which links the artifact as `cargo lambda` does for users, comes with
# cargo-lambda in .venv. Does nothing when everything is already there.
set -euo pipefail

present() {
  [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] &&
    [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ] &&
    [ -e /lib/ld-linux-aarch64.so.1 ] &&
    command -v qemu-aarch64-static > /dev/null
}

if present; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-arm64-toolchain: needs root for apt-get (or install these yourself):" >&2
  echo "  dpkg --add-architecture arm64 && apt-get update" >&2
  echo "  apt-get install rustc-web cargo-web libstd-rust-web-dev:arm64 qemu-user-static" >&2
  exit 1
fi

dpkg --add-architecture arm64
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  rustc-web cargo-web libstd-rust-web-dev:arm64 qemu-user-static

present
