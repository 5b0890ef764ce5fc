#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing Gantry, or says exactly how to.
#   cmake: Pingora's zlib-ng (libz-ng-sys) is built with it.
#   redis-server: the Redis rate-limit tests start a real one per test.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)


if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "gantry: installing missing build tools: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "gantry: please install ${missing[*]} first, e.g.: sudo apt-get install -y ${missing[*]}" >&2
  echo "        (macOS: brew install ${missing[*]})" >&2
  exit 1
fi
