#!/usr/bin/env bash
# The main job on the embedded default (backend: local), end to end, with no AWS account:
# a local stand-in for the public ABID bucket -> download -> split -> train -> deploy -> predict
# -> evaluate -> teardown. Uses the ABID development sample in $SHARED/abid-sample.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
WORK=${DEMO_WORK:-bincli-work}
PER_CLASS=${DEMO_PER_CLASS:-256}
EPOCHS=${DEMO_EPOCHS:-5}
SAMPLE="$SHARED/abid-sample"
if [ ! -d "$SAMPLE/images" ]; then
  echo "demo needs the ABID sample at $SAMPLE (set SHARED=/path/to/shared)" >&2
  exit 1
fi
bincli() { "$BIN/bincli" "$@"; }
mkdir -p "$WORK"

echo "== start a local stand-in for s3://aft-vbi-pds (shared/tools/abid_mirror.py)"
rm -f "$WORK/mirror.url"
"$BIN/python" "$SHARED/tools/abid_mirror.py" --data "$SAMPLE" --port 0 --url-file "$WORK/mirror.url" \
  > "$WORK/mirror.log" 2>&1 &
MIRROR=$!
cleanup() { bincli teardown -w "$WORK" >/dev/null 2>&1 || true; kill "$MIRROR" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 600); do
  [ -s "$WORK/mirror.url" ] && break
  kill -0 "$MIRROR" 2>/dev/null || { cat "$WORK/mirror.log" >&2; exit 1; }
  sleep 0.1
done
URL=$(cat "$WORK/mirror.url")

echo "== download $PER_CLASS images per class (1-5) from $URL"
bincli download -w "$WORK" --endpoint-url "$URL" --per-class "$PER_CLASS" --classes 1-5

echo "== split 0.8 / 0.1 / 0.1, stratified by count"
bincli split -w "$WORK" --ratios 0.8 0.1 0.1 --classes 1-5

echo "== train resnet18 from scratch for $EPOCHS epochs (CPU, 128 px)"
bincli train -w "$WORK" --epochs "$EPOCHS" --image-size 128 --no-pretrained

echo "== deploy a local endpoint, predict one photo, evaluate the test split through it"
bincli deploy -w "$WORK" --port 0
# The first photo of the test split; its label is the count a person wrote down for the bin.
IFS=, read -r _ IMAGE_PATH TRUE_COUNT < <(sed -n 2p "$WORK/splits/test.csv")
echo "photo $IMAGE_PATH, labelled count $TRUE_COUNT"
bincli predict -w "$WORK" "$WORK/data/$IMAGE_PATH"
bincli evaluate -w "$WORK" --split test

echo "== teardown"
bincli teardown -w "$WORK"
bincli status -w "$WORK"
