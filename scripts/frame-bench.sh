#!/usr/bin/env bash
# Frame times of the real editor window while jobs run on a large image (issue 5's measure).
# Needs Xvfb, xdotool and a release build: cargo build --release --bin tessera.
# Usage: scripts/frame-bench.sh [SIDE=4096] [MODEL=assets/model] [OUT=target/frame-bench]
set -euo pipefail
SIDE=${1:-4096}
MODEL=${2:-assets/model}
OUT=${3:-target/frame-bench}
rm -rf "$OUT/data"; mkdir -p "$OUT"
python3 - "$SIDE" "$OUT/image.png" <<'PY'
import sys, zlib, struct
n = int(sys.argv[1]); path = sys.argv[2]
row = bytes(b for x in range(n) for b in ((x * 255) // n, 128, 200 - (x * 150) // n))
raw = b"".join(b"\x00" + row for _ in range(n))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
open(path, "wb").write(png)
PY
export DISPLAY=:97
Xvfb :97 -screen 0 1600x1000x24 >/dev/null 2>&1 &
XVFB=$!
trap 'kill $APP $XVFB 2>/dev/null || true' EXIT
sleep 1
TESSERA_FRAME_LOG="$OUT/frames.tsv" XDG_DATA_HOME="$OUT/data" ./target/release/tessera edit "$OUT/image.png" --model "$MODEL" &
APP=$!
sleep 12
WIN=$(xdotool search --sync --onlyvisible --name . | head -1)
xdotool windowsize "$WIN" 1600 1000 windowmove "$WIN" 0 0
sleep 2
# Paint a large stroke over the middle of the canvas with the brush, then generate 3 times.
xdotool mousemove 500 400 mousedown 1
for i in $(seq 0 40); do xdotool mousemove $((500 + i * 12)) $((400 + (i % 7) * 20)); done
xdotool mouseup 1
import -window root "$OUT/painted.png" 2>/dev/null || true
sleep 1
for run in $(seq 1 ${RUNS:-3}); do
  xdotool windowfocus "$WIN" key ctrl+Return
  sleep 1
  [ "$run" = 1 ] && { import -window root "$OUT/running.png" 2>/dev/null || true; }
  # Keep the pointer moving so that frames are drawn all along the job.
  for i in $(seq 0 150); do xdotool mousemove $((300 + (i % 40) * 5)) $((700 + (i % 9) * 3)); sleep 0.1; done
done
sleep 2
kill $APP
wait $APP 2>/dev/null || true
python3 - "$OUT/frames.tsv" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
for running, name in (("1", "job running"), ("0", "idle")):
    ui = [float(r[1]) for r in rows if r[3] == running]
    cpu = [float(r[2]) for r in rows if r[3] == running and r[2] != "-"]
    if ui:
        print(f"{name}: {len(ui)} frames; UI code p50 {pct(ui, 50):.2f} ms, p95 {pct(ui, 95):.2f} ms, "
              f"max {max(ui):.1f} ms", end="")
        if cpu:
            print(f"; eframe CPU p50 {pct(cpu, 50):.2f} ms, p95 {pct(cpu, 95):.2f} ms, max {max(cpu):.1f} ms")
        else:
            print()
PY
