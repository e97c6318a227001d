#!/usr/bin/env bash
# Builds the event-stream components the `watch` tests run, pinned, into
# target/tools/<name>-<version>/ (kept between runs; prints nothing when both are there):
# - indigo's relay (cmd/relay), `go install` from the Go module proxy (about a minute);
# - the legacy Jetstream (v1 API, reads one PDS directly through JETSTREAM_WS_URL): the proxy
#   lists no versions of github.com/bluesky-social/jetstream, so `go install` is refused, but
#   `go mod download` of this exact pseudo-version works; it is built inside the downloaded
#   module (about 4 minutes cold on two cores).
# Builds run under `nice`, so the Rust build beside them keeps a core.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
tools="${CARGO_TARGET_DIR:-target}/tools"
case "$tools" in /*) ;; *) tools="$root/$tools" ;; esac
INDIGO_VERSION=v0.0.0-20260605210604-af2fec94f34c
JETSTREAM_VERSION=v0.0.0-20251009222037-7d7efa58d7f1
[ -x /usr/local/go/bin/go ] && export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
  echo "go is missing: install Go >= 1.24 (indigo's relay and Jetstream need it) and re-run" >&2
  exit 1
fi
export GOFLAGS="${GOFLAGS:--buildvcs=false}" GOWORK=off

dir="$tools/relay-$INDIGO_VERSION"
if [ ! -x "$dir/relay" ]; then
  echo "building indigo's relay $INDIGO_VERSION (go install, about a minute)" >&2
  # cgo on: the relay's SQLite driver (mattn/go-sqlite3) is C.
  GOBIN="$dir" CGO_ENABLED=1 nice -n 10 go install -trimpath -ldflags '-s -w' "github.com/bluesky-social/indigo/cmd/relay@$INDIGO_VERSION"
fi

dir="$tools/jetstream-$JETSTREAM_VERSION"
if [ ! -x "$dir/jetstream" ]; then
  echo "building Jetstream $JETSTREAM_VERSION (go mod download + go build, about 4 minutes)" >&2
  src=$(go mod download -json "github.com/bluesky-social/jetstream@$JETSTREAM_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  [ -n "$src" ] || { echo "go mod download of Jetstream $JETSTREAM_VERSION gave no source directory" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  mkdir -p "$dir"
  (cd "$work" && nice -n 10 go build -trimpath -ldflags '-s -w' -o "$dir/jetstream" ./cmd/jetstream)
fi
