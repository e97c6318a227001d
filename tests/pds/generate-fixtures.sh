#!/usr/bin/env bash
# Regenerates tests/fixtures/pds from a real PDS + PLC on loopback. The outputs are committed;
# tests read them without needing node.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
node generate-fixtures.cjs
