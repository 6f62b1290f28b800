"""The CLIP scorer on CPU with a tiny open_clip model whose random weights the test saves as a checkpoint:
the real loading path, agreement with open_clip's own reference, text strategies, bad inputs, refusals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip", reason="the CLIP stack is not installed (pip install -e '.[clip]')")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from helpers import BIN, TINY, free_port, wait_port  # noqa: E402
from s1mmalign.config import IngestConf, S3Conf  # noqa: E402
from s1mmalign.ingest import images  # noqa: E402
from s1mmalign.score import clip  # noqa: E402

open_clip.add_model_config(TINY)


@pytest.fixture(scope="session")
def figures(scifig300) -> list[tuple[bytes, str, str]]:
    recs = [json.loads(line) for line in (scifig300 / "arxiv/jsonl/24_recaption.jsonl").read_text().splitlines()
            if line.strip()][:24]
    with tarfile.open(scifig300 / "arxiv/images_2024.tar.gz") as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    return [(data[r["image_path"]], r["caption"], r["recaption"]) for r in recs]


def spec(ckpt, **kw) -> clip.ScorerSpec:
    return clip.ScorerSpec(model="tiny-clip", checkpoint=str(ckpt), model_config=TINY, device="cpu",
                           batch_size=8, **kw)


def reference(ckpt, figs, chunk: bool) -> list[tuple[float, float]]:
    """open_clip by hand: its model, checkpoint loader, preprocessing and tokenizer."""
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=None)
    open_clip.load_checkpoint(model, str(ckpt))
    model.eval()
    tok = open_clip.get_tokenizer("tiny-clip")

    def text_emb(text):
        if not chunk:
            return model.encode_text(tok([text]), normalize=True)[0]
        ids = tok.encode(text)
        wins = [ids[i:i + 75] for i in range(0, len(ids), 75)]
        t = torch.zeros(len(wins), 77, dtype=torch.long)
        for k, w in enumerate(wins):
            row = [tok.sot_token_id] + w + [tok.eot_token_id]
            t[k, :len(row)] = torch.tensor(row)
        return torch.nn.functional.normalize(model.encode_text(t, normalize=True).mean(0), dim=-1)

    out = []
    with torch.no_grad():
        for data, cap, recap in figs:
            img = model.encode_image(preprocess(Image.open(io.BytesIO(data)).convert("RGB"))[None], normalize=True)[0]
            out.append((float(img @ text_emb(cap)), float(img @ text_emb(recap))))
    return out


@pytest.mark.parametrize("strategy", clip.STRATEGIES)
def test_scores_agree_with_open_clip_reference(tiny_checkpoint, figures, strategy):
    scorer = clip.Scorer(spec(tiny_checkpoint, text_strategy=strategy))
    pairs = [clip.Pair(*f) for f in figures]
    got = [s for batch in scorer.score_batches([pairs[i:i + 8] for i in range(0, len(pairs), 8)]) for s in batch]
    want = reference(tiny_checkpoint, figures, chunk=strategy == "chunk_mean")
    assert all(s.status == "ok" for s in got)
    for s, (wc, wr) in zip(got, want, strict=True):
        assert abs(s.score_caption - wc) < 1e-4 and abs(s.score_recaption - wr) < 1e-4
    long = [f for f in figures if len(scorer.tokenizer.encode(f[2])) > 75]
    assert long, "some recaptions must run over 77 tokens for the strategies to differ"


def test_strategies_differ_only_on_long_texts(tiny_checkpoint, figures):
    trunc = clip.Scorer(spec(tiny_checkpoint, text_strategy="truncate"))
    mean = clip.Scorer(spec(tiny_checkpoint, text_strategy="chunk_mean"))
    pairs = [clip.Pair(*f) for f in figures]
    a, b = trunc.score(pairs), mean.score(pairs)
    for (_data, _cap, recap), x, y in zip(figures, a, b, strict=True):
        if len(trunc.tokenizer.encode(recap)) > 75:
            assert abs(x.score_recaption - y.score_recaption) > 1e-6
        else:
            assert abs(x.score_recaption - y.score_recaption) < 1e-6
    assert trunc.score(pairs) == a, "scores are deterministic"


def test_word_cache_gives_open_clips_ids(scifig300):
    """The cached encoder returns exactly open_clip's token ids, on real captions and on text that the
    tokenizer's cleaning changes (HTML entities, mojibake, odd spaces, case, accents, CJK, emoji)."""
    tok = open_clip.get_tokenizer("ViT-B-32")
    cache = clip.WordCache(tok)
    assert cache.fast, "ViT-B-32's tokenizer is open_clip's SimpleTokenizer: the cached path must be used"
    texts = [t for line in (scifig300 / "arxiv/jsonl/24_recaption.jsonl").read_text().splitlines() if line.strip()
             for t in (json.loads(line)["caption"], json.loads(line)["recaption"]) if t]
    texts += ["Fig. 3: &amp;lt;E&gt; vs. T  (K)", "caf\u00c3\u00a9 r\u00c3\u00a9sum\u00c3\u00a9",
              "Ṫhe   ÉLECTRON\tflux\n\n", "粒子 の 分布 ≥ 3σ", "loss 📉 drops", "", "   ", "'s 've 'LL", "x" * 500]
    for _ in range(2):   # the second pass is served from the cache
        assert [cache.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert cache.words, "words were kept"
    small = clip.WordCache(tok)
    small.LIMIT = 5
    assert [small.encode(t) for t in texts[:20]] == [tok.encode(t) for t in texts[:20]]
    assert len(small.words) == 5, "past its limit the cache stops growing, and the ids stay right"


@pytest.mark.parametrize("strategy", clip.STRATEGIES)
def test_tokenizer_processes_give_the_same_scores(tiny_checkpoint, figures, strategy):
    """Texts tokenized in spawned processes (as on a GPU) score exactly as when tokenized in-process."""
    pairs = [clip.Pair(*f) for f in figures]
    pairs += [clip.Pair(figures[0][0], None, " "), clip.Pair(figures[1][0], "a", None)]
    here = clip.Scorer(spec(tiny_checkpoint, text_strategy=strategy, text_workers=0))
    pooled = clip.Scorer(spec(tiny_checkpoint, text_strategy=strategy, text_workers=2))
    try:
        assert pooled.text_pool is not None and here.text_pool is None
        assert pooled.score(pairs) == here.score(pairs)
    finally:
        pooled.close()
        here.close()


def test_thumbnails_sit_close_to_originals(tiny_checkpoint, figures, capsys):
    """How far scores from the ingest's 256 px JPEG thumbnails sit from scores from the original files."""
    scorer = clip.Scorer(spec(tiny_checkpoint))
    policy = IngestConf()
    thumbs = [images.analyze(data, policy).thumbnail for data, _, _ in figures]
    orig = scorer.score([clip.Pair(*f) for f in figures])
    small = scorer.score([clip.Pair(t, c, r) for t, (_, c, r) in zip(thumbs, figures, strict=True)])
    diffs = [abs(a.score_caption - b.score_caption) for a, b in zip(orig, small, strict=True)] + \
            [abs(a.score_recaption - b.score_recaption) for a, b in zip(orig, small, strict=True)]
    spread = max(a.score_caption for a in orig) - min(a.score_caption for a in orig)
    with capsys.disabled():
        print(f"\nthumbnail vs original (tiny random CLIP, {len(figures)} figures): mean |diff| "
              f"{sum(diffs) / len(diffs):.5f}, max {max(diffs):.5f}, score spread {spread:.5f}")
    assert max(diffs) < 0.05


def test_bad_images_and_empty_texts_give_null_scores_not_a_failed_batch(tiny_checkpoint, figures):
    scorer = clip.Scorer(spec(tiny_checkpoint))
    good = figures[0]
    got = scorer.score([clip.Pair(b"not an image", good[1], good[2]), clip.Pair(None, good[1], good[2]),
                        clip.Pair(good[0], "  ", good[2]), clip.Pair(good[0], good[1], None),
                        clip.Pair(good[0][: len(good[0]) // 3], good[1], good[2]), clip.Pair(*good)])
    assert [s.status for s in got] == ["image_unreadable", "image_unreadable", "caption_empty",
                                       "recaption_empty", "image_unreadable", "ok"]
    assert got[0].score_caption is None and got[0].score_recaption is None
    assert got[2].score_caption is None and got[2].score_recaption == pytest.approx(got[5].score_recaption, abs=1e-6)
    assert got[3].score_recaption is None and got[3].score_caption == pytest.approx(got[5].score_caption, abs=1e-6)


def test_model_id_names_the_checkpoint_or_says_random(tiny_checkpoint):
    mid = clip.model_id(spec(tiny_checkpoint))
    assert mid.startswith("tiny-clip@sha256:") and len(mid.split(":")[1]) == 16
    rnd = clip.ScorerSpec(model="tiny-clip", random_weights=True, model_config=TINY)
    assert clip.model_id(rnd) == f"tiny-clip@{clip.RANDOM_WEIGHTS}"
    assert clip.Scorer(rnd).model_id == clip.model_id(rnd)


def test_refusals(tmp_path, tiny_checkpoint):
    with pytest.raises(clip.ClipError, match="no checkpoint"):
        clip.Scorer(clip.ScorerSpec(model="tiny-clip", model_config=TINY))
    with pytest.raises(clip.ClipError, match="is not a file"):
        clip.Scorer(spec(tmp_path / "nope.safetensors"))
    with pytest.raises(clip.ClipError, match="unknown open_clip model"):
        clip.Scorer(clip.ScorerSpec(model="no-such-model", random_weights=True))
    with pytest.raises(clip.ClipError, match="not a plain"):   # a checkpoint of another architecture
        clip.Scorer(clip.ScorerSpec(model="ViT-B-32", checkpoint=str(tiny_checkpoint)))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil()}, bad)
    with pytest.raises(clip.ClipError, match="not a plain"):
        clip.Scorer(clip.ScorerSpec(model="tiny-clip", checkpoint=str(bad), model_config=TINY))
    assert not mark.exists()


def test_a_torch_state_dict_loads_like_safetensors(tmp_path, tiny_checkpoint, figures):
    from safetensors.torch import load_file

    pt = tmp_path / "tiny.pt"
    torch.save(load_file(str(tiny_checkpoint)), pt)
    a = clip.Scorer(spec(tiny_checkpoint)).score([clip.Pair(*figures[0])])
    b = clip.Scorer(spec(pt)).score([clip.Pair(*figures[0])])
    assert a == b


def test_checkpoint_from_s3(tmp_path, tiny_checkpoint, figures, monkeypatch):
    import boto3

    port = free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(tiny_checkpoint), "models", "clip/tiny-clip.safetensors")
        remote = clip.ScorerSpec(model="tiny-clip", checkpoint="s3://models/clip/tiny-clip.safetensors",
                                 model_config=TINY, device="cpu", cache_dir=str(tmp_path / "cache"),
                                 s3=S3Conf(endpoint_url=endpoint))
        assert clip.model_id(remote) == clip.model_id(spec(tiny_checkpoint))
        got = clip.Scorer(remote).score([clip.Pair(*figures[0])])
        assert got == clip.Scorer(spec(tiny_checkpoint)).score([clip.Pair(*figures[0])])
        assert len(list((tmp_path / "cache").rglob("tiny-clip.safetensors"))) == 1
        missing = clip.ScorerSpec(model="tiny-clip", checkpoint="s3://models/nope.safetensors", model_config=TINY,
                                  s3=S3Conf(endpoint_url=endpoint), cache_dir=str(tmp_path / "cache"))
        with pytest.raises(clip.ClipError, match="cannot be read"):
            clip.model_id(missing)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_device_decode_path_agrees_with_pillow(tiny_checkpoint, figures):
    """The torch decode path (nvJPEG + resize on the GPU when there is one; here on the CPU) scores the
    ingest's JPEG thumbnails like open_clip's Pillow preprocessing, and falls back for non-JPEGs."""
    policy = IngestConf()
    thumbs = [images.analyze(data, policy).thumbnail for data, _, _ in figures]
    items = [clip.Pair(t, c, r) for t, (_, c, r) in zip(thumbs, figures, strict=True)]
    items.append(clip.Pair(figures[0][0], figures[0][1], figures[0][2]))          # a PNG: Pillow path
    items.append(clip.Pair(thumbs[0][:200], figures[0][1], figures[0][2]))        # a broken JPEG
    pil = clip.Scorer(spec(tiny_checkpoint, image_decode="pil")).score(items)
    dev_scorer = clip.Scorer(spec(tiny_checkpoint, image_decode="torch"))
    assert dev_scorer.decode_on_device
    dev = dev_scorer.score(items)
    assert [s.status for s in dev] == [s.status for s in pil] and dev[-1].status == "image_unreadable"
    worst = max(abs(a.score_caption - b.score_caption) for a, b in zip(pil[:-1], dev[:-1], strict=True))
    assert worst < 5e-3, worst
    assert dev[-2] == pil[-2]


def _jpeg(mode: str = "RGB", size=(300, 150), **kw) -> bytes:
    rng = np.random.default_rng(7)
    im = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).convert(mode)
    out = io.BytesIO()
    im.save(out, "JPEG", **kw)
    return out.getvalue()


def test_cpu_decode_path_gives_open_clips_pixels(tiny_checkpoint, figures):
    """The `cpu` path (torchvision decode, uint8 resize on threads, normalized per batch) makes the pixels
    open_clip's Pillow transform makes, within 2 levels of 255, for the ingest's thumbnails, PNG originals,
    grey, CMYK, progressive and 4:4:4 JPEGs; scores and statuses follow, a cut JPEG included."""
    policy = IngestConf()
    thumbs = [images.analyze(data, policy).thumbnail for data, _, _ in figures]
    odd = [_jpeg("L"), _jpeg("CMYK"), _jpeg(progressive=True), _jpeg(subsampling=0), _jpeg(size=(40, 900))]
    scorer = clip.Scorer(spec(tiny_checkpoint, image_decode="cpu", decode_threads=2))
    assert scorer.decode == "cpu" and not scorer.decode_on_device
    worst, mean = 0.0, []
    for data in thumbs + [d for d, _, _ in figures[:4]] + odd:
        ref = scorer.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
        got = scorer._image_uint8(data)
        assert got.dtype == torch.uint8 and got.shape == ref.shape
        diff = ((got.float() / 255 - scorer.mean) / scorer.std - ref).mul(scorer.std * 255).abs()
        worst, mean = max(worst, float(diff.max())), mean + [float(diff.mean())]
    assert worst <= 2.01 and sum(mean) / len(mean) < 0.05, (worst, mean)
    items = [clip.Pair(t, c, r) for t, (_, c, r) in zip(thumbs, figures, strict=True)]
    items += [clip.Pair(figures[0][0], figures[0][1], None), clip.Pair(thumbs[0][:200], figures[0][1], "x"),
              clip.Pair(b"", "a", "b")]
    pil = clip.Scorer(spec(tiny_checkpoint, image_decode="pil")).score(items)
    got = scorer.score(items)
    assert [s.status for s in got] == [s.status for s in pil]
    assert [s.status for s in got[-3:]] == ["recaption_empty", "image_unreadable", "image_unreadable"]
    assert max(abs(a.score_caption - b.score_caption) for a, b in zip(pil[:-2], got[:-2], strict=True)) < 1e-3
    scorer.close()


def test_jpeg_size_reads_the_frame_header_and_big_frames_go_to_pillow(tiny_checkpoint, monkeypatch):
    """jpeg_size reads (height, width) past APP segments (one holding a fake frame marker), fill bytes and
    a progressive frame; anything else is None. A frame over FAST_PIXELS is never handed to torchvision
    (no allocation sized by a hostile header): Pillow and its bomb guard judge it."""
    plain = _jpeg(size=(300, 150))
    assert clip.jpeg_size(plain) == (150, 300)
    assert clip.jpeg_size(_jpeg(size=(33, 71), progressive=True)) == (71, 33)
    fake = b"\xff\xc0\x00\x11\x08\x7f\xff\x7f\xff"                        # a frame header inside an APP1 blob
    app = b"\xff\xe1" + (len(fake) + 2).to_bytes(2, "big") + fake
    assert clip.jpeg_size(plain[:2] + app + plain[2:]) == (150, 300)
    assert clip.jpeg_size(plain[:2] + b"\xff\xff\xff" + plain[2:]) == (150, 300)
    sof = plain.index(b"\xff\xc0")
    assert clip.jpeg_size(plain[:sof + 6]) is None                           # cut inside the frame header
    assert clip.jpeg_size(plain[:sof]) is None                               # cut before it
    assert clip.jpeg_size(b"\x89PNG\r\n\x1a\n") is None and clip.jpeg_size(b"") is None
    assert clip.jpeg_size(b"\xff\xd8\x00\x00\x00\x00") is None               # no marker where one must be

    calls = []
    import torchvision.io

    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    scorer = clip.Scorer(spec(tiny_checkpoint, image_decode="cpu"))
    assert scorer._image_uint8(plain) is not None and calls == [1]
    for h, w in ((4097, 4096), (60000, 60000)):                             # one pixel row over, and a bomb
        big = plain[:sof + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + plain[sof + 9:]
        assert clip.jpeg_size(big) == (h, w)
        pillow = scorer._image_uint8(big)
        side = scorer.image_size          # the bomb: Pillow's guard refuses it; the other: Pillow decodes it
        assert pillow is None if h == 60000 else pillow.shape == (3, side, side)
    assert calls == [1]
    edge = plain[:sof + 5] + (4096).to_bytes(2, "big") + (4096).to_bytes(2, "big") + plain[sof + 9:]
    scorer._image_uint8(edge)                                               # at the limit: torchvision's
    assert calls == [1, 1]
    scorer.close()


def test_thread_and_process_counts(monkeypatch):
    """auto on CUDA: a quarter of the cores tokenize (1 to 8), image threads take the rest but the launching
    core; on a CPU no tokenizer processes and up to 4 image threads; set values win."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    auto = clip.ScorerSpec()
    assert (clip.text_workers(auto, True), clip.decode_threads(auto, True, 4)) == (4, 11)
    assert (clip.text_workers(auto, False), clip.decode_threads(auto, False, 0)) == (0, 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert (clip.text_workers(auto, True), clip.decode_threads(auto, True, 1)) == (1, 1)
    assert clip.decode_threads(auto, False, 0) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert clip.text_workers(auto, True) == 8
    set_ = clip.ScorerSpec(decode_threads=3, text_workers=0)
    assert (clip.text_workers(set_, True), clip.decode_threads(set_, True, 0)) == (0, 3)
