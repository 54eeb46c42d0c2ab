#!/usr/bin/env bash
# Storage faults that need root: a real full disk (a 3 MiB tmpfs) under training and a
# read-only mount under --mode=eval. Each must end in one line on stderr, exit code 2, and a
# run that continues once the fault is gone. (CI checks the same without root: a file-size
# limit for the full disk and a user-namespace mount for read-only, tests/reliability_test.py.)
#
#   sudo tools/storage_faults.sh        # from the repository root, in the project's venv
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "needs root (mount)"; exit 1; }
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3 MIXACM_JAX_CACHE="$(mktemp -d)"
TINY=(--config.model.kwargs.stage_sizes="(1, 1)" --config.optim.batch_size=32
      --config.optim.num_steps=4 --config.objective.pgd_at.attack.steps=1
      --config.train_evals.pgd.attacks=clean,pgd2 --config.train_evals.pgd.num_examples=64
      --config.checkpoint.every_steps=2 --config.log_every_steps=2
      --config.eval.attacks=clean,pgd2 --config.eval.num_examples=64)
MNT=$(mktemp -d); LOG=$(mktemp -d)
trap 'umount "$MNT" 2>/dev/null || true; rm -rf "$MNT" "$LOG"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
one_line() {  # exit code 2 and exactly one line on stderr, starting with "error:"
  [ "$1" = 2 ] || fail "exit code $1, expected 2"
  [ "$(grep -c . "$2")" = 1 ] && grep -q "^error: " "$2" || { cat "$2"; fail "not one line"; }
  echo "  stderr: $(cat "$2")"
}

echo "== a full disk (3 MiB tmpfs) under training"
mount -t tmpfs -o size=3m tmpfs "$MNT"
head -c 2900000 /dev/zero > "$MNT/filler"   # leaves ~100 KB: the first checkpoint fails
set +e; python run.py --workdir="$MNT/w" "${TINY[@]}" 2>"$LOG/err1"; rc=$?; set -e
one_line $rc "$LOG/err1"
grep -q "No space left on device; free space" "$LOG/err1" || fail "no ENOSPC named"
rm "$MNT/filler"
python run.py --workdir="$MNT/w" "${TINY[@]}" >/dev/null || fail "no resume after freeing"
[ -f "$MNT/w/summary.json" ] || fail "no summary after freeing"
echo "  freed: the same command finished"

echo "== a read-only workdir under --mode=eval"
mount -o remount,ro "$MNT"
set +e; python run.py --workdir="$MNT/w" --mode=eval "${TINY[@]}" 2>"$LOG/err2"; rc=$?; set -e
one_line $rc "$LOG/err2"
grep -q "Read-only file system; make it writable" "$LOG/err2" || fail "no EROFS named"
mount -o remount,rw "$MNT"
python run.py --workdir="$MNT/w" --mode=eval "${TINY[@]}" >/dev/null || fail "eval after rw"
echo "  writable again: the evaluation finished"
echo "OK"
