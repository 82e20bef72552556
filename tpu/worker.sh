#!/usr/bin/env bash
# One TPU worker's part of a run (started on every worker by `tpu/kit.py launch`, from the checkout's root):
#   bash tpu/worker.sh --run R --bucket gs://B --command sft|grpo --config C [--resume] [--dry-run] [key=value ...]
# The workdir is on this worker's disk (~/rsground_runs/R); checkpoints go to gs://B/R/checkpoints (Orbax writes
# every host's shards there); process 0's workdir files (run record, metrics, TensorBoard) are copied to
# gs://B/R/workdir every minute and at the end, and brought back before a resume on a new slice; the exported
# model goes to gs://B/R/model. --dry-run prints the commands instead of running them.
set -u -o pipefail
RUN= BUCKET= COMMAND= CONFIG= RESUME= DRY=0 OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --run) RUN=$2; shift 2 ;;
    --bucket) BUCKET=${2%/}; shift 2 ;;
    --command) COMMAND=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --resume) RESUME=--resume; shift ;;
    --dry-run) DRY=1; shift ;;
    *) OVERRIDES+=("$1"); shift ;;
  esac
done
for v in RUN BUCKET COMMAND CONFIG; do
  if [ -z "${!v}" ]; then echo "worker.sh: --${v,,} is required" >&2; exit 2; fi
done
case "$BUCKET" in gs://*) ;; *) echo "worker.sh: --bucket must be a gs:// URL, got $BUCKET" >&2; exit 2 ;; esac
WORKDIR=$HOME/rsground_runs/$RUN
REMOTE=$BUCKET/$RUN
run() { printf '+'; printf ' %q' "$@"; echo; if [ "$DRY" = 0 ]; then "$@"; fi; }

run mkdir -p "$WORKDIR"
if [ -n "$RESUME" ]; then  # a new slice after a preemption: the run's record and metrics come back first
  run gcloud storage rsync -r "$REMOTE/workdir" "$WORKDIR"
fi
LEADER=0
if [ "$DRY" = 1 ] || [ "${TPU_WORKER_ID:-$(curl -s -H Metadata-Flavor:Google \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || echo 0)}" = 0 ]; then
  LEADER=1
fi
if [ "$LEADER" = 1 ] && [ "$DRY" = 0 ]; then
  ( while sleep 60; do gcloud storage rsync -r "$WORKDIR" "$REMOTE/workdir" >/dev/null 2>&1; done ) &
  SYNC=$!
fi
run .venv/bin/rsground "$COMMAND" --config "$CONFIG" --distributed $RESUME "workdir=$WORKDIR" \
  "checkpoint_dir=$REMOTE/checkpoints" "output=$WORKDIR/export" "${OVERRIDES[@]}"
rc=$?
if [ "$LEADER" = 1 ]; then
  [ -n "${SYNC:-}" ] && kill "$SYNC" 2>/dev/null
  run gcloud storage rsync -r "$WORKDIR" "$REMOTE/workdir"
  if [ "$rc" = 0 ]; then run gcloud storage rsync -r "$WORKDIR/export" "$REMOTE/model"; fi
fi
echo "rsground $COMMAND exited with $rc (3: stopped and saved; continue with tpu/kit.py resume)"
exit $rc
