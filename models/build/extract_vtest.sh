#!/usr/bin/env bash
# Extract frames from OpenCV's sample video vtest.avi (Debian package opencv-doc).
#
# Usage:
#   extract_vtest.sh              # 40-frame sample (every 20th frame: 0, 20, ..., 780)
#                                 # -> models/frames/vtest/vtest_NNNN.jpg (committed)
#   extract_vtest.sh all OUTDIR   # every frame (795) -> OUTDIR/vtest_NNNN.jpg (not committed;
#                                 # benchmarks, calibration)
#
# NNNN is the source frame index, zero-padded to 4 digits. JPEG, ffmpeg -q:v 2 (~quality 90+).
# Needs: apt-get install -y opencv-doc ffmpeg   (Debian bookworm: opencv-doc 4.6.0+dfsg-12)
# The video can be overridden with VTEST=/path/to/vtest.avi[.gz].
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${1:-sample}"
step=20

find_vtest() {
  if [[ -n "${VTEST:-}" ]]; then echo "$VTEST"; return; fi
  local p
  for p in /usr/share/doc/opencv-doc/examples/data/vtest.avi \
           /usr/share/doc/opencv-doc/examples/data/vtest.avi.gz; do
    [[ -f "$p" ]] && { echo "$p"; return; }
  done
  p="$(dpkg -L opencv-doc 2>/dev/null | grep -E '/vtest\.avi(\.gz)?$' | head -n1 || true)"
  [[ -n "$p" && -f "$p" ]] && { echo "$p"; return; }
  echo "vtest.avi not found: apt-get install -y opencv-doc (or set VTEST=...)" >&2
  exit 1
}

command -v ffmpeg >/dev/null || { echo "ffmpeg not found: apt-get install -y ffmpeg" >&2; exit 1; }

src="$(find_vtest)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ "$src" == *.gz ]]; then
  zcat "$src" > "$tmp/vtest.avi"
  src="$tmp/vtest.avi"
fi

case "$mode" in
  all)
    out="${2:?usage: extract_vtest.sh all OUTDIR}"
    mkdir -p "$out"
    ffmpeg -nostdin -hide_banner -loglevel error -y -i "$src" \
      -fps_mode passthrough -pix_fmt yuvj420p -q:v 2 -start_number 0 \
      "$out/vtest_%04d.jpg"
    echo "wrote $(ls "$out"/vtest_*.jpg | wc -l) frames to $out"
    ;;
  sample)
    out="$script_dir/../frames/vtest"
    mkdir -p "$out"
    rm -f "$out"/vtest_*.jpg
    mkdir "$tmp/seq"
    # select every ${step}th decoded frame (n = 0-based source frame index)
    ffmpeg -nostdin -hide_banner -loglevel error -y -i "$src" \
      -vf "select=not(mod(n\,${step}))" -fps_mode passthrough \
      -pix_fmt yuvj420p -q:v 2 -start_number 0 "$tmp/seq/%04d.jpg"
    k=0
    for f in $(ls "$tmp/seq"/*.jpg | sort); do
      mv "$f" "$out/$(printf 'vtest_%04d.jpg' $((k * step)))"
      k=$((k + 1))
    done
    echo "wrote $k frames to $(cd "$out" && pwd)"
    ;;
  *)
    echo "usage: extract_vtest.sh [all OUTDIR]" >&2
    exit 2
    ;;
esac
