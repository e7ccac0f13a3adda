#!/usr/bin/env bash
# The main job on the embedded default (backend: local), end to end, with no AWS account.
# Uses the ABID development sample in $SHARED/abid-sample.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
WORK=${DEMO_WORK:-bincli-work}
SAMPLE="$SHARED/abid-sample"
if [ ! -d "$SAMPLE/images" ]; then
  echo "demo needs the ABID sample at $SAMPLE (set SHARED=/path/to/shared)" >&2
  exit 1
fi

echo "== split $SAMPLE into train/valid/test (classes 1-5)"
"$BIN/bincli" split -w "$WORK" --input "$SAMPLE" --ratios 0.8 0.1 0.1 --classes 1-5
"$BIN/bincli" status -w "$WORK"
