#!/usr/bin/env bash
# Coverage-guided fuzzing of Tessera's file readers with AFL++ on stable Rust (cargo-afl).
#
#   scripts/fuzz.sh [-E executions] [-j jobs] [seconds] [target ...]
#
# Runs each target (default: all of image ckpt model project project_entries prompt; see
# fuzz/src/lib.rs) for
# `seconds` (default 1800) or, with -E, until that many executions if sooner, starting from
# fuzz/corpus/<target>/; -j runs that many targets at once (default 1). Prints a table of
# executions, crashes and hangs from AFL's fuzzer_stats and copies crashing and hanging
# inputs to fuzz/crashes/<target>/ and fuzz/hangs/<target>/. Replay one with
#
#   cargo run -p tessera-fuzz --example replay -- <target> <file>
#
# Installs cargo-afl (and builds its AFL++) when missing. Environment:
#   TESSERA_AFL_TARGET_DIR  cargo target folder of the instrumented build (target/afl)
#   TESSERA_AFL_OUT         AFL output folders (fuzz/out)
#   TESSERA_AFL_TIMEOUT     per-input time limit in ms (3000); slower inputs count as hangs
#   TESSERA_AFL_MEMORY      afl-fuzz -m, memory limit in MB (none)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

EXECS=""
JOBS=1
SECS=1800
TARGETS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -E) EXECS="$2"; shift 2 ;;
        -j) JOBS="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        [0-9]*) SECS="$1"; shift ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(image ckpt model project project_entries prompt)

TARGET_DIR="${TESSERA_AFL_TARGET_DIR:-$ROOT/target/afl}"
OUT="${TESSERA_AFL_OUT:-$ROOT/fuzz/out}"
TIMEOUT="${TESSERA_AFL_TIMEOUT:-3000}"
MEMORY="${TESSERA_AFL_MEMORY:-none}"

if ! cargo afl --version >/dev/null 2>&1; then
    echo "== installing cargo-afl"
    cargo install --locked cargo-afl
fi
# Builds AFL++ for this toolchain once; says so (and fails) when it is there already.
cargo afl config --build >/dev/null 2>&1 || true

echo "== building the AFL harnesses in $TARGET_DIR"
CARGO_TARGET_DIR="$TARGET_DIR" cargo afl build --release -p tessera-fuzz --features afl --bins

export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_SKIP_CRASHES=1 AFL_NO_AFFINITY=1

run_one() {
    local t="$1" out="$OUT/$1"
    rm -rf "$out"
    mkdir -p "$out"
    local limit=(-V "$SECS")
    [[ -n "$EXECS" ]] && limit+=(-E "$EXECS")
    echo "== $t: ${limit[*]} (log: $out.log)"
    # One scratch folder per target (the harness forks a new process every 1000 inputs).
    TESSERA_FUZZ_KEY="afl-$t" cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" \
        -m "$MEMORY" -t "$TIMEOUT" "${limit[@]}" -- "$TARGET_DIR/release/afl_$t" \
        >"$out.log" 2>&1 || echo "!! afl-fuzz for $t exited with $? (see $out.log)"
    rm -rf "/dev/shm/tessera-fuzz/afl-$t"
}

running=0
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $JOBS ]]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

stat() { sed -n "s/^$2 *: *//p" "$1" 2>/dev/null | head -1; }

echo
printf '%-8s | %12s | %9s | %9s | %7s | %5s\n' target executions 'exec/s' 'time (s)' crashes hangs
printf -- '---------|--------------|-----------|-----------|---------|------\n'
for t in "${TARGETS[@]}"; do
    stats="$OUT/$t/default/fuzzer_stats"
    if [[ ! -f $stats ]]; then
        printf '%-8s | %s\n' "$t" "no fuzzer_stats (see $OUT/$t.log)"
        continue
    fi
    execs=$(stat "$stats" execs_done)
    start=$(stat "$stats" start_time)
    last=$(stat "$stats" last_update)
    secs=$((last - start))
    rate=$(awk -v e="$execs" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? e / s : 0) }')
    crashes=$(stat "$stats" saved_crashes)
    hangs=$(stat "$stats" saved_hangs)
    printf '%-8s | %12s | %9s | %9s | %7s | %5s\n' "$t" "$execs" "$rate" "$secs" "$crashes" "$hangs"
    for kind in crashes hangs; do
        if compgen -G "$OUT/$t/default/$kind/id:*" >/dev/null; then
            mkdir -p "fuzz/$kind/$t"
            cp "$OUT/$t/default/$kind"/id:* "fuzz/$kind/$t/"
        fi
    done
done
