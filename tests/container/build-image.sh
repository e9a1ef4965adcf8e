#!/usr/bin/env bash
# The icf-utils image for make test-container and make test-hpc: builds
# singularity/icf.def with tests/container/build.py (cached; see there) and
# prints the image directory. Installs debootstrap if it is missing.
#
# Settings (environment): ICF_CONTAINER_CACHE (the cache, default
# /var/cache/icf-utils/container), ICF_DEBIAN_MIRROR (the recipe's mirror
# build argument; default: the recipe's, http://deb.debian.org/debian).
# pip in %post trusts what the host trusts: the host's CA bundle is bound
# read-only into %post and named by PIP_CERT, as
#   APPTAINERENV_PIP_CERT=$ca apptainer build --bind $ca:$ca:ro ...
# would do (a site behind a TLS-intercepting proxy needs that; elsewhere it
# changes nothing). Needs root, as apptainer build with debootstrap does.
set -euo pipefail

repo=$(cd -- "$(dirname -- "$0")/../.." && pwd -P)

if ! command -v debootstrap >/dev/null; then
  echo "build-image: installing debootstrap (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >&2
  timeout 600 apt-get install -y -qq debootstrap >&2
fi

options=()
if [ -n "${ICF_DEBIAN_MIRROR:-}" ]; then
  options+=(--build-arg "mirror=$ICF_DEBIAN_MIRROR")
fi
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
  options+=(--bind "$ca:$ca:ro")
  export APPTAINERENV_PIP_CERT=$ca
fi
cd "$repo"
echo "build-image: python3 tests/container/build.py ${options[*]} singularity/icf.def" >&2
exec timeout 2400 "${PYTHON3:-python3}" tests/container/build.py "${options[@]}" singularity/icf.def
