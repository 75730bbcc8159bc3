#!/usr/bin/env bash
# Fetch OpenCV's sample clip vtest.avi (768x576, 10 frames/s, 795 frames: a static outdoor camera,
# people walking) from the Debian package opencv-doc into $1 (default .data/vtest.avi); licence:
# Apache-2.0 AND BSD-3-Clause (Debian's copyright file of opencv, "Files: *"). The detector's
# recall test reads it with tests/data/vtest_boxes.json. Where it cannot be fetched, the reason
# goes to .data/UNAVAILABLE (that test then skips with it) and this script still exits 0.
set -uo pipefail
OUT=${1:-.data/vtest.avi}
SHA=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
MEMBER=./usr/share/doc/opencv-doc/examples/data/vtest.avi
DIR=$(dirname "$OUT")
mkdir -p "$DIR"
rm -f "$DIR/UNAVAILABLE"
if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --quiet - 2>/dev/null; then exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "$1" > "$DIR/UNAVAILABLE"; echo "vtest.avi not fetched: $1" >&2; exit 0; }
command -v apt-get > /dev/null || fail "no apt-get on this machine (the clip comes from Debian's opencv-doc)"
# apt-get download writes to the current folder; its _apt sandbox warning is harmless
( cd "$TMP" && { apt-get download -q opencv-doc > apt.log 2>&1 ||
    { apt-get update -qq >> apt.log 2>&1 && apt-get download -q opencv-doc >> apt.log 2>&1; }; } ) ||
    fail "apt-get download opencv-doc failed: $(tail -n 2 "$TMP/apt.log" | tr '\n' ' ')"
dpkg-deb --fsys-tarfile "$TMP"/opencv-doc_*.deb | tar -xO "$MEMBER" > "$TMP/vtest.avi" ||
    fail "opencv-doc has no $MEMBER"
echo "$SHA  $TMP/vtest.avi" | sha256sum -c --quiet - || fail "vtest.avi in opencv-doc is not the labelled clip (sha256 differs)"
mv "$TMP/vtest.avi" "$OUT"
