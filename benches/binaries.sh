# Sourced by the benchmark scripts: `. benches/binaries.sh [GANTRY_BINARY] -- TOOL...`.
# Moves to the repository root and sets GANTRY (the given binary, else target/release/gantry,
# built if missing), BARE (benches/floor/bare_pingora.rs, built if missing) and NGINX; exits
# naming any of the TOOLs that is not installed. Also defines the helpers of benches/harness.sh.
_given=
if [ "${1:-}" != "--" ] && [ $# -gt 0 ]; then _given=$(realpath -e "$1"); shift; fi
[ "${1:-}" = "--" ] && shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "$_given" ]; then
  GANTRY=$_given
else
  [ -x target/release/gantry ] || cargo build --release
  GANTRY=$PWD/target/release/gantry
fi
[ -x "$GANTRY" ] || { echo "not an executable: $GANTRY" >&2; exit 1; }
[ -x target/release/examples/bare_pingora ] || cargo build --release --example bare_pingora
BARE=$PWD/target/release/examples/bare_pingora
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for _tool in "$@" "$NGINX"; do
  command -v "$_tool" >/dev/null 2>&1 || { echo "missing: $_tool" >&2; exit 1; }
done
unset _given _tool
. benches/harness.sh
