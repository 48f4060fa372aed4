#!/usr/bin/env bash
# Writes tests/fixtures/pysleep-cases.json: statistics computed by Asleep's
# own calculator, pysleep 0.2.0 from PyPI, for the nights cases.py builds.
# tests/pysleep.rs checks that this server computes the same numbers.
#
# Usage: tests/pysleep/generate.sh [OUTPUT]
# OUTPUT defaults to tests/fixtures/pysleep-cases.json. The virtual
# environment is kept in $PYSLEEP_VENV (default target/pysleep-venv) so a
# second run needs no download.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
output="${1:-$root/tests/fixtures/pysleep-cases.json}"
venv="${PYSLEEP_VENV:-${CARGO_TARGET_DIR:-$root/target}/pysleep-venv}"

if ! "$venv/bin/python" -c 'import pysleep' 2>/dev/null; then
    python3 -m venv "$venv"
    # The hash pins the exact wheel, so a changed upload cannot change the cases.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$here/requirements.txt"
fi
"$venv/bin/python" "$here/cases.py" > "$output.tmp"
mv "$output.tmp" "$output"
echo "wrote $(grep -c '"name"' "$output") cases to $output"
