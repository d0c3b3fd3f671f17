#!/usr/bin/env bash
# Start the services the sandbox tests need: a Docker engine and bubblewrap. Idempotent, run as root.
# Offline-friendly: only Debian packages are fetched; no image is ever pulled (the tests build one from
# an empty tar and bind-mount the host's Python).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
  echo "ci_services.sh: must run as root (installs packages, starts dockerd)" >&2
  exit 1
fi

# Install only what is missing; `apt-get update` only when something is.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# vfs: no overlayfs needed inside a container/VM; no iptables/bridge: sandboxes use --network none anyway.
if ! docker info >/dev/null 2>&1; then
  setsid nohup dockerd --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
    >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi

if ! docker info >/dev/null 2>&1; then
  echo "ci_services.sh: docker engine did not answer within 60 s; see /tmp/dockerd.log:" >&2
  tail -n 20 /tmp/dockerd.log >&2 || true
  exit 1
fi
echo "ci_services.sh: docker $(docker version --format '{{.Server.Version}}') and $(bwrap --version) ready" >&2
