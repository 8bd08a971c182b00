# Recipe lite0 (the default of scripts/flickr8k.sh): the measured best likelihood stage on
# Flickr8k val, then the encoder's last blocks fine-tuned and self-critical training.
# Results: results/flickr8k-likelihood.md (rows L1-L4), results/README.md (model zoo).
#
# EfficientNet-Lite0 features at 448 px input (its 14x14x1280 grid); 5 epochs of batches of 64
# (image, caption) pairs, embedding and attention 512, lambda (alpha_c) 0.06, dropout 0.3,
# Adam 4e-4 halved after every epoch that does not raise val CIDEr-D, which also keeps
# best.safetensors; each epoch's weights kept and averaged (AVERAGE). Then 3 epochs with the
# encoder's last 3 blocks trained, then 10 epochs of self-critical training of both; every
# model evaluated with beam 5 ranked by log p / length^0.5.
#
# A recipe is sourced by scripts/flickr8k.sh and sets every variable below; a variable given in
# the environment wins over the recipe's value (e.g. `EPOCHS=3 bash scripts/flickr8k.sh ...`).
FEATURES="--features efficientnet_lite0 --grid 14 --image-size 448"  # prepare's encoder flags
KINDS="soft hard"   # the attention kinds trained (each through every stage below)
EPOCHS=5            # likelihood epochs of each soft and hard model
BEAM=5              # evaluation: beam size
LENGTH_PENALTY=0.5  # evaluation: rank by log p / length ** this
TRAIN_FLAGS="--batch-by caption --batch-size 64 --embed-dim 512 --attention-dim 512
  --alpha-c 0.06 --dropout 0.3 --lr 4e-4 --lr-decay 0.5 --lr-patience 0 --select-by CIDEr-D"
HARD_FLAGS=""       # hard's own likelihood flags (e.g. "--hard-baseline expected")
FINE_TUNE=3         # encoder blocks trained from images; 0: keep the frozen features
FT_EPOCHS=3         # epochs of that fine-tuning (the likelihood objective)
FT_FLAGS="--encoder-lr 5e-5 --lr 1e-4 --amp --num-workers 4"
SCST_EPOCHS=10      # epochs of self-critical training
SCST_FLAGS="--objective scst --lr 1e-4 --lr-decay 0.5 --lr-patience 0"
SCST_FT_FLAGS="--encoder-lr 1e-5 --amp --num-workers 4"  # added to SCST_FLAGS when FINE_TUNE > 0
SCST_CHOICES=1      # also hard's SCST with its locations sampled and trained; 0: not
SEEDS="1 2"         # more likelihood models of each kind, for the ensembles ("": none)
AVERAGE=3           # each likelihood model also averaged over AVERAGE epochs up to its best and
                    # over AVERAGE epochs ending one past it; 0: not
