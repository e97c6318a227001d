#!/usr/bin/env bash
# Builds the Kubernetes components the admission tests run, pinned, into
# target/tools/<name>-<version>/ (kept between runs; prints nothing when all are there):
# - kube-apiserver, kubectl and the kubelet v1.37.2 from the wrapper module tests/kubernetes/tools (go.mod
#   says why a wrapper: about 12 minutes cold on two cores, the longest build of the suite);
# - etcd 3.4 from Debian's etcd-server package, extracted, not installed (it is a system
#   service there);
# - helm v3.22.0 (the chart's lint and template), Gatekeeper v3.23.1 and the Ratify v1.4.6 CLI
#   with `go install` (Ratify needs GONOSUMDB
#   for one frameworks pseudo-version the checksum database does not serve through the proxy;
#   its hash is the one in Ratify's own go.sum, which go still checks).
# Builds run one at a time under `nice`, so the Rust build beside them keeps a core.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
tools="${CARGO_TARGET_DIR:-target}/tools"
case "$tools" in /*) ;; *) tools="$root/$tools" ;; esac
K8S_VERSION=v1.37.2
GATEKEEPER_VERSION=v3.23.1
RATIFY_VERSION=v1.4.6
HELM_VERSION=v3.22.0
[ -x /usr/local/go/bin/go ] && export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
  echo "go is missing: install Go >= 1.26 (kube-apiserver $K8S_VERSION and Gatekeeper need it) and re-run" >&2
  exit 1
fi
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 GOWORK=off

dir="$tools/kubernetes-$K8S_VERSION"
if [ ! -x "$dir/kube-apiserver" ] || [ ! -x "$dir/kubectl" ]; then
  echo "building kube-apiserver and kubectl $K8S_VERSION (about 12 minutes cold)" >&2
  mkdir -p "$dir"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/component-base/version.buildDate=2026-01-01T00:00:00Z"
  (cd tests/kubernetes/tools &&
    nice -n 10 go build -mod=mod -trimpath -ldflags "$ldflags" -o "$dir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
    nice -n 10 go build -mod=mod -trimpath -ldflags "$ldflags" -o "$dir/kubectl" k8s.io/kubernetes/cmd/kubectl)
fi
# The kubelet of the revocation test (tests/kubelet), from the same module: most of it is
# already built by then (a few minutes more).
if [ ! -x "$dir/kubelet" ]; then
  echo "building the kubelet $K8S_VERSION" >&2
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  (cd tests/kubernetes/tools &&
    nice -n 10 go build -mod=mod -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" -o "$dir/kubelet" k8s.io/kubernetes/cmd/kubelet)
fi

dir="$tools/etcd-debian"
if [ ! -x "$dir/usr/bin/etcd" ]; then
  echo "extracting etcd from Debian's etcd-server package" >&2
  mkdir -p "$dir"
  (cd "$dir" && { apt-get download etcd-server >/dev/null 2>&1 || { apt-get update -qq && apt-get download etcd-server; }; } &&
    dpkg-deb -x etcd-server_*.deb . && rm -f etcd-server_*.deb)
fi

dir="$tools/helm-$HELM_VERSION"
if [ ! -x "$dir/helm" ]; then
  echo "building helm $HELM_VERSION (go install, about 2 minutes)" >&2
  GOBIN="$dir" nice -n 10 go install -trimpath -ldflags '-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

dir="$tools/gatekeeper-$GATEKEEPER_VERSION"
if [ ! -x "$dir/gatekeeper" ]; then
  echo "building Gatekeeper $GATEKEEPER_VERSION (go install, about 5 minutes)" >&2
  GOBIN="$dir" nice -n 10 go install -trimpath -ldflags '-s -w' "github.com/open-policy-agent/gatekeeper/v3@$GATEKEEPER_VERSION"
fi
# Gatekeeper's CRDs, cut from the deploy manifest its module carries (the tests apply them).
if [ ! -s "$dir/gatekeeper.yaml" ]; then
  src=$(go mod download -json "github.com/open-policy-agent/gatekeeper/v3@$GATEKEEPER_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  cp "$src/deploy/gatekeeper.yaml" "$dir/gatekeeper.yaml"
  chmod u+w "$dir/gatekeeper.yaml"
fi

dir="$tools/ratify-$RATIFY_VERSION"
if [ ! -x "$dir/ratify" ]; then
  echo "building the Ratify CLI $RATIFY_VERSION (go install, about 3 minutes)" >&2
  GOBIN="$dir" GONOSUMDB=github.com/open-policy-agent/frameworks nice -n 10 \
    go install -trimpath -ldflags '-s -w' "github.com/ratify-project/ratify/cmd/ratify@$RATIFY_VERSION"
fi
