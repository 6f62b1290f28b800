import hashlib
import io

import pytest
from PIL import Image

from s1mmalign.config import IngestConf
from s1mmalign.ingest import images, sample

POLICY = IngestConf()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_facts_of_each_format(fmt):
    data = sample.render(3, 1, fmt)
    facts = images.analyze(data, POLICY)
    assert facts.status == "ok" and facts.format == fmt
    with Image.open(io.BytesIO(data)) as im:
        assert (facts.width, facts.height) == im.size
    assert facts.sha256 == hashlib.sha256(data).hexdigest() and facts.size == len(data)
    with Image.open(io.BytesIO(facts.thumbnail)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 256
        assert (facts.thumbnail_width, facts.thumbnail_height) == thumb.size


def test_dhash_near_for_near_images_far_for_different():
    a = images.analyze(sample.render(1, 1, "PNG"), POLICY).dhash
    b = images.analyze(sample.render(1, 1, "JPEG"), POLICY).dhash  # same figure, other encoding
    c = images.analyze(sample.render(2, 1, "PNG"), POLICY).dhash
    dist = lambda x, y: bin((x ^ y) & (2 ** 64 - 1)).count("1")  # noqa: E731
    assert dist(a, b) <= 6 < dist(a, c)


def test_dhash_bits():
    ramp = Image.frombytes("L", (9, 8), bytes(range(72)))   # rising left to right: no bit set
    assert images.dhash64(ramp) == 0
    fall = Image.frombytes("L", (9, 8), bytes(range(72))[::-1])
    assert images.dhash64(fall) == -1                        # all 64 bits set, as signed


def test_rgba_is_flattened_on_white():
    im = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    out = io.BytesIO()
    im.save(out, "PNG")
    facts = images.analyze(out.getvalue(), POLICY)
    with Image.open(io.BytesIO(facts.thumbnail)) as thumb:
        assert thumb.convert("RGB").getpixel((10, 10))[0] > 240


@pytest.mark.parametrize("make, status", [
    (lambda: b"", "image_corrupt"),
    (lambda: sample.render(4, 1, "PNG")[:2000], "image_corrupt"),
    (lambda: sample.render(4, 1, "JPEG")[:3000], "image_corrupt"),
    (lambda: b"not an image\n" * 50, "image_corrupt"),
    (lambda: b"%PDF-1.4\n" + b"0" * 100, "image_corrupt"),
])
def test_bad_bytes(make, status):
    facts = images.analyze(make(), POLICY)
    assert facts.status == status and facts.detail and facts.thumbnail is None


def test_unaccepted_format():
    out = io.BytesIO()
    Image.new("RGB", (20, 20)).save(out, "BMP")
    assert images.analyze(out.getvalue(), POLICY).status == "image_corrupt"


def test_decompression_bomb_and_byte_cap():
    out = io.BytesIO()
    Image.new("L", (3000, 3000), 0).save(out, "PNG")
    small = IngestConf(max_image_pixels=1_000_000)
    assert images.analyze(out.getvalue(), small).status == "image_too_large"   # over the limit
    tiny = IngestConf(max_image_pixels=2_000_000)
    assert images.analyze(out.getvalue(), tiny).status == "image_too_large"    # 4.5x: Pillow's own error
    capped = IngestConf(max_image_bytes=100)
    assert images.analyze(sample.render(1, 1, "PNG"), capped).status == "image_too_large"
