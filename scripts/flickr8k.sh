#!/usr/bin/env bash
# Reproduce the Flickr8k results: prepare features, train soft and hard attention, fine-tune the
# soft model's encoder, then train it with self-critical training, evaluate on val, write a
# results table.
#   usage: bash scripts/flickr8k.sh DATA_DIR OUT_DIR      (DATA_DIR holds dataset_flickr8k.json
#          and images/; e.g. ../shared/data/flickr8k)
# Uses the GPU when there is one (prepare and train). Wall time, measured per stage (README):
# on 2 CPU cores ~25 min to prepare and ~30 min per likelihood model, then the stages that train
# the encoder from images: ~16 min per epoch of fine-tuning (3) and ~27 min per epoch of
# self-critical training (10), about 7 h in all; on one H100 shared by 8 runs, ~40 s per
# fine-tuning epoch and ~30 s per self-critical epoch. FINE_TUNE=0 skips the encoder: 10 epochs
# of self-critical training on the frozen features (~45 min on CPU), about 2.5 h in all.
# Flickr8k is for research use only: nothing it makes belongs in git.
set -euo pipefail
DATA=${1:?usage: flickr8k.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: flickr8k.sh DATA_DIR OUT_DIR}
# The measured best on val (README, "Results on real photographs"): EfficientNet-Lite2 at 288
# px input for its 9x9 grid, lambda (alpha_c) 0, dropout 0.3, 8 epochs, beam 5 ranked by
# log p / length^0.5; then the encoder's last 3 blocks fine-tuned with the decoder (3 epochs),
# then self-critical training of both (10 epochs, lr halved at every epoch that does not improve
# val BLEU-4), evaluated like the others. Override with the variables below (Lite0's
# 14x14: FEATURES="--features efficientnet_lite0 --grid 14 --image-size 448").
FEATURES=${FEATURES:-"--features efficientnet_lite2 --grid 9 --image-size 288"}
EPOCHS=${EPOCHS:-8}
BEAM=${BEAM:-5}
LENGTH_PENALTY=${LENGTH_PENALTY:-0.5}
TRAIN_FLAGS=${TRAIN_FLAGS:-"--alpha-c 0 --lr 4e-4 --dropout 0.3"}
FINE_TUNE=${FINE_TUNE:-3}   # encoder blocks trained from images; 0: keep the frozen features
FT_EPOCHS=${FT_EPOCHS:-3}
FT_FLAGS=${FT_FLAGS:-"--encoder-lr 5e-5 --lr 1e-4 --amp --num-workers 4"}
SCST_EPOCHS=${SCST_EPOCHS:-10}
SCST_FLAGS=${SCST_FLAGS:-"--objective scst --lr 1e-4 --lr-decay 0.5 --lr-patience 0"}
SCST_FT_FLAGS=${SCST_FT_FLAGS:-"--encoder-lr 1e-5 --amp --num-workers 4"}
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
# evaluate RUN_NAME: its best checkpoint with $BEAM and $LENGTH_PENALTY on val (the split that
# selected it and every setting here) and, when the data has one, on test (held out: nothing was
# tuned on it)
SPLITS=$(.venv/bin/python -c "import json, sys; s = json.load(open(sys.argv[1]))['splits']; \
print(' '.join(x for x in ('val', 'test') if x in s))" "$OUT/data/meta.json")
evaluate() {
  for split in $SPLITS; do
    if [ ! -f "$OUT/$1/${split}_metrics.json" ]; then
      $CAP evaluate --model "$OUT/$1/best.safetensors" --data "$OUT/data" --split "$split" \
          --beam-size "$BEAM" --length-penalty "$LENGTH_PENALTY" \
          --results "$OUT/$1/${split}_results.json" --metrics "$OUT/$1/${split}_metrics.json"
    fi
  done
}
for ATT in soft hard; do
  train "$ATT" --attention "$ATT" --epochs "$EPOCHS" $TRAIN_FLAGS
  evaluate "$ATT"
done
RESULTS="soft hard"
FROM=soft
if [ "$FINE_TUNE" != 0 ]; then
  # the soft model with its encoder's last blocks trained too, from the images at the same
  # preprocessing as the features (the likelihood objective, a lower learning rate)
  train soft_ft --init "$OUT/soft/best.safetensors" --fine-tune "$FINE_TUNE" \
      --epochs "$FT_EPOCHS" $FT_FLAGS
  evaluate soft_ft
  RESULTS="$RESULTS soft_ft"
  FROM=soft_ft
  SCST_FLAGS="$SCST_FLAGS --fine-tune $FINE_TUNE $SCST_FT_FLAGS"
fi
# self-critical training of the soft model on CIDEr-D (Rennie et al. 2017)
train soft_scst --init "$OUT/$FROM/best.safetensors" --epochs "$SCST_EPOCHS" $SCST_FLAGS
evaluate soft_scst
.venv/bin/python - "$OUT" "$(( $(date +%s) - start ))" $RESULTS soft_scst <<'PY'
import json, os, sys
out, seconds, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
rows = ["Val selected every checkpoint and setting; test was held out (\"-\": the data has no test split).", "",
        "| model | split | " + " | ".join(c.replace("BLEU-", "B-") for c in cols) +
        " | attention entropy / log P | distinct captions | words used |",
        "|---|---|" + "---|" * (len(cols) + 3)]
for run in runs:
    for split in ("val", "test"):
        path = f"{out}/{run}/{split}_metrics.json"
        if not os.path.exists(path):
            rows.append(f"| {run} | {split} | " + " | ".join("-" for _ in range(len(cols) + 3)) + " |")
            continue
        m = json.load(open(path))
        g = lambda k: f"{100 * m[k]:.1f}" if k in m else "-"
        rows.append(f"| {run} (beam {int(m['beam_size'])}, lp {m['length_penalty']:g}) | "
                    f"{split}{' (selection)' if split == 'val' else ''} | "
                    + " | ".join(g(f"coco/{c}") for c in cols) +
                    f" | {m['attention_entropy']:.2f} / {m['attention_entropy_uniform']:.2f} | "
                    f"{int(m['distinct_captions'])} / {int(m['images'])} | {int(m['vocabulary_used'])} |")
rows.append(f"\nwall time: {seconds / 60:.1f} min")
open(f"{out}/results.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
