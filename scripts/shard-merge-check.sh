#!/usr/bin/env bash
# Runs a tiny simulation sweep as three shards, merges the three parts, and checks that the merge
# counts every seed exactly once and refuses a part given twice: the recipe of docs/SCALE-OUT.md,
# on one machine. It builds nothing: pass the roomlab binary to test.
#
#   scripts/shard-merge-check.sh target/release/roomlab
set -euo pipefail

binary=${1:?usage: scripts/shard-merge-check.sh PATH/TO/roomlab}
seeds=6
shards=3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for k in $(seq 1 "$shards"); do
    if ! "$binary" sim --seeds "$seeds" --safety-s 2 --clients 4 --jobs 1 --shard "$k/$shards" \
        --json "$work/part-$k.json" >"$work/shard-$k.out" 2>&1; then
        echo "shard $k/$shards failed:" >&2
        cat "$work/shard-$k.out" >&2
        exit 1
    fi
done

if ! "$binary" sim --merge "$work"/part-*.json >"$work/merged.out" 2>&1; then
    echo "the merge failed:" >&2
    cat "$work/merged.out" >&2
    exit 1
fi
merged=$(awk '$1 == "seeds" { print $2 }' "$work/merged.out")
if [ "$merged" != "$seeds" ]; then
    echo "the merge counted ${merged:-no} seeds, not $seeds:" >&2
    cat "$work/merged.out" >&2
    exit 1
fi

# The same part twice would count its seeds twice: the merge must refuse it as a usage error.
status=0
"$binary" sim --merge "$work/part-1.json" "$work/part-1.json" "$work/part-2.json" >"$work/twice.out" 2>&1 || status=$?
if [ "$status" != 2 ]; then
    echo "merging part-1.json twice exited $status, not 2:" >&2
    cat "$work/twice.out" >&2
    exit 1
fi

echo "shard-merge-check: $shards shards of $seeds seeds merged into $merged seeds; a part given twice is refused"
