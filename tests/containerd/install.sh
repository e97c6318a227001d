#!/usr/bin/env bash
# Builds the real containerd, ctr, its runc shim and crictl the tests run, with `go install` from the Go module
# proxy, pinned, into target/tools/<name>-<version>/ (kept between runs: each build takes a few
# minutes on two cores). Prints nothing when everything is already there.
#
# The versions: the newest containerd 2.2.x and 2.4.x the module proxy serves, and cri-tools.
# nerdctl (github.com/containerd/nerdctl/v2) is not served by the module proxy here (403), so it
# is not part of the matrix; see README "containerd clients".
set -euo pipefail
cd "$(dirname "$0")/../.."
CONTAINERD_VERSIONS="${CONTAINERD_VERSIONS:-v2.2.9 v2.4.2}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
tools="${CARGO_TARGET_DIR:-target}/tools"
# Go's official install location, in case PATH does not name it.
[ -x /usr/local/go/bin/go ] && export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
  echo "go is missing: install Go >= 1.24 (containerd 2.4 needs it) and re-run" >&2
  exit 1
fi
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
for v in $CONTAINERD_VERSIONS; do
  dir="$tools/containerd-$v"
  if [ ! -x "$dir/containerd" ] || [ ! -x "$dir/ctr" ] || [ ! -x "$dir/containerd-shim-runc-v2" ]; then
    echo "building containerd $v (go install, a few minutes)" >&2
    # The shim runs containers with Debian's runc (the revocation tests start and stop them).
    GOBIN="$PWD/$dir" go install "github.com/containerd/containerd/v2/cmd/containerd@$v" "github.com/containerd/containerd/v2/cmd/ctr@$v" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$v"
  fi
done
dir="$tools/crictl-$CRICTL_VERSION"
if [ ! -x "$dir/crictl" ]; then
  echo "building crictl $CRICTL_VERSION (go install)" >&2
  GOBIN="$PWD/$dir" go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi
