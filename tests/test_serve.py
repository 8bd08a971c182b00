"""The HTTP service: captions equal to the Python API's, the bad-input battery answered with
one-line 4xx JSON errors while the service keeps serving, and no mix-ups across a batch."""

from __future__ import annotations

import asyncio
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from fastapi.testclient import TestClient
from PIL import Image

from captioner.checkpoint import save_checkpoint
from captioner.config import ServeOptions
from captioner.decoding import DecodeOptions
from captioner.inference import Captioner
from captioner.models import build_model
from captioner.serve import create_app, describe_model
from captioner.serve.batching import Batcher
from captioner.vocab import Vocabulary


def random_checkpoint(shapes_dir: Path, path: Path) -> Path:
    """An untrained tiny model with the shapes vocabulary: instant to make, and its weights
    drawn wide enough (std 0.3) that the captions differ from image to image."""
    vocab = Vocabulary.load(shapes_dir / "vocab.json")
    torch.manual_seed(3)
    model = build_model(tiny_config(vocab_size=len(vocab), hidden_dim=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    save_checkpoint(path, model.config, vocab, model.state_dict())
    return path


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory) -> Path:
    return random_checkpoint(shapes_dir, tmp_path_factory.mktemp("serve") / "m.safetensors")


@pytest.fixture(scope="module")
def cap(checkpoint) -> Captioner:
    return Captioner.load(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def client(cap, checkpoint):
    app = create_app(cap, describe_model(cap, checkpoint),
                     ServeOptions(max_upload_mb=0.5, max_images=4, max_wait_ms=20))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[Path]:
    return sorted((shapes_dir / "images").glob("test_*.png"))


def _files(*items):
    return [("images", (name, data, "application/octet-stream")) for name, data in items]


def _good(client, image: Path) -> None:
    r = client.post("/v1/captions", files=_files((image.name, image.read_bytes())))
    assert r.status_code == 200 and r.json()["results"][0]["captions"][0]["words"]


def _same(got: dict, want) -> None:
    assert got["text"] == want.text and got["words"] == want.words
    assert got["score"] == pytest.approx(want.score, abs=1e-3)
    assert got["log_prob"] == pytest.approx(want.log_prob, abs=1e-3)
    assert torch.allclose(torch.tensor(got["attention"]), want.alpha.float(), atol=1e-4)


def test_captions_equal_the_python_api_with_words_scores_and_attention(client, cap, images):
    r = client.post("/v1/captions?beam_size=4&n_best=3&length_penalty=0.5",
                    files=_files(*((p.name, p.read_bytes()) for p in images[:3])))
    assert r.status_code == 200
    body = r.json()
    assert body["grid_size"] == 4 and body["options"]["beam_size"] == 4
    want = cap.caption(images[:3], beam_size=4, n_best=3, length_penalty=0.5)
    for result, path, expected in zip(body["results"], images, want):
        assert result["filename"] == path.name and (result["width"], result["height"]) == (64, 64)
        assert len(result["captions"]) == 3
        for got, w in zip(result["captions"], expected):
            _same(got, w)
            assert len(got["attention"]) == len(got["words"])
            assert all(len(row) == 16 for row in got["attention"])


def test_default_options_are_the_clis(client, cap, images):
    body = client.post("/v1/captions", files=_files(("x.png", images[0].read_bytes()))).json()
    assert {k: body["options"][k] for k in ("beam_size", "n_best", "length_penalty")} == \
        {"beam_size": DecodeOptions.beam_size, "n_best": 1, "length_penalty": 0.0}
    _same(body["results"][0]["captions"][0], cap.caption(images[0])[0])


def test_model_health_docs_and_page(client):
    model = client.get("/v1/model").json()
    assert model["encoder"] == "tiny" and model["attention"] == "soft"
    assert model["grid_size"] == 4 and model["vocab_size"] > 4
    assert model["preprocess"]["resize"] == 64 and model["limits"]["max_beam_size"] == 20
    assert client.get("/healthz").json()["status"] == "ok"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text  # /docs works offline too
    assets = re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js))"', docs.text)
    assert len(assets) >= 2 and all(client.get(a).status_code == 200 for a in assets), assets
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    # every asset comes from the package: no network needed to show the page
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text and "@import" not in text


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(out, "PNG")  # a few KB that decode to 100 M pixels
    return out.getvalue()


def _big(size: int) -> bytes:
    return b"\x89PNG" + bytes(size)


@pytest.mark.parametrize("case, status, message", [
    ("not an image", 400, "notes.txt: not an image file Pillow can read"),
    ("empty", 400, "empty.png: empty file"),
    ("truncated", 400, "cut.png: corrupt or truncated image"),
    ("bomb", 400, "bomb.png: too large, possible decompression bomb"),
    ("over the upload limit", 413, "huge.png: 0.6 MB is over the 0.5 MB upload limit"),
    ("body over the limit", 413, "request body is over the upload limit"),
    ("no file field", 422, "images: no file field"),
    ("a text field instead of a file", 422, "not a file upload"),
    ("too many images", 413, "5 images in one request; at most 4"),
    ("beam size 0", 422, "beam_size: input should be greater than or equal to 1"),
    ("beam size -1", 422, "beam_size: input should be greater than or equal to 1"),
    ("beam size above the cap", 422, "beam_size: input should be less than or equal to 20"),
    ("beam size not a number", 422, "beam_size: input should be a valid integer"),
    ("n-best above beam size", 422, "n_best: must be at most beam_size (2), got 4"),
    ("negative length penalty", 422, "length_penalty: input should be greater than or equal"),
    ("length penalty nan", 422, "length_penalty: input should be"),
    ("not multipart", 422, "images: no file field"),
])
def test_bad_input_gets_a_4xx_json_error_naming_it_and_the_service_keeps_serving(
        client, images, case, status, message):
    png = images[0].read_bytes()
    post = client.post
    requests = {
        "not an image": lambda: post("/v1/captions", files=_files(("notes.txt", b"hello"))),
        "empty": lambda: post("/v1/captions", files=_files(("empty.png", b""))),
        "truncated": lambda: post("/v1/captions", files=_files(("cut.png", png[: len(png) // 2]))),
        "bomb": lambda: post("/v1/captions", files=_files(("bomb.png", _bomb()))),
        "over the upload limit": lambda: post("/v1/captions",
                                              files=_files(("huge.png", _big(600_000)))),
        "body over the limit": lambda: post("/v1/captions", files=_files(
            *((f"{i}.png", _big(520_000)) for i in range(8)))),
        "no file field": lambda: post("/v1/captions", files=[("photo", ("a.png", png))]),
        "a text field instead of a file": lambda: post("/v1/captions", data={"images": "x.png"}),
        "too many images": lambda: post("/v1/captions", files=_files(
            *((f"{i}.png", png) for i in range(5)))),
        "beam size 0": lambda: post("/v1/captions?beam_size=0", files=_files(("a.png", png))),
        "beam size -1": lambda: post("/v1/captions?beam_size=-1", files=_files(("a.png", png))),
        "beam size above the cap": lambda: post("/v1/captions?beam_size=21",
                                                files=_files(("a.png", png))),
        "beam size not a number": lambda: post("/v1/captions?beam_size=x",
                                               files=_files(("a.png", png))),
        "n-best above beam size": lambda: post("/v1/captions?beam_size=2&n_best=4",
                                               files=_files(("a.png", png))),
        "negative length penalty": lambda: post("/v1/captions?length_penalty=-1",
                                                files=_files(("a.png", png))),
        "length penalty nan": lambda: post("/v1/captions?length_penalty=nan",
                                           files=_files(("a.png", png))),
        "not multipart": lambda: post("/v1/captions", json={"images": ["/etc/passwd"]}),
    }
    r = requests[case]()
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    _good(client, images[1])


def test_a_bad_image_among_good_ones_gets_its_own_error(client, cap, images):
    r = client.post("/v1/captions", files=_files(("a.png", images[0].read_bytes()),
                                                 ("bad.jpg", b"nope"),
                                                 ("b.png", images[1].read_bytes())))
    assert r.status_code == 200
    a, bad, b = r.json()["results"]
    assert bad == {"filename": "bad.jpg", "error": "bad.jpg: not an image file Pillow can read"}
    _same(a["captions"][0], cap.caption(images[0])[0])
    _same(b["captions"][0], cap.caption(images[1])[0])


def test_a_file_name_is_only_echoed_never_opened(client, images, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(images[0].read_bytes())
    r = client.post("/v1/captions", files=_files((str(secret), b"not an image")))
    assert r.status_code == 400 and "not an image file" in r.json()["error"]


def test_concurrent_requests_each_get_their_own_image_caption(client, cap, images):
    everyone = {p: cap.caption(p, beam_size=2, n_best=2) for p in images}
    # the check means something only if the images' captions differ
    by_text = {w[0].text: p for p, w in everyone.items()}
    picked = list(by_text.values())
    assert len(picked) >= 6, "the test model captions too many images alike"
    want = {p.name: everyone[p] for p in picked}
    before = client.get("/healthz").json()["batches"]

    def ask(path: Path):
        r = client.post("/v1/captions?beam_size=2&n_best=2",
                        files=_files((path.name, path.read_bytes())))
        assert r.status_code == 200
        return r.json()["results"][0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, picked * 3))
    for result in results:
        for got, expected in zip(result["captions"], want[result["filename"]]):
            _same(got, expected)
    after = client.get("/healthz").json()["batches"]
    batched = sum(int(k) * v for k, v in after.items() if int(k) > 1) - \
        sum(int(k) * v for k, v in before.items() if int(k) > 1)
    assert batched > 0, f"no request was batched with another: {after}"


def test_the_batcher_gathers_waiting_images_into_one_call_and_keeps_them_apart():
    calls = []

    def caption_fn(batch, options):
        calls.append((batch.shape[0], options.beam_size))
        return [[float(x[0, 0, 0])] for x in batch]

    async def run():
        batcher = Batcher(caption_fn, max_batch=8, max_wait_ms=50)
        batcher.start()
        try:
            opts = [DecodeOptions(beam_size=1 + i % 2) for i in range(6)]
            return await asyncio.gather(*(batcher.submit(torch.full((3, 2, 2), float(i)), o)
                                          for i, o in enumerate(opts)))
        finally:
            batcher.stop()

    results = asyncio.run(run())
    assert results == [[float(i)] for i in range(6)]
    assert sorted(calls) == [(3, 1), (3, 2)]  # one batch per set of options


def test_a_model_failure_is_reported_and_the_batcher_lives_on():
    def caption_fn(batch, options):
        if batch[0, 0, 0, 0] < 0:
            raise RuntimeError("boom")
        return [["ok"]] * batch.shape[0]

    async def run():
        batcher = Batcher(caption_fn, max_batch=1, max_wait_ms=0)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(torch.full((3, 2, 2), -1.0), DecodeOptions())
            return await batcher.submit(torch.ones(3, 2, 2), DecodeOptions())
        finally:
            batcher.stop()

    assert asyncio.run(run()) == ["ok"]


def test_a_streamed_body_over_the_limit_is_cut_off_with_413(client, images):
    def chunks():  # no Content-Length: the limit is enforced while the body arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield bytes(100_000)

    r = client.post("/v1/captions", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "over the upload limit" in r.json()["error"]
    _good(client, images[0])


def test_serve_binds_to_this_machine_only_unless_told():
    from captioner.cli import build_parser
    from captioner.config import ServeOptions
    from captioner.flags import given

    args = build_parser().parse_args(["serve"])
    settings = ServeOptions(**given(args, ServeOptions, "serve."))
    assert (settings.host, settings.port, settings.max_upload_mb, args.model) == (
        "127.0.0.1", 8000, 20.0, None)
