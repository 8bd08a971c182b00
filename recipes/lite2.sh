# Recipe lite2 ("the Lite2 settings", the script's default before lite0): EfficientNet-Lite2
# features at 288 px (its 9x9x1280 grid), 8 likelihood epochs with lambda (alpha_c) 0, dropout
# 0.3, Adam 4e-4 and the trainer's other defaults (batches of 32 images with all their captions,
# embedding and attention 256, best.safetensors by val BLEU-4); every later stage as in lite0.
# Its runs gave the held-out test figures and the best val model (encoder fine-tuned, then SCST:
# val BLEU-4 21.7, CIDEr 50.8). Results: results/README.md (model zoo), results/self-critical.md,
# results/hard-attention.md, results/ensembles-averaging.md.
. "$RECIPES/lite0.sh"
FEATURES="--features efficientnet_lite2 --grid 9 --image-size 288"
EPOCHS=8
TRAIN_FLAGS="--alpha-c 0 --lr 4e-4 --dropout 0.3"
