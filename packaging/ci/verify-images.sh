#!/usr/bin/env bash
# Verifies container images in CI, as nodes will: the script the GitHub Action (action.yml at the
# repository root) and the GitLab CI template (packaging/ci/gitlab-ci.yml) run.
#
# It installs the released static binary for this machine's architecture (checked against the
# release's SHA256SUMS), imports an offline bundle if one is given, runs `verify` for every image
# (never stopping at the first failure), and reports each outcome with its reason code.
#
# Inputs (environment):
#   ATPROTO_VERIFIER_IMAGES          image references, one per line (or separated by spaces)
#   ATPROTO_VERIFIER_POLICY          trust policy file (else the one config.toml names)
#   ATPROTO_VERIFIER_CONFIG          config.toml (else every default; a scratch cache)
#   ATPROTO_VERIFIER_FORMAT          text (default), json (results.jsonl) or sarif (one file per image)
#   ATPROTO_VERIFIER_OFFLINE_BUNDLE  a bundle (`atproto-verifier bundle create`): verify offline from it
#   ATPROTO_VERIFIER_VERSION         release to install (default 0.1.0)
#   ATPROTO_VERIFIER_RELEASE_URL     where releases are: <url>/v<version>/<file>
#   ATPROTO_VERIFIER_OUT             directory for results (default $RUNNER_TEMP or a temp dir)
# GitHub's $GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY are written when set; failures are printed as
# workflow annotations (::error::) there, as plain lines elsewhere.
#
# Exit: 0 every image admitted; 1 some image rejected (unsigned, revoked, untrusted signer…);
# 2 some image could not be decided (network, configuration) and none was rejected, or the
# verifier could not be installed.
set -euo pipefail

version="${ATPROTO_VERIFIER_VERSION:-0.1.0}"
release_url="${ATPROTO_VERIFIER_RELEASE_URL:-https://github.com/atproto-verifier/atproto-verifier/releases/download}"
format="${ATPROTO_VERIFIER_FORMAT:-text}"
out="${ATPROTO_VERIFIER_OUT:-${RUNNER_TEMP:-$(mktemp -d)}/atproto-verifier}"
on_github="${GITHUB_ACTIONS:-}"

say_error() { # title, message
  if [ -n "$on_github" ]; then
    # Annotation text: newlines and % are escaped as the workflow commands require.
    local text="${2//'%'/'%25'}"
    text="${text//$'\n'/'%0A'}"
    echo "::error title=$1::$text"
  else
    echo "error: $1: $2" >&2
  fi
}

case "$format" in
  text | json | sarif) ;;
  *) say_error "atproto-verifier" "format must be text, json or sarif, not \"$format\""; exit 2 ;;
esac
images=()
# Split on whitespace only: `read -a` does no pathname expansion (a reference such as
# `decoy-*` or `[::1]:5000/app` is never matched against the runner's files).
while IFS= read -r line; do
  read -r -a words <<< "$line" || true
  images+=("${words[@]}")
done <<< "${ATPROTO_VERIFIER_IMAGES:-}"
if [ ${#images[@]} -eq 0 ]; then
  say_error "atproto-verifier" "no image given (input \`image\`: one reference per line)"
  exit 2
fi

case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) say_error "atproto-verifier" "no release binary for $(uname -m) (x86_64 and aarch64 only)"; exit 2 ;;
esac

mkdir -p "$out/bin"
name="atproto-verifier-$version-$arch-linux-musl"
fetch() { curl --fail --silent --show-error --location --retry 3 --connect-timeout 10 --max-time 300 -o "$2" "$1"; }
if ! fetch "$release_url/v$version/$name" "$out/bin/$name" || ! fetch "$release_url/v$version/SHA256SUMS" "$out/bin/SHA256SUMS"; then
  say_error "install" "cannot download $name or SHA256SUMS from $release_url/v$version (check the version and the release URL)"
  exit 2
fi
# The binary is used only if its checksum is in the release's SHA256SUMS and matches.
if ! (cd "$out/bin" && grep -E "^[0-9a-f]{64}  $name\$" SHA256SUMS | sha256sum --check --strict --status -) ||
   ! grep -qE "^[0-9a-f]{64}  $name\$" "$out/bin/SHA256SUMS"; then
  say_error "install" "$name does not match the release's SHA256SUMS: refusing to run it"
  rm -f "$out/bin/$name"
  exit 2
fi
chmod 0755 "$out/bin/$name"
verifier="$out/bin/$name"

# A config of our own when none is given: a scratch cache under $out, every other default.
config="${ATPROTO_VERIFIER_CONFIG:-}"
if [ -z "$config" ]; then
  config="$out/config.toml"
  printf 'cache_dir = "%s"\n' "$out/cache" > "$config"
fi
args=(--config "$config")
[ -n "${ATPROTO_VERIFIER_POLICY:-}" ] && args+=(--policy "$ATPROTO_VERIFIER_POLICY")
if [ -n "${ATPROTO_VERIFIER_OFFLINE_BUNDLE:-}" ]; then
  if ! "$verifier" bundle import "$ATPROTO_VERIFIER_OFFLINE_BUNDLE" --config "$config"; then
    say_error "offline bundle" "cannot import $ATPROTO_VERIFIER_OFFLINE_BUNDLE (see above)"
    exit 2
  fi
  args+=(--offline)
fi

: > "$out/results.jsonl"
mkdir -p "$out/sarif"
admitted=0 rejected=0 undecided=0 n=0
summary="| image | outcome | reason |"$'\n'"| --- | --- | --- |"$'\n'
for image in "${images[@]}"; do
  n=$((n + 1))
  set +e
  result="$("$verifier" verify "$image" "${args[@]}" --format json 2> "$out/stderr.$n")"
  code=$?
  set -e
  printf '%s\n' "$result" >> "$out/results.jsonl"
  # The first "reason" of the record is its own (it precedes every free-text field).
  reason="$(printf '%s' "$result" | grep -o '"reason":"[a-z-]*"' | head -n 1 | cut -d'"' -f4)"
  reason="${reason:-unknown}"
  case "$code" in
    0) admitted=$((admitted + 1)); outcome=admitted
       case "$result" in *'"outcome":"admitted (audit)"'*) outcome="admitted (audit: would reject)" ;; esac ;;
    1) rejected=$((rejected + 1)); outcome=rejected ;;
    *) undecided=$((undecided + 1)); outcome=undecided ;;
  esac
  echo "$image: $outcome ($reason)"
  if [ "$code" != 0 ]; then
    message="$(printf '%s' "$result" | sed -n 's/.*"message":"\(\([^"\\]\|\\.\)*\)".*/\1/p' | head -c 1000)"
    [ -s "$out/stderr.$n" ] && message="$message"$'\n'"$(head -c 2000 "$out/stderr.$n")"
    say_error "$image: $outcome ($reason)" "$message"
  fi
  if [ "$format" = sarif ]; then
    "$verifier" verify "$image" "${args[@]}" --format sarif > "$out/sarif/$n.sarif" 2>/dev/null || true
  fi
  summary+="| \`$image\` | $outcome | \`$reason\` |"$'\n'
done

echo "atproto-verifier: $admitted admitted, $rejected rejected, $undecided undecided (results in $out)"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  {
    echo "admitted=$admitted"
    echo "rejected=$rejected"
    echo "undecided=$undecided"
    echo "results=$out/results.jsonl"
    echo "sarif=$out/sarif"
  } >> "$GITHUB_OUTPUT"
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  printf '### atproto-verifier: %s admitted, %s rejected, %s undecided\n\n%s' "$admitted" "$rejected" "$undecided" "$summary" >> "$GITHUB_STEP_SUMMARY"
fi
[ "$rejected" -gt 0 ] && exit 1
[ "$undecided" -gt 0 ] && exit 2
exit 0
