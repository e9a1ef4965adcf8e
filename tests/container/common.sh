# shellcheck shell=bash disable=SC2034,SC2154  # what it sets is used, and what it uses set, by the sourcing script
# Sourced by test-container.sh and test-hpc.sh (after setting `name`):
# the settings and helpers both share, and the check that they can run
# here. Needs root and mount namespaces; without them a script prints
# "SKIPPED: <reason>" and exits 0, or fails under CI=true (a skipped test
# must not pass CI). `root_for` says what root is needed for.

# the make runs are the script's own, whatever make started it
unset MAKEFLAGS MAKELEVEL MFLAGS MAKEOVERRIDES

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
here=$repo/tests/container
python=${PYTHON3:-python3}
start=$SECONDS

skip() {
  if [ "${CI:-}" = true ]; then
    echo "$name: FAILED: cannot run here (CI=true: a skip is a failure): $*" >&2
    exit 1
  fi
  echo "SKIPPED: $name: $*"
  exit 0
}
fail() { echo "$name: FAILED: $*" >&2; exit 1; }
step() { echo "$name: [$((SECONDS - start)) s] $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root ($root_for)"
unshare --mount --propagation private true 2>/dev/null ||
  skip "cannot make a private mount namespace here (unshare --mount failed)"
