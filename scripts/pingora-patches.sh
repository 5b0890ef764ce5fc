#!/usr/bin/env bash
# Rebuilds third_party/pingora-core from a Pingora release and Gantry's patches:
#
#   scripts/pingora-patches.sh 0.9.1
#
# Downloads pingora-core VERSION from crates.io, unpacks it in place of third_party/pingora-core
# and applies third_party/patches/pingora-core-*.patch in order (each must apply cleanly). Then
# set the pingora version in Cargo.toml to match, build, and re-measure each patch's gain
# (third_party/README.md) before keeping it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/pingora-patches.sh PINGORA_VERSION}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL "https://static.crates.io/crates/pingora-core/pingora-core-$version.crate" \
  | tar -xz -C "$work"
rm -f "$work/pingora-core-$version/Cargo.lock"
for patch in third_party/patches/pingora-core-*.patch; do
  echo "applying $patch"
  patch -d "$work/pingora-core-$version" -p1 --forward --no-backup-if-mismatch < "$patch"
done
rm -rf third_party/pingora-core
mv "$work/pingora-core-$version" third_party/pingora-core
echo "third_party/pingora-core is pingora-core $version with $(ls third_party/patches/pingora-core-*.patch | wc -l) patch(es)"
