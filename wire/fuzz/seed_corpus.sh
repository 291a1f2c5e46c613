#!/bin/sh
# Seeds corpus/frames_and_messages with every golden frame (prefixed by a chunk-size
# byte of 0x3f: whole frames), so the fuzzer starts from valid messages of every type.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/frames_and_messages
grep '"frame_hex"' ../golden/vectors.json | sed 's/.*"frame_hex": "\([0-9a-f]*\)".*/\1/' |
while read -r hex; do
  printf '3f%s' "$hex" | xxd -r -p > "corpus/frames_and_messages/golden-$(printf '%s' "$hex" | cut -c9-12)-$(printf '%s' "$hex" | md5sum | cut -c1-8)"
done
ls corpus/frames_and_messages | wc -l
