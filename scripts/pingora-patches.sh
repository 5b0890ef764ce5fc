#!/usr/bin/env bash
# Rebuilds the patched Pingora crates in third_party/ from a Pingora release and Gantry's
# patches:
#
#   scripts/pingora-patches.sh 0.9.1
#
# For each crate that has patches (third_party/patches/CRATE-NNNN-*.patch: pingora-core,
# pingora-http), downloads CRATE VERSION from crates.io, applies its patches in order (each must
# apply cleanly) and puts the result in place of third_party/CRATE. Then set the pingora version
# in Cargo.toml to match, build, and re-measure each patch's gain (third_party/README.md) before
# keeping it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/pingora-patches.sh PINGORA_VERSION}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crates=$(ls third_party/patches/*.patch | sed -E 's|.*/(.*)-[0-9]{4}-.*|\1|' | sort -u)
for crate in $crates; do
  curl -fsSL "https://static.crates.io/crates/$crate/$crate-$version.crate" | tar -xz -C "$work"
  rm -f "$work/$crate-$version/Cargo.lock" "$work/$crate-$version/.cargo-ok"
  for patch in third_party/patches/"$crate"-[0-9][0-9][0-9][0-9]-*.patch; do
    echo "applying $patch"
    patch -d "$work/$crate-$version" -p1 --forward --no-backup-if-mismatch < "$patch"
  done
  rm -rf "third_party/$crate"
  mv "$work/$crate-$version" "third_party/$crate"
  echo "third_party/$crate is $crate $version with $(ls third_party/patches/"$crate"-*.patch | wc -l) patch(es)"
done
