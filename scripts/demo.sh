#!/usr/bin/env bash
# `make demo`: the whole pipeline on the local backend, end to end, with no AWS account:
# `bincli pipeline -c configs/demo.yaml` (download -> inspect -> split -> upload -> tune -> train ->
# deploy -> evaluate), one photo through the endpoint, teardown. Where the ABID development sample
# is beside the project ($SHARED/abid-sample), download reads it from a local stand-in for the public
# bucket (no internet needed); elsewhere (a bare clone) it reads the public bucket itself, unsigned:
# that needs internet, and no AWS account.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
WORK=${DEMO_WORK:-bincli-work}
CONFIG=${DEMO_CONFIG:-configs/demo.yaml}
SAMPLE="$SHARED/abid-sample"
MIRROR=
bincli() { "$BIN/bincli" "$@" -c "$CONFIG" -w "$WORK"; }
# On any exit (an error, Ctrl-C): stop the endpoint and the stand-in, so nothing keeps running.
cleanup() { bincli teardown >/dev/null 2>&1 || true; [ -z "$MIRROR" ] || kill "$MIRROR" 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$WORK"
SECONDS=0

# Starts shared/tools/abid_mirror.py on a free port holding the sample; prints its URL.
start_stand_in() {
  rm -f "$WORK/mirror.url"
  "$BIN/python" "$SHARED/tools/abid_mirror.py" --data "$SAMPLE" --port 0 --url-file "$WORK/mirror.url" \
    > "$WORK/mirror.log" 2>&1 &
  MIRROR=$!
  for _ in $(seq 600); do
    [ -s "$WORK/mirror.url" ] && break
    kill -0 "$MIRROR" 2>/dev/null || { cat "$WORK/mirror.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -s "$WORK/mirror.url" ] || { echo "the bucket stand-in did not start within 60 s; see $WORK/mirror.log" >&2; exit 1; }
}

if [ -d "$SAMPLE/images" ] && [ -f "$SHARED/tools/abid_mirror.py" ]; then
  echo "== data: the ABID sample in $SAMPLE, from a local stand-in for s3://aft-vbi-pds (no internet needed)"
  start_stand_in
  URL=$(cat "$WORK/mirror.url")
  echo "   $URL"
  echo "== bincli pipeline -c $CONFIG --set download.endpoint_url=$URL"
  bincli pipeline --set "download.endpoint_url=$URL"
else
  echo "== data: no ABID sample at $SAMPLE (SHARED=/path/to/shared points to one):"
  echo "   from the public bucket s3://aft-vbi-pds itself (needs internet; no AWS account)"
  echo "== bincli pipeline -c $CONFIG"
  bincli pipeline
fi

echo "== predict one photo of the test split through the endpoint"
# The first photo of the test split (id,path,count); its label is the count a person wrote down for the bin.
IFS=, read -r _ IMAGE_PATH TRUE_COUNT < <(sed -n 2p "$WORK/splits/test.csv")
echo "   $IMAGE_PATH, labelled count $TRUE_COUNT"
bincli predict "$WORK/data/$IMAGE_PATH"

echo "== teardown"
bincli teardown
bincli status
echo "== demo finished in ${SECONDS} s (workspace: $WORK)"
