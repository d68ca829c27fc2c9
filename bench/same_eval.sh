#!/bin/bash
# Does a code change leave the results alone? Runs `dvc repro` from scratch in a git worktree of each
# revision, with that revision's params.yaml and the same sed edits applied to both, and compares the
# two metrics/eval.json byte for byte (exit 0: identical).
#
#   bench/same_eval.sh REV_A REV_B ['sed expression on params.yaml']
#
# e.g. the package move, at a quarter of the default training steps:
#   bench/same_eval.sh 0b7d33c 6346345 's/^  steps: 150$/  steps: 50/; s/^  steps: 600/  steps: 150/'
set -euo pipefail
a=$1 b=$2 edit=${3:-}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'for r in "$a" "$b"; do git -C "$root" worktree remove --force "$work/$r" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for rev in "$a" "$b"; do
  git -C "$root" worktree add --detach "$work/$rev" "$rev" > /dev/null 2>&1
  [ -n "$edit" ] && sed -i "$edit" "$work/$rev/params.yaml"
  start=$(date +%s)
  (cd "$work/$rev" && python -m dvc repro > repro.log 2>&1) || { tail -20 "$work/$rev/repro.log"; exit 1; }
  echo "$rev: dvc repro in $(( $(date +%s) - start )) s; sha256 $(sha256sum < "$work/$rev/metrics/eval.json" | cut -c1-64)"
done
cmp -s "$work/$a/metrics/eval.json" "$work/$b/metrics/eval.json" && echo "metrics/eval.json: byte-identical" \
  || { echo "metrics/eval.json: differs"; exit 1; }
