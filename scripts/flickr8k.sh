#!/usr/bin/env bash
# Reproduce the Flickr8k results: prepare features, train soft and hard attention, fine-tune the
# soft model with self-critical training, evaluate on val, write a results table.
#   usage: bash scripts/flickr8k.sh DATA_DIR OUT_DIR      (DATA_DIR holds dataset_flickr8k.json
#          and images/; e.g. ../shared/data/flickr8k)
# Uses the GPU when there is one (prepare and train). Wall time on 2 CPU cores (measured per
# stage): ~25 min to prepare, ~30 min per model (8 epochs) and ~27 min of self-critical training,
# about 2 h in all. (On one H200, with Lite0 features: ~1 min to prepare and ~4 min per model.)
# Flickr8k is for research use only: nothing it makes belongs in git.
set -euo pipefail
DATA=${1:?usage: flickr8k.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: flickr8k.sh DATA_DIR OUT_DIR}
# The measured best on val (README, "Results on real photographs"): EfficientNet-Lite2 at 288
# px input for its 9x9 grid, lambda (alpha_c) 0, dropout 0.3, 8 epochs, beam 5 ranked by
# log p / length^0.5; then 6 epochs of SCST decoded greedily. Override with the variables below
# (Lite0's 14x14: FEATURES="--features efficientnet_lite0 --grid 14 --image-size 448").
FEATURES=${FEATURES:-"--features efficientnet_lite2 --grid 9 --image-size 288"}
EPOCHS=${EPOCHS:-8}
BEAM=${BEAM:-5}
LENGTH_PENALTY=${LENGTH_PENALTY:-0.5}
TRAIN_FLAGS=${TRAIN_FLAGS:-"--alpha-c 0 --lr 4e-4 --dropout 0.3"}
SCST_EPOCHS=${SCST_EPOCHS:-6}
SCST_FLAGS=${SCST_FLAGS:-"--objective scst --lr 1e-4"}
SCST_BEAM=${SCST_BEAM:-1}   # after SCST greedy decoding scored best (README)
SCST_LENGTH_PENALTY=${SCST_LENGTH_PENALTY:-0}
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CAP=.venv/bin/captioner
start=$(date +%s)
mkdir -p "$OUT"
if [ ! -f "$OUT/data/meta.json" ]; then
  $CAP prepare karpathy --json "$DATA/dataset_flickr8k.json" --images "$DATA/images" \
      --out "$OUT/data" $FEATURES --min-count 5
fi
# train RUN_NAME FLAGS...: train into $OUT/RUN_NAME unless it finished; a killed run resumes
train() {
  local run=$1; shift
  if [ ! -f "$OUT/$run/done" ]; then
    local resume=()
    [ -f "$OUT/$run/last.safetensors" ] && resume=(--resume)
    $CAP train --data "$OUT/data" --out "$OUT/$run" "$@" ${resume[@]+"${resume[@]}"}
    date > "$OUT/$run/done"
  fi
}
# evaluate RUN_NAME BEAM LENGTH_PENALTY: its best checkpoint on val
evaluate() {
  $CAP evaluate --model "$OUT/$1/best.safetensors" --data "$OUT/data" --split val \
      --beam-size "$2" --length-penalty "$3" \
      --results "$OUT/$1/val_results.json" --metrics "$OUT/$1/val_metrics.json"
}
for ATT in soft hard; do
  train "$ATT" --attention "$ATT" --epochs "$EPOCHS" $TRAIN_FLAGS
  evaluate "$ATT" "$BEAM" "$LENGTH_PENALTY"
done
# self-critical fine-tuning of the soft model on CIDEr-D (Rennie et al. 2017)
train soft_scst --init "$OUT/soft/best.safetensors" --epochs "$SCST_EPOCHS" $SCST_FLAGS
evaluate soft_scst "$SCST_BEAM" "$SCST_LENGTH_PENALTY"
.venv/bin/python - "$OUT" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
out, seconds = sys.argv[1], int(sys.argv[2])
rows = ["| model | B-1 | B-2 | B-3 | B-4 | METEOR | ROUGE-L | CIDEr | attention entropy / log P | distinct captions | words used |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
for att in ("soft", "hard", "soft_scst"):
    m = json.load(open(f"{out}/{att}/val_metrics.json"))
    g = lambda k: f"{100 * m[k]:.1f}" if k in m else "-"
    rows.append(f"| {att} (beam {int(m['beam_size'])}, length penalty {m['length_penalty']:g}) | "
                f"{g('coco/BLEU-1')} | {g('coco/BLEU-2')} | "
                f"{g('coco/BLEU-3')} | {g('coco/BLEU-4')} | {g('coco/METEOR')} | {g('coco/ROUGE-L')} | "
                f"{g('coco/CIDEr')} | {m['attention_entropy']:.2f} / {m['attention_entropy_uniform']:.2f} | "
                f"{int(m['distinct_captions'])} / {int(m['images'])} | {int(m['vocabulary_used'])} |")
rows.append(f"\nwall time: {seconds / 60:.1f} min")
open(f"{out}/results.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
