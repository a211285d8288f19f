#!/usr/bin/env bash
# Instructions per alloc+free pair for each allocator of benches/pairs.rs, counted by
# callgrind with the difference method: each allocator runs twice, with N1 and N2
# pairs; setup (region, pre-fill) and teardown are the same in both runs and cancel,
# so (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one pair of the steady state
# (harness included: PRNG, slot load/store, the two byte writes; the `floor` row
# measures that harness over a trivial LIFO allocator).
#
# usage: benches/callgrind.sh [allocator...]      (default: floor spanheap spanheap-uncached talc buddy lla)
# env:   N1, N2          pair counts (default 100000 200000)
#        LLA_N1, LLA_N2  for linked_list_allocator, ~12 us a pair natively (default 20000 40000)
#        CARGO_TARGET_DIR as for cargo (default target/)
#        PAIRS_ARGS     more options for the pairs binary, e.g. "--live 1 --size 64"
#                       (the hot 64-byte pair)
#        BENCH_FEATURES cargo options for the build, e.g. "--features verify-frees"
#                       (spanheap's verified frees)
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
N1="${N1:-100000}"
N2="${N2:-200000}"
LLA_N1="${LLA_N1:-20000}"
LLA_N2="${LLA_N2:-40000}"
if [ "$#" -gt 0 ]; then allocators=("$@"); else allocators=(floor spanheap spanheap-uncached talc buddy lla); fi

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not found" >&2; exit 1; }
command -v jq >/dev/null || { echo "callgrind.sh: jq not found" >&2; exit 1; }

bin="$(cargo bench --bench pairs ${BENCH_FEATURES:-} --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "pairs"
                  and .executable != null) | .executable' | tail -n 1)"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "callgrind.sh: cannot build or find the pairs bench binary; cargo says:" >&2
    cargo bench --bench pairs ${BENCH_FEATURES:-} --no-run >&2
    exit 1
fi
echo "binary: $bin" >&2

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Ir of one run: the total of callgrind's "Collected : N" line.
count() { # allocator pairs
    local log="$tmp/$1.$2.log"
    if ! valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$1.$2" \
        "$bin" --only "$1" --pairs "$2" ${PAIRS_ARGS:-} >"$tmp/$1.$2.out" 2>"$log"; then
        echo "callgrind.sh: $1 with $2 pairs failed:" >&2
        tail -n 20 "$tmp/$1.$2.out" "$log" >&2
        return 1
    fi
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log"
}

declare -A per_pair
declare -A runs_used
for a in "${allocators[@]}"; do
    if [ "$a" = lla ]; then n1=$LLA_N1; n2=$LLA_N2; else n1=$N1; n2=$N2; fi
    echo "callgrind: $a ($n1 and $n2 pairs)..." >&2
    # The two runs are independent: run them side by side.
    count "$a" "$n1" >"$tmp/ir1" & p1=$!
    count "$a" "$n2" >"$tmp/ir2" & p2=$!
    ok=1
    wait "$p1" || ok=0
    wait "$p2" || ok=0
    if [ "$ok" = 1 ]; then
        ir1=$(cat "$tmp/ir1"); ir2=$(cat "$tmp/ir2")
        per_pair[$a]=$(awk -v a="$ir1" -v b="$ir2" -v n1="$n1" -v n2="$n2" \
            'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
        echo "  Ir($n1) = $ir1, Ir($n2) = $ir2" >&2
    else
        per_pair[$a]="failed"
    fi
    runs_used[$a]="$n1 / $n2"
done

span="${per_pair[spanheap]:-}"
floor="${per_pair[floor]:-}"
echo
echo "| allocator | pairs (N1 / N2) | instructions/pair | minus floor | vs spanheap |"
echo "|---|---:|---:|---:|---:|"
for a in "${allocators[@]}"; do
    v="${per_pair[$a]}"
    net="-"; ratio="-"
    if [[ "$v" =~ ^[0-9.]+$ ]]; then
        if [[ "$floor" =~ ^[0-9.]+$ ]]; then net=$(awk -v v="$v" -v f="$floor" 'BEGIN { printf "%.1f", v - f }'); fi
        if [[ "$span" =~ ^[0-9.]+$ ]]; then ratio=$(awk -v v="$v" -v s="$span" 'BEGIN { printf "%.2fx", v / s }'); fi
    fi
    echo "| $a | ${runs_used[$a]} | $v | $net | $ratio |"
done
