# Recipe fast: from the Flickr8k JPEGs to a soft-attention model in under 30 minutes on 2 CPU
# cores, preparation included (`RECIPE=fast bash scripts/flickr8k.sh DATA OUT`). The lite0
# recipe's likelihood stage for one soft model, shortened to 4 epochs with --seed 1 (the seed of
# the lite0 recipe's best run, L3/L4 in results/flickr8k-likelihood.md), its epochs averaged, no
# hard model, no fine-tuning, no self-critical stage and no ensembles. Stage times and the
# model's val figures: benchmarks/README.md ("fast recipe").
#
# Where the time goes on 2 cores: ~3 min to prepare the 14x14 Lite0 features (the encoder on
# ONNX Runtime, the `fast` extra; ~35 min on eager PyTorch), ~5.5 min per epoch, ~1 min to
# average and evaluate.
. "$RECIPES/lite0.sh"
KINDS="soft"
EPOCHS=4
TRAIN_FLAGS="$TRAIN_FLAGS --seed 1"
FINE_TUNE=0
SCST_EPOCHS=0
SEEDS=""
AVERAGE=3
