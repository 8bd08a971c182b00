#!/usr/bin/env bash
# Train on several machines with torchrun: run this same command on every node.
#
#   NNODES=2 HEAD=10.0.0.1 bash scripts/train_multinode.sh --data data/coco --out runs/big ...
#
# NNODES  how many nodes take part (each runs this script)
# HEAD    address of the node that hosts the rendezvous (any one of them; reachable from all)
# PORT    rendezvous port on HEAD (default 29500)
# NPROC   processes on this node: "gpu" (default with GPUs: one per GPU) or a number (default
#         without GPUs: 1; one per CPU socket is a good choice, with OMP_NUM_THREADS set to the
#         cores of a socket)
# RDZV_ID names the job (default captioner-<basename of --out>): nodes with the same id meet
# PYTHON  the interpreter with captioner installed (default: python)
#
# --data must be readable and --out writable at the same path on every node (a shared
# filesystem): rank 0 writes the checkpoints, and every rank reads last.safetensors to resume.
# --batch-size is per process: one optimizer step takes NNODES x NPROC x --batch-size images.
# After a failure (a node killed or lost) run the same command again on every node: it finds
# --out/last.safetensors and adds --resume, so the run continues from its last save.
set -euo pipefail
: "${NNODES:?set NNODES, the number of nodes taking part}"
: "${HEAD:?set HEAD, the address of the rendezvous node}"
PORT=${PORT:-29500}
PYTHON=${PYTHON:-python}
out=""
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --out) out=${args[$((i + 1))]:-} ;;
    --out=*) out=${args[$i]#--out=} ;;
  esac
done
[ -n "$out" ] || { echo "train_multinode.sh: give --out RUN (on a filesystem every node shares)" >&2; exit 2; }
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print('gpu' if torch.cuda.is_available() else 1)")
fi
resume=()
if [ -f "$out/last.safetensors" ]; then
  resume=(--resume)
  echo "train_multinode.sh: $out/last.safetensors found: resuming that run" >&2
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" \
  --rdzv_backend c10d --rdzv_endpoint "$HEAD:$PORT" --rdzv_id "${RDZV_ID:-captioner-$(basename "$out")}" \
  --max_restarts 0 -m captioner train "$@" "${resume[@]}"
