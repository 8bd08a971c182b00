# Recipe fast: from the Flickr8k JPEGs to a soft-attention model in under 30 minutes on 2 CPU
# cores, preparation included (`RECIPE=fast bash scripts/flickr8k.sh DATA OUT`). The lite0
# recipe's likelihood stage for one soft model, shortened to 4 epochs with --seed 1 (the seed of
# the lite0 recipe's best run, L3/L4 in results/flickr8k-likelihood.md), its epochs averaged, no
# hard model, no fine-tuning, no self-critical stage and no ensembles. Stage times and the
# model's val figures: benchmarks/README.md ("fast recipe").
#
# Measured 2026-12-05 on 2 idle CPU cores (AMD EPYC VM): 22.7 min in all, val BLEU-4 20.4 and
# CIDEr 47.2 (its soft_avg_next, beam 5): 2.5 min to prepare the 14x14 Lite0 features (the
# encoder on ONNX Runtime, the `fast` extra; ~35 min on eager PyTorch), 4.7 min per epoch, 25 s
# per evaluation.
. "$RECIPES/lite0.sh"
KINDS="soft"
EPOCHS=4
TRAIN_FLAGS="$TRAIN_FLAGS --seed 1"
FINE_TUNE=0
SCST_EPOCHS=0
SEEDS=""
AVERAGE=3
