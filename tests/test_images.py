"""Safe image loading: every mode becomes sensible RGB, every bad file one line naming it."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import captioner.data.images as images
from captioner.config import Preprocess
from captioner.data.images import ImageError, build_transform, load_image

RED = (200, 50, 0)


def solid(color=RED, size=(60, 40)) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = color
    return Image.fromarray(arr)


def rgb_of(path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def png_header(path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR claiming width x height, and no pixel data (a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def assert_one_line_error(path, match: str) -> None:
    with pytest.raises(ImageError, match=match) as err:
        load_image(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


# ---- bad files: one clear line naming the file ----

def test_missing_file_is_an_image_error_naming_it(tmp_path):
    assert_one_line_error(tmp_path / "missing.jpg", "no such image file")


def test_a_directory_is_not_an_image(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert_one_line_error(tmp_path / "folder.jpg", "is a folder, not an image file")


def test_empty_file_is_an_image_error_naming_it(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert_one_line_error(tmp_path / "empty.jpg", "empty file")


def test_text_file_named_jpg_is_an_image_error_naming_it(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    assert_one_line_error(tmp_path / "notes.jpg", "not an image file")


def test_truncated_jpeg_is_an_image_error_naming_it(tmp_path):
    solid().save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert_one_line_error(tmp_path / "cut.jpg", "corrupt or truncated")


def test_decompression_bomb_header_is_refused_without_decoding(tmp_path):
    png_header(tmp_path / "bomb.png", 20_000, 20_000)  # 400 Mpixel claimed, 40 bytes on disk
    assert_one_line_error(tmp_path / "bomb.png", "decompression bomb")


def test_bomb_is_refused_even_when_pillows_own_guard_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    png_header(tmp_path / "bomb.png", 10_000, 9_000)
    assert_one_line_error(tmp_path / "bomb.png", "too large")


def test_image_over_max_pixels_is_refused(tmp_path, monkeypatch):
    solid(size=(20, 10)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 199)
    assert_one_line_error(tmp_path / "big.png", "too large")
    monkeypatch.setattr(images, "MAX_PIXELS", 200)
    assert load_image(tmp_path / "big.png").size == (20, 10)


# ---- every mode loads as 8-bit RGB with sensible values ----

@pytest.mark.parametrize("name, save", [
    ("rgb.png", {}),
    ("rgb.jpg", {"quality": 95}),
    ("cmyk.jpg", {"quality": 95, "mode": "CMYK"}),
    ("palette.png", {"mode": "P"}),
    ("palette.gif", {"mode": "P"}),
])
def test_colour_images_load_as_rgb_with_their_colour(tmp_path, name, save):
    save = dict(save)
    mode = save.pop("mode", None)
    img = solid()
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode:
        img = img.convert(mode)
    img.save(tmp_path / name, **save)
    pixels = rgb_of(tmp_path / name)
    assert pixels.shape == (40, 60, 3)
    assert np.abs(pixels - RED).max() <= 3


def test_grayscale_loads_with_three_equal_channels(tmp_path):
    ramp = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (10, 1))  # (10, 50)
    Image.fromarray(ramp, "L").save(tmp_path / "gray.png")
    pixels = rgb_of(tmp_path / "gray.png")
    for c in range(3):
        assert np.array_equal(pixels[..., c], ramp)


def test_one_bit_image_loads_as_black_and_white(tmp_path):
    arr = np.zeros((8, 8), bool)
    arr[:, 4:] = True
    Image.fromarray(arr).save(tmp_path / "bw.png")
    pixels = rgb_of(tmp_path / "bw.png")
    assert (pixels[:, :4] == 0).all() and (pixels[:, 4:] == 255).all()


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., :3] = RED
    arr[5:, :, 3] = 255  # bottom half opaque, top half fully transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "alpha.png")
    pixels = rgb_of(tmp_path / "alpha.png")
    assert (pixels[:5] == 255).all()
    assert (pixels[5:] == RED).all()


def test_palette_transparency_is_composited_on_white(tmp_path):
    arr = np.zeros((10, 10), np.uint8)
    arr[:5] = 1  # top half uses entry 1, declared transparent
    img = Image.fromarray(arr, "P")
    img.putpalette([*RED, 0, 0, 255])
    img.save(tmp_path / "clear.png", transparency=1)
    assert Image.open(tmp_path / "clear.png").mode == "P"
    pixels = rgb_of(tmp_path / "clear.png")
    assert (pixels[:5] == 255).all()
    assert (pixels[5:] == RED).all()


def test_sixteen_bit_grayscale_is_rescaled_not_clipped_to_white(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = rgb_of(tmp_path / "deep.png")
    row = pixels[0, :, 0]
    assert row[0] <= 1 and row[-1] >= 254
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 50
    assert np.abs(row - np.linspace(0, 255, 64)).max() <= 2


def test_sixteen_bit_pixel_brightness_does_not_depend_on_other_pixels(tmp_path):
    # 200 of 65535 is almost black, whether or not some other pixel is brighter than 255
    dark = np.full((4, 4), 200, np.uint16)
    with_bright = dark.copy()
    with_bright[0, 0] = 1000
    Image.fromarray(dark).save(tmp_path / "dark.png")
    Image.fromarray(with_bright).save(tmp_path / "bright.png")
    assert rgb_of(tmp_path / "bright.png")[3, 3, 0] <= 1
    assert rgb_of(tmp_path / "dark.png")[3, 3, 0] <= 1


@pytest.mark.parametrize("orientation, turn", [(6, -1), (8, 1)])  # np.rot90 k: -1 clockwise
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:20, :30] = (250, 0, 0)  # a red top-left quadrant shows which way it turned
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "turned.jpg")
    assert img.size == (40, 60)  # width and height swapped
    pixels = np.asarray(img).astype(int)
    expected = np.rot90(arr, k=turn).astype(int)
    assert np.abs(pixels - expected).mean() < 5
    assert np.abs(pixels - np.rot90(arr, k=-turn)).mean() > 30


def test_a_real_photo_loads_unchanged(tmp_path):
    from skimage import data

    photo = data.chelsea()[::4, ::4]
    Image.fromarray(photo).save(tmp_path / "cat.png")
    assert np.array_equal(rgb_of(tmp_path / "cat.png"), photo)


# ---- the transform ----

@pytest.mark.parametrize("pre", [Preprocess(64, 0, (0.5,) * 3, (0.5,) * 3), Preprocess(72, 64)])
def test_a_one_pixel_image_transforms_to_the_model_size(tmp_path, pre):
    solid(color=(77, 77, 77), size=(1, 1)).save(tmp_path / "dot.png")
    x = build_transform(pre)(load_image(tmp_path / "dot.png"))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    expected = torch.tensor([(77 / 255 - m) / s for m, s in zip(pre.mean, pre.std)])
    assert torch.allclose(x, expected[:, None, None].expand_as(x), atol=1e-3)


def test_transform_squashes_or_crops_any_aspect_to_a_square():
    wide = solid(size=(90, 30))
    assert build_transform(Preprocess(32, 0))(wide).shape == (3, 32, 32)
    assert build_transform(Preprocess(36, 32))(wide).shape == (3, 32, 32)
    tall = solid(size=(7, 50))
    assert build_transform(Preprocess(36, 32))(tall).shape == (3, 32, 32)


@pytest.mark.parametrize("size, resize, crop", [((300, 200), 224, 0), ((200, 300), 256, 224),
                                                 ((150, 170), 64, 0), ((90, 60), 128, 112),
                                                 ((64, 64), 64, 0)])
def test_transform_gives_torchvision_v2_pixels(size, resize, crop):
    """Our plain-torch transform equals torchvision's Resize/CenterCrop/Normalize pipeline."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2 as T

    from captioner.config import Preprocess
    from captioner.data.images import build_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pre = Preprocess(resize, crop, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    steps = [T.ToImage(), T.Resize(resize if crop else (resize, resize),
                                   interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    steps += [T.CenterCrop(crop)] if crop else []
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(list(pre.mean), list(pre.std))]
    expected = T.Compose(steps)(image)
    ours = build_transform(pre)(image)
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, atol=1e-5)
