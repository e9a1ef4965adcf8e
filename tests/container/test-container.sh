#!/usr/bin/env bash
# make test-container: build the image from singularity/icf.def the way
# `apptainer build` does (tests/container/build.py: debootstrap, %files,
# %post in a chroot, %environment, %runscript, %test; cached), then run the
# pipeline through its runscript as a cluster job would (tests/container/icf-run:
# a private mount namespace, the image read-only, the same --bind list as
# singularity/slurm-visit-array.sh, an unprivileged user, no HOME, no git
# identity), and check that two visits come out byte-identical to a run on
# the host (the checkout's venv) and that verify_visit and `make verify`
# agree in the container.
#
# Settings (environment): ICF_CONTAINER_CACHE and ICF_DEBIAN_MIRROR (see
# build-image.sh), ICF_RUN_UID/ICF_RUN_GID (who runs the tools in the
# container; default 65534, nobody).
# Needs root and mount namespaces; without them it prints "SKIPPED: <reason>"
# and exits 0, or fails under CI=true (a skipped test must not pass CI).
set -euo pipefail
name=test-container
root_for="debootstrap, chroot and mounts, as apptainer build does"
# shellcheck source=tests/container/common.sh source-path=SCRIPTDIR/../..
. "$(dirname -- "$0")/common.sh"
trap 'echo "test-container: line $LINENO exited $?" >&2' ERR
trap 'status=$?; [ "$status" -eq 0 ] || echo "test-container: FAILED (exit $status)" >&2' EXIT
step "building the image (tests/container/build-image.sh)"
build_start=$SECONDS
image=$("$here/build-image.sh")
build_seconds=$((SECONDS - build_start))
step "image: $image (ready in $build_seconds s)"

work=$(mktemp -d /tmp/icf-test-container.XXXXXX)
cleanup() {
  local status=$?
  rm -rf -- "$work"
  [ "$status" -eq 0 ] || echo "test-container: FAILED (exit $status)" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chmod 755 "$work"

# every command in the container: no HOME, no git identity, nothing but PATH
# from this shell; the same binds as the SLURM script: store and input
in_container() {
  (cd "$work" && timeout 900 env -i PATH="$PATH" ${ICF_RUN_UID:+ICF_RUN_UID="$ICF_RUN_UID"} \
    ${ICF_RUN_GID:+ICF_RUN_GID="$ICF_RUN_GID"} "$here/icf-run" "$@")
}

step "the image's Python packages against requirements.txt"
in_container exec "$image" /opt/venv/bin/python -m pip freeze --all --no-cache-dir --disable-pip-version-check > "$work/freeze.txt"
"$python" "$here/compare.py" pins "$repo/requirements.txt" "$work/freeze.txt"

# --- two visits through the container ---------------------------------------------------
store=$work/store
mkdir "$store"
chown "${ICF_RUN_UID:-65534}:${ICF_RUN_GID:-${ICF_RUN_UID:-65534}}" "$store"
visits=(v1 v2)
inputs=("$repo/tests/data/sample-visit" "$repo/tests/data/vendors/siemens")
container_start=$SECONDS
for i in "${!visits[@]}"; do
  visit=${visits[$i]} input=${inputs[$i]}
  step "container: make ... VISIT=$visit INPUT=${input#"$repo/"} catalog"
  in_container run --bind "$store:$store,$input:$input:ro" "$image" make \
    "STORE=$store" STUDY=s "VISIT=$visit" "INPUT=$input" catalog
done
for visit in "${visits[@]}"; do
  in_container run --bind "$store:$store" "$image" verify_visit -o "$store" --id s "$visit"
done
in_container run --bind "$store:$store" "$image" make "STORE=$store" STUDY=s verify
container_seconds=$((SECONDS - container_start))

# --- the same on the host, at the same store path --------------------------------------
mv "$store" "$work/container-store"
mkdir "$store"
host_start=$SECONDS
for i in "${!visits[@]}"; do
  visit=${visits[$i]} input=${inputs[$i]}
  step "host: make ... VISIT=$visit catalog"
  (cd "$work" && timeout 900 make -s -f "$repo/Makefile" "STORE=$store" STUDY=s "VISIT=$visit" "INPUT=$input" \
    catalog >/dev/null)
done
host_seconds=$((SECONDS - host_start))

step "comparing the container's store with the host's"
"$python" "$here/compare.py" stores "$store" "$work/container-store" s "${visits[@]}"

if grep -F -- "$image" /proc/self/mountinfo >/dev/null; then
  fail "a mount of the image is left in the host's mount namespace"
fi
echo "test-container: image $build_seconds s, container pipeline $container_seconds s, host pipeline $host_seconds s," \
  "total $((SECONDS - start)) s"
echo "test-container: passed"
