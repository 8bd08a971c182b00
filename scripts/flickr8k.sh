#!/usr/bin/env bash
# Reproduce the Flickr8k results: prepare features; train soft and hard attention (and more
# seeds of each), each also averaged over epochs up to its best and one past it; for each kind,
# fine-tune the encoder's last blocks, then self-critical training (for hard also with its
# locations in the policy); evaluate every model and the ensembles on val and, when the data has
# one, on test; write a results table (OUT/results.md).
#   usage: [RECIPE=name] [VAR=value ...] bash scripts/flickr8k.sh DATA_DIR OUT_DIR
#          (DATA_DIR holds dataset_flickr8k.json and images/; e.g. ../shared/data/flickr8k)
# The settings come from recipes/$RECIPE.sh (default lite0: the measured best on val; fast: one
# soft model in under 30 minutes on 2 CPU cores; lite2: the earlier Lite2 9x9 default); a
# variable given in the environment wins over the recipe's (the variables are listed in
# recipes/lite0.sh). A new recipe is one file in recipes/ that sets them all (it may source
# "$RECIPES/lite0.sh" first and change a few). Results: results/.
# Uses the GPU when there is one (prepare and train). Wall time on 2 CPU cores: ~2.5 min to prepare
# the Lite0 features (ONNX Runtime) and ~4.7 min per likelihood epoch (benchmarks/README.md,
# "fast recipe"); measured before those speedups (results/README.md): ~16 min per epoch of
# fine-tuning (3) and ~27 min per epoch of self-critical training (10), about 7 h per kind; on
# one H100 shared by 8 runs, ~40 s per fine-tuning epoch and ~30 s per self-critical epoch.
# FINE_TUNE=0 skips training the encoder (self-critical training then runs on the frozen
# features), SCST_EPOCHS=0 the self-critical stage; KINDS="soft" trains soft attention only.
# Each stage prints a line with the wall time so far, and its own progress bar and ETA on a
# terminal. A killed run resumes where it stopped. Flickr8k is for research use only: nothing it
# makes belongs in git.
set -euo pipefail
DATA=${1:?usage: flickr8k.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: flickr8k.sh DATA_DIR OUT_DIR}
RECIPES=$(cd "$(dirname "$0")/../recipes" && pwd)
RECIPE=${RECIPE:-lite0}
KNOWN=()
for f in "$RECIPES"/*.sh; do KNOWN+=("$(basename "$f" .sh)"); done
found=0
for name in "${KNOWN[@]}"; do [ "$name" = "$RECIPE" ] && found=1; done
[ "$found" = 1 ] || { echo "flickr8k.sh: unknown RECIPE '$RECIPE'; the recipes (recipes/*.sh):" \
    "${KNOWN[*]}" >&2; exit 2; }
# the settings every recipe sets; HARD_FLAGS and SEEDS may be given empty, the others only
# count when not empty (as `VAR=${VAR:-default}` did before recipes)
SETTINGS="FEATURES KINDS EPOCHS BEAM LENGTH_PENALTY TRAIN_FLAGS HARD_FLAGS FINE_TUNE FT_EPOCHS
  FT_FLAGS SCST_EPOCHS SCST_FLAGS SCST_FT_FLAGS SCST_CHOICES SEEDS AVERAGE"
declare -A GIVEN=()
for var in $SETTINGS; do
  case $var in
    HARD_FLAGS|SEEDS) [ -z "${!var+x}" ] || GIVEN[$var]=${!var} ;;
    *) [ -z "${!var:-}" ] || GIVEN[$var]=${!var} ;;
  esac
  unset "$var"
done
# shellcheck source=../recipes/lite0.sh
. "$RECIPES/$RECIPE.sh"
for var in "${!GIVEN[@]}"; do printf -v "$var" '%s' "${GIVEN[$var]}"; done
for var in $SETTINGS; do
  [ -n "${!var+x}" ] || { echo "flickr8k.sh: recipes/$RECIPE.sh does not set $var" \
      "(see recipes/lite0.sh for the list)" >&2; exit 2; }
done
RECIPE_NOTE="recipe $RECIPE (recipes/$RECIPE.sh)"
for var in "${!GIVEN[@]}"; do RECIPE_NOTE="$RECIPE_NOTE, $var=${!var} from the environment"; done
echo "flickr8k.sh: $RECIPE_NOTE" >&2
KEEP=()
[ "$AVERAGE" != 0 ] && KEEP=(--keep-epochs)
# the folders as given from where the script was started, before it moves to the repository
[ -d "$DATA" ] || { echo "flickr8k.sh: $DATA: no such folder" >&2; exit 2; }
DATA=$(cd "$DATA" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CAP=.venv/bin/captioner
start=$(date +%s)
# stage WHAT: one line on stderr with the wall time so far (each stage shows its own progress
# bar and ETA on a terminal)
stage() {
  local s=$(( $(date +%s) - start ))
  printf 'flickr8k.sh [%d:%02d]: %s\n' $(( s / 60 )) $(( s % 60 )) "$*" >&2
}
mkdir -p "$OUT"
if [ ! -f "$OUT/data/meta.json" ]; then
  stage "prepare: $FEATURES"
  $CAP prepare karpathy --json "$DATA/dataset_flickr8k.json" --images "$DATA/images" \
      --out "$OUT/data" $FEATURES --min-count 5
fi
# train RUN_NAME FLAGS...: train into $OUT/RUN_NAME unless it finished; a killed run resumes
train() {
  local run=$1; shift
  if [ ! -f "$OUT/$run/done" ]; then
    stage "train $run"
    local resume=()
    [ -f "$OUT/$run/last.safetensors" ] && resume=(--resume)
    $CAP train --data "$OUT/data" --out "$OUT/$run" "$@" ${resume[@]+"${resume[@]}"}
    date > "$OUT/$run/done"
  fi
}
# evaluate NAME [CKPT...]: the checkpoints (default: run NAME's best; several: one ensemble)
# with $BEAM and $LENGTH_PENALTY on val (the split that selected them and every setting here)
# and, when the data has one, on test (held out: nothing was tuned on it), into $OUT/NAME
SPLITS=$(.venv/bin/python -c "import json, sys; s = json.load(open(sys.argv[1]))['splits']; \
print(' '.join(x for x in ('val', 'test') if x in s))" "$OUT/data/meta.json")
evaluate() {
  local name=$1; shift
  local models=("$@")
  [ ${#models[@]} -gt 0 ] || models=("$OUT/$name/best.safetensors")
  mkdir -p "$OUT/$name"
  for split in $SPLITS; do
    if [ ! -f "$OUT/$name/${split}_metrics.json" ]; then
      stage "evaluate $name on $split"
      $CAP evaluate --model "${models[@]}" --data "$OUT/data" --split "$split" \
          --beam-size "$BEAM" --length-penalty "$LENGTH_PENALTY" \
          --results "$OUT/$name/${split}_results.json" --metrics "$OUT/$name/${split}_metrics.json"
    fi
  done
  RESULTS="$RESULTS $name"
}
best() { for run in "$@"; do echo "$OUT/$run/best.safetensors"; done; }
# averaged RUN: RUN's AVERAGE epochs up to its best averaged into RUN_avg, and those ending one
# past its best into RUN_avg_next (on Flickr8k each set won for one seed), each evaluated (when
# AVERAGE > 0; a set of fewer than two epochs, or one past a best that is the last epoch, is
# said and skipped)
averaged() {
  [ "$AVERAGE" != 0 ] || return 0
  local past name
  for past in 0 1; do
    name=${1}_avg
    [ "$past" = 1 ] && name=${1}_avg_next
    if [ ! -f "$OUT/$name/best.safetensors" ]; then
      mkdir -p "$OUT/$name"
      $CAP average --run "$OUT/$1" --up-to-best "$AVERAGE" --past-best "$past" \
          -o "$OUT/$name/best.safetensors" || { rmdir "$OUT/$name"; continue; }
    fi
    evaluate "$name"
  done
}
# chosen RUN: whichever of RUN, RUN_avg and RUN_avg_next has the highest val CIDEr (RUN on ties)
chosen() {
  .venv/bin/python - "$OUT" "$1" <<'PY'
import json, os, sys
out, run = sys.argv[1:]
def cider(name):
    path = f"{out}/{name}/val_metrics.json"
    return json.load(open(path))["coco/CIDEr"] if os.path.exists(path) else -1.0
print(max([run, run + "_avg", run + "_avg_next"], key=cider))
PY
}
RESULTS=""
has_kind() { [[ " $KINDS " == *" $1 "* ]]; }
# the likelihood models of each kind (soft, hard), and more seeds of each for the ensembles
for ATT in $KINDS; do
  KIND_FLAGS=$TRAIN_FLAGS
  [ "$ATT" = hard ] && KIND_FLAGS="$KIND_FLAGS $HARD_FLAGS"
  train "$ATT" --attention "$ATT" --epochs "$EPOCHS" $KIND_FLAGS ${KEEP[@]+"${KEEP[@]}"}
  evaluate "$ATT"
  averaged "$ATT"
  for SEED in $SEEDS; do
    train "${ATT}_seed$SEED" --attention "$ATT" --epochs "$EPOCHS" --seed "$SEED" $KIND_FLAGS \
        ${KEEP[@]+"${KEEP[@]}"}
    evaluate "${ATT}_seed$SEED"
    averaged "${ATT}_seed$SEED"
  done
done
# each kind with its encoder's last blocks trained too, from the images at the same
# preprocessing as the features (the likelihood objective, a lower learning rate), then
# self-critical training on CIDEr-D (Rennie et al. 2017); neither when FINE_TUNE and SCST_EPOCHS
# are 0
for ATT in $KINDS; do
  [ "$FINE_TUNE" != 0 ] || [ "$SCST_EPOCHS" != 0 ] || break
  FROM=$(chosen "$ATT")
  FLAGS=$SCST_FLAGS
  if [ "$FINE_TUNE" != 0 ]; then
    train "${ATT}_ft" --init "$OUT/$FROM/best.safetensors" --fine-tune "$FINE_TUNE" \
        --epochs "$FT_EPOCHS" $FT_FLAGS
    evaluate "${ATT}_ft"
    FROM=${ATT}_ft
    FLAGS="$FLAGS --fine-tune $FINE_TUNE $SCST_FT_FLAGS"
  fi
  [ "$SCST_EPOCHS" != 0 ] || continue
  train "${ATT}_scst" --init "$OUT/$FROM/best.safetensors" --epochs "$SCST_EPOCHS" $FLAGS
  evaluate "${ATT}_scst"
  if [ "$ATT" = hard ] && [ "$SCST_CHOICES" != 0 ]; then
    # the same stage with the sampled locations in the policy, REINFORCE over both
    train hard_scst_choices --init "$OUT/$FROM/best.safetensors" --epochs "$SCST_EPOCHS" \
        $FLAGS --scst-choices
    evaluate hard_scst_choices
  fi
done
# ensembles (`captioner evaluate --model A B ...`): the seeds of each kind, soft with hard,
# and the two final models (those of the kinds trained)
SOFT_SEEDS=() HARD_SEEDS=()
for SEED in "" $SEEDS; do
  has_kind soft && SOFT_SEEDS+=("$(chosen "soft${SEED:+_seed$SEED}")")
  has_kind hard && HARD_SEEDS+=("$(chosen "hard${SEED:+_seed$SEED}")")
done
if [ -n "$SEEDS" ]; then
  has_kind soft && evaluate ensemble_soft $(best "${SOFT_SEEDS[@]}")
  has_kind hard && evaluate ensemble_hard $(best "${HARD_SEEDS[@]}")
  has_kind soft && has_kind hard && evaluate ensemble_likelihood \
      $(best "${SOFT_SEEDS[@]}" "${HARD_SEEDS[@]}")
fi
if has_kind soft && has_kind hard; then
  evaluate ensemble_soft_hard $(best "${SOFT_SEEDS[0]}" "${HARD_SEEDS[0]}")
  [ "$SCST_EPOCHS" = 0 ] || evaluate ensemble_final $(best soft_scst hard_scst)
fi
stage "done: $OUT/results.md"
RECIPE_NOTE=$RECIPE_NOTE .venv/bin/python - "$OUT" "$(( $(date +%s) - start ))" $RESULTS <<'PY'
import json, os, platform, sys
import torch
out, seconds, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
def trained_minutes(run):  # the run's wall time over all its processes, when it trained one
    path = f"{out}/{run}/metrics.jsonl"
    times = [json.loads(line).get("minutes") for line in open(path)] if os.path.exists(path) else []
    times = [t for t in times if t is not None]
    return f"{times[-1]:.0f}" if times else "-"
cpu = platform.processor() or platform.machine()
if os.path.exists("/proc/cpuinfo"):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), cpu)
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
rows = [f"Settings: {os.environ['RECIPE_NOTE']}.",
        "Val selected every checkpoint and setting; test was held out (\"-\": the data has no test split).",
        f"Machine: {cpu}, {os.cpu_count()} CPU threads, {gpu}; training minutes are each run's wall "
        "time on the machines that trained it (\"-\": averaged weights, an ensemble).", "",
        "| model | split | " + " | ".join(c.replace("BLEU-", "B-") for c in cols) +
        " | attention entropy / log P | distinct captions | words used | training min |",
        "|---|---|" + "---|" * (len(cols) + 4)]
for run in runs:
    minutes = trained_minutes(run)
    for split in ("val", "test"):
        path = f"{out}/{run}/{split}_metrics.json"
        if not os.path.exists(path):
            rows.append(f"| {run} | {split} | " + " | ".join("-" for _ in range(len(cols) + 4)) + " |")
            continue
        m = json.load(open(path))
        g = lambda k: f"{100 * m[k]:.1f}" if k in m else "-"
        models = f", {int(m['models'])} models" if m.get("models", 1) > 1 else ""
        rows.append(f"| {run} (beam {int(m['beam_size'])}, lp {m['length_penalty']:g}{models}) | "
                    f"{split}{' (selection)' if split == 'val' else ''} | "
                    + " | ".join(g(f"coco/{c}") for c in cols) +
                    f" | {m['attention_entropy']:.2f} / {m['attention_entropy_uniform']:.2f} | "
                    f"{int(m['distinct_captions'])} / {int(m['images'])} | {int(m['vocabulary_used'])} | "
                    f"{minutes} |")
rows.append(f"\nwall time: {seconds / 60:.1f} min")
open(f"{out}/results.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
