#!/usr/bin/env bash
# Makes the small H.264 clips the simulator serves (one per aspect ratio and duration), once.
# Needs ffmpeg (Debian: apt install ffmpeg). The clips are committed; run this only to change them.
set -euo pipefail
cd "$(dirname "$0")/../pixazo_batch/sim/clips"
# aspect ratio name, width, height (even numbers, the ratio within 1%)
sizes=("16x9 96 54" "9x16 54 96" "4x3 96 72" "3x4 72 96" "21x9 112 48" "9x21 48 112")
for entry in "${sizes[@]}"; do
  read -r name width height <<< "$entry"
  for seconds in 5 9; do
    ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=${width}x${height}:rate=4:duration=${seconds}" \
      -c:v libx264 -preset veryslow -crf 45 -pix_fmt yuv420p -g 40 -movflags +faststart \
      -map_metadata -1 -fflags +bitexact -flags:v +bitexact "${name}-${seconds}s.mp4"
  done
done
ls -l
