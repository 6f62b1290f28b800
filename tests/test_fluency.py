"""Masked-LM fluency (score/fluency.py) with a tiny random BERT written from a config (conftest.tiny_mlm):
the pseudo-log-likelihood against a plain transformers loop, windows over long texts, bad input as a
status, checkpoints refused in one line. No JVM."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from s1mmalign.score import fluency


@pytest.fixture(scope="module")
def spec(cfg, tiny_mlm):
    return fluency.FluencySpec.of(cfg, checkpoint=str(tiny_mlm), model="tiny-bert", batch_tokens=4096)


@pytest.fixture(scope="module")
def scorer(spec):
    return fluency.Scorer(spec)


@pytest.fixture(scope="module")
def reference(tiny_mlm):
    """Salazar et al.'s PLL the plain way: one forward pass of the whole model per masked token."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_mlm), local_files_only=True)
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(tiny_mlm), local_files_only=True).eval()

    def pll(ids: list[int], owned=None) -> float:
        total = 0.0
        for i in owned if owned is not None else range(len(ids)):
            x = [tok.cls_token_id, *ids, tok.sep_token_id]
            x[i + 1] = tok.mask_token_id
            with torch.no_grad():
                logits = model(torch.tensor([x])).logits[0, i + 1]
            total += torch.log_softmax(logits, -1)[ids[i]].item()
        return total

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]
    return pll, ids


TEXTS = ["Figure 1: the model shows results on test data.", "loss and accuracy of our method (left panel)",
         "The energy distribution at temperature $T = 10$ K.", "x", "Fig. 3: error rate [%] vs. time; top: a, b."]


def test_pll_equals_the_plain_transformers_loop(scorer, reference, scifig300):
    pll, ids = reference
    real = [json.loads(line)["caption"] for line in
            (scifig300 / "arxiv/jsonl/24_recaption.jsonl").read_text(encoding="utf-8").splitlines()[:6]]
    texts = [*TEXTS, *(" ".join(t.split()[:6]) for t in real)]   # within the tiny model's 62-token window
    unknown = scorer.tokenizer.unk_token_id
    assert sum(i != unknown for t in texts for i in ids(t)) > 0.9 * sum(len(ids(t)) for t in texts)   # vocab read
    got = scorer.score_texts(texts)
    for t, g in zip(texts, got, strict=True):
        want = pll(ids(t))
        assert g.status is None and g.tokens == len(ids(t)) <= scorer.body
        assert abs(g.pll - want) < 1e-4, t
        assert g.ppl == pytest.approx(math.exp(-want / g.tokens), rel=1e-6)


def test_a_batch_scores_each_text_as_alone(scorer):
    alone = [scorer.score_texts([t])[0].pll for t in TEXTS]
    together = [s.pll for s in scorer.score_texts(TEXTS)]
    assert together == pytest.approx(alone, abs=1e-5)
    pairs = scorer.score([(TEXTS[0], TEXTS[1]), (TEXTS[2], None)])
    assert pairs[0].caption.pll == pytest.approx(alone[0], abs=1e-5) and pairs[1].status == "recaption_empty"


@pytest.mark.parametrize("n, body", [(1, 62), (62, 62), (63, 62), (200, 62), (2000, 62), (2000, 510), (9, 4)])
def test_windows_score_every_token_once_with_context_on_both_sides(n, body):
    ws = fluency.windows(n, body)
    owned = [t for _, _, lo, hi in ws for t in range(lo, hi)]
    assert owned == list(range(n))                                  # each token once, in order
    for start, end, lo, hi in ws:
        assert 0 <= start <= lo <= hi <= end <= n and end - start <= body
        for t in range(lo, hi):                                     # a quarter window each side, but at the ends
            assert t - start >= (body - body // 2) // 2 or start == 0
            assert end - 1 - t >= (body - body // 2) // 2 - 1 or end == n
    if n > body:
        assert len(ws) == len(range(0, n - body, body // 2)) + 1


def test_a_2000_token_caption_is_scored_in_overlapping_windows(scorer, reference):
    pll, ids = reference
    text = " ".join(["the loss of the model on test data shows results"] * 200)
    token_ids = ids(text)
    assert len(token_ids) == 2000
    got = scorer.score_texts([text])[0]
    assert got.status is None and got.tokens == 2000
    # the plain loop over each window, scoring the tokens that window owns
    want = sum(pll(token_ids[s:e], [t - s for t in range(lo, hi)]) for s, e, lo, hi in fluency.windows(2000, 62))
    assert abs(got.pll - want) < 1e-3


def test_bad_texts_get_a_status_never_a_failed_batch(cfg, tiny_mlm, scorer):
    limited = fluency.Scorer(fluency.FluencySpec.of(cfg, checkpoint=str(tiny_mlm), max_tokens=300))
    texts = ["", "   \n\t", None, "$\\alpha^{2}_{i}$", "\x00\x01\x02\x03\x7f", "\u200b\u200b", "x" * 50_000_000,
             " ".join(["loss"] * 400), TEXTS[0]]
    got = limited.score_texts(texts)
    assert [g.status for g in got] == ["empty", "empty", "empty", None, "no_tokens", "no_tokens", "too_long",
                                       "too_long", None]
    assert got[3].tokens > 5 and got[3].ppl > 1                    # only LaTeX: a score, as for any text
    assert got[-1].pll == pytest.approx(scorer.score_texts([TEXTS[0]])[0].pll, abs=1e-5)
    assert all(g.pll is None and g.ppl is None for g in got if g.status)


def test_checkpoints_are_refused_in_one_line(cfg, tiny_mlm, tmp_path):
    def refusal(checkpoint) -> str:
        with pytest.raises(fluency.FluencyError) as err:
            fluency.model_id(fluency.FluencySpec.of(cfg, checkpoint=checkpoint))
        assert "\n" not in str(err.value)
        return str(err.value)
    assert "no fluency checkpoint" in refusal(None) and "never fetched from a hub" in refusal(None)
    assert "is not a folder" in refusal(str(tmp_path / "nowhere"))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_mlm, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    assert "safetensors" in refusal(str(pickled)) and "pickled" in refusal(str(pickled))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_mlm, broken)
    (broken / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(fluency.FluencyError, match="not a masked language model"):
        fluency.Scorer(fluency.FluencySpec.of(cfg, checkpoint=str(broken)))


def test_model_id_names_the_checkpoint_bytes(cfg, tiny_mlm, tmp_path):
    same = tmp_path / "same"
    shutil.copytree(tiny_mlm, same)
    first = fluency.model_id(fluency.FluencySpec.of(cfg, checkpoint=str(tiny_mlm), model="m"))
    assert first == fluency.model_id(fluency.FluencySpec.of(cfg, checkpoint=str(same), model="m"))
    data = bytearray((same / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (same / "model.safetensors").write_bytes(bytes(data))
    assert first != fluency.model_id(fluency.FluencySpec.of(cfg, checkpoint=str(same), model="m"))
    assert first.startswith("m@sha256:")


def test_an_s3_checkpoint_folder_is_downloaded_once(cfg, tiny_mlm, tmp_path, moto):
    import boto3

    from helpers import s3_cfg

    scfg = s3_cfg(cfg, moto, tmp_path)
    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    client.create_bucket(Bucket="models")
    for f in tiny_mlm.iterdir():
        client.upload_file(str(f), "models", f"bert/tiny/{f.name}")
    spec = fluency.FluencySpec.of(scfg, checkpoint="s3://models/bert/tiny", cache_dir=str(tmp_path / "cache"))
    assert fluency.model_id(spec) == fluency.model_id(fluency.FluencySpec.of(cfg, checkpoint=str(tiny_mlm)))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    s = fluency.Scorer(spec).score_texts([TEXTS[0]])[0]
    assert s.status is None and s.tokens > 5
    with pytest.raises(fluency.FluencyError, match="holds no files"):
        fluency.model_id(fluency.FluencySpec.of(scfg, checkpoint="s3://models/nothing-here",
                                                cache_dir=str(tmp_path / "cache")))


def test_passes_follow_the_copy_by_copy_rule():
    """cut_passes, walked run by run, cuts exactly where adding copies one at a time would: a copy joins a
    pass while (its copies + 1) x its length fits batch_tokens, the first of a pass always (even one longer
    than batch_tokens)."""
    import random

    def one_by_one(lengths, counts, budget):
        out, first, have, width, k = [], 0, 0, 0, 0
        for length, count in zip(lengths, counts, strict=True):
            for _ in range(count):
                if have and (have + 1) * length > budget:
                    out.append((first, k, width))
                    first, have = k, 0
                have, k, width = have + 1, k + 1, length
        return out + ([(first, k, width)] if have else [])

    rng = random.Random(5)
    for _ in range(400):
        runs = rng.randint(0, 12)
        lengths = sorted(rng.randint(3, 600) for _ in range(runs))
        counts = [rng.randint(1, 700) for _ in range(runs)]
        budget = rng.choice([64, 200, 512, 4096, 16384])
        assert fluency.cut_passes(lengths, counts, budget) == one_by_one(lengths, counts, budget)
    assert fluency.cut_passes([10, 10], [3, 1], 40) == [(0, 4, 10)]          # 4 x 10 fits 40 exactly
    assert fluency.cut_passes([10, 11], [3, 1], 40) == [(0, 3, 10), (3, 4, 11)]
    assert fluency.cut_passes([900], [2], 512) == [(0, 1, 900), (1, 2, 900)]


def test_a_plan_holds_every_token_once_in_length_order(scorer, reference):
    """Scorer.plan: each scored text's tokens are masked once each, as its windows own them; copies in
    ascending length; the masked position holds the true token in its window's row."""
    import numpy as np

    _, ids = reference
    texts = TEXTS + [" ".join(TEXTS * 40), "", None]
    plan = scorer.plan(texts)
    assert plan.status[-2:] == ["empty", "empty"] and plan.status[:-2] == [None] * (len(texts) - 2)
    assert plan.tokens[:-2] == [len(ids(t)) for t in texts[:-2]]
    assert np.bincount(plan.copy_text, minlength=len(texts)).tolist() == plan.tokens
    widths = plan.lengths[plan.copy_window]
    assert (np.diff(widths) >= 0).all()
    assert (plan.grid[plan.copy_window, plan.copy_pos] == plan.copy_truth).all()
    long = int(np.flatnonzero(np.asarray(plan.tokens) == max(plan.tokens))[0])
    assert sorted(plan.copy_truth[plan.copy_text == long].tolist()) == sorted(ids(texts[long]))
    assert sum(last - first for first, last, _ in plan.passes) == plan.copies
