"""Train/inference parity: captioning an image file gives exactly the caption `evaluate`
produces from that image's prepared features (the peers' "same caption for every image" bug)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data as skdata  # a declared dependency: a broken install fails, never skips
from conftest import tiny_config
from PIL import Image

from captioner.config import TrainConfig
from captioner.data.dataset import PreparedData
from captioner.data.karpathy import read_karpathy
from captioner.data.prepare import FeatureSpec, prepare
from captioner.decoding import DecodeOptions
from captioner.evaluate import decode_split
from captioner.inference import Captioner
from captioner.train import train


def _photos(folder):
    """Real photos in awkward forms: odd sizes, grayscale, RGBA, EXIF-rotated JPEG."""
    folder.mkdir()
    names = []
    for i, (name, mode, size) in enumerate([("astronaut", "RGB", (300, 200)),
                                            ("coffee", "L", (160, 120)),
                                            ("chelsea", "RGBA", (150, 170)),
                                            ("rocket", "RGB", (120, 180))]):
        img = Image.fromarray(getattr(skdata, name)()).convert(mode).resize(size)
        path = folder / f"{name}.{'png' if mode == 'RGBA' else 'jpg'}"
        if name == "rocket":
            exif = Image.Exif()
            exif[0x0112] = 6  # rotated: the loader must turn it upright
            img.save(path, exif=exif)
        else:
            img.save(path)
        names.append((path.name, i))
    return names


@pytest.mark.parametrize("encoder", ["tiny", "efficientnet_lite0"])
@pytest.mark.slow
def test_caption_of_an_image_file_equals_the_caption_from_prepared_features(tmp_path, encoder):
    names = _photos(tmp_path / "images")
    words = "a cat dog man woman cup of coffee on table in space rocket sitting".split()
    rng = np.random.default_rng(0)
    images = [{"filename": n, "filepath": "", "split": split, "imgid": i,
               "sentences": [{"raw": " ".join(rng.choice(words, 6))} for _ in range(3)]}
              for n, i in names for split in ["train"]]
    images += [dict(im, split="val") for im in images]  # the same photos again as val
    spec = tmp_path / "dataset.json"
    spec.write_text(json.dumps({"images": images}))
    data_dir = tmp_path / "data"
    prepare(read_karpathy(spec, tmp_path / "images"), data_dir, "karpathy", min_count=1,
            progress=False, features=FeatureSpec(encoder, grid_size=4), workers=0)
    run = tmp_path / "run"
    train(tiny_config(encoder=None, hidden_dim=32), TrainConfig(data=str(data_dir), out=str(run), batch_size=2,
                                                  max_steps=4, progress=False))
    cap = Captioner.load(run / "best.safetensors", device="cpu")
    data = PreparedData(data_dir)
    from_features = decode_split(cap.model, cap.vocab, data, "val", DecodeOptions(beam_size=3))
    assert len(from_features) == 4
    paths = {e["image_id"]: data.image_path(e) for e in data.manifest("val")}
    for pred in from_features:
        path = paths[pred.image_id]
        assert cap.caption(path, DecodeOptions(beam_size=3))[0].words == pred.words, path
