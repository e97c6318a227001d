#!/usr/bin/env bash
# Installs the reference PDS and PLC directory from npm into tests/pds/node_modules.
# better-sqlite3 builds from source (its prebuilt download is unreachable): it needs the node
# headers, which Debian's nodejs ships under /usr/include/node.
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "node is missing: apt-get install nodejs npm" >&2; exit 1; }
if [ -f node_modules/@atproto/pds/package.json ] && [ -f node_modules/better-sqlite3/build/Release/better_sqlite3.node ]; then
  exit 0
fi
npm_config_nodedir=/usr npm install --no-audit --no-fund --cache "${NPM_CACHE:-$PWD/.npm-cache}"
