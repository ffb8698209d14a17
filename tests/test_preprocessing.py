"""The one preprocessing: odd inputs decode to RGB uint8, crops stay on the grid, bad bytes raise one clear error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from aigi.errors import InvalidImageError
from aigi.preprocessing import (
    DEFAULT_MAX_BYTES,
    PreprocessSpec,
    center_origin,
    decode_image,
    preprocess,
    preprocess_batch,
)

SPEC = PreprocessSpec(size=32, grid=8)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 48, height: int = 40) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 5 % 256, ys * 6 % 256, (xs + ys) * 3 % 256], axis=2).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_decode_image_returns_rgb_uint8_when_mode_is_odd(mode: str) -> None:
    base = Image.fromarray(_gradient())
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 100)
    else:
        image = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I") else "PNG"
    decoded = decode_image(_encode(image, fmt))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (40, 48, 3)


def test_decode_image_scales_16_bit_to_8_bit_when_png_is_16_bit() -> None:
    gray16 = np.full((8, 8), 65535, dtype=np.uint16)
    gray16[:4] = 257 * 10
    decoded = decode_image(_encode(Image.fromarray(gray16)))
    assert decoded[0, 0, 0] == 10
    assert decoded[7, 7, 2] == 255


def test_decode_image_applies_exif_orientation_when_jpeg_is_rotated() -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # wide image
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.shape == (40, 20, 3)


def test_decode_image_keeps_white_when_palette_has_transparency() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 255, 255] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    decoded = decode_image(_encode(image, transparency=0))
    assert decoded.shape == (8, 8, 3)
    assert (decoded == 255).all()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"not an image, just text\n", "not a decodable image"),
        (bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8)), "not a decodable image"),
    ],
)
def test_decode_image_raises_invalid_image_when_bytes_are_not_an_image(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        decode_image(payload)


def test_decode_image_raises_invalid_image_when_jpeg_is_truncated() -> None:
    data = _encode(Image.fromarray(_gradient(256, 256)), "JPEG", quality=95)
    with pytest.raises(InvalidImageError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decode_image_refuses_before_decoding_when_header_claims_50000_squared() -> None:
    with pytest.raises(InvalidImageError, match="50000x50000|exceeds limit"):
        decode_image(_png_header_only(50000, 50000))


def test_decode_image_raises_when_path_is_missing(tmp_path) -> None:
    with pytest.raises(InvalidImageError, match="cannot read"):
        decode_image(tmp_path / "missing.png")


def test_preprocess_center_crops_without_resizing_when_image_is_large_enough() -> None:
    array = _gradient(64, 56)
    out = preprocess(array, SPEC)
    top, left = center_origin(56, 64, SPEC)
    assert (top % 8, left % 8) == (0, 0)
    expected = preprocess(np.ascontiguousarray(array[top : top + 32, left : left + 32]), SPEC)
    np.testing.assert_array_equal(out, expected)


def test_preprocess_resizes_up_when_image_is_smaller_than_crop() -> None:
    out = preprocess(_gradient(20, 10), SPEC)
    assert out.shape == (3, 32, 32)
    assert out.dtype == np.float32


def test_preprocess_normalizes_with_spec_mean_and_std() -> None:
    spec = PreprocessSpec(size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = np.full((8, 8, 3), 255, dtype=np.uint8)
    np.testing.assert_allclose(preprocess(white, spec), np.ones((3, 8, 8)), atol=1e-6)


def test_preprocess_gives_identical_tensors_when_input_is_path_bytes_pil_or_array(tmp_path) -> None:
    array = _gradient(50, 45)
    data = _encode(Image.fromarray(array))
    path = tmp_path / "image.png"
    path.write_bytes(data)
    outs = [preprocess(source, SPEC) for source in (path, str(path), data, Image.fromarray(array), array)]
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_preprocess_raises_when_origin_is_outside_image() -> None:
    with pytest.raises(ValueError, match="outside"):
        preprocess(_gradient(40, 40), SPEC, origin=(16, 0))


def test_preprocess_resize_policy_resizes_when_image_is_large() -> None:
    spec = PreprocessSpec(size=16, resize="resize")
    out = preprocess(_gradient(64, 32), spec)
    assert out.shape == (3, 16, 16)


def test_preprocess_batch_stacks_when_given_several_images() -> None:
    batch = preprocess_batch([_gradient(), _gradient(33, 33)], SPEC)
    assert batch.shape == (2, 3, 32, 32)


def test_preprocess_spec_round_trips_when_serialized() -> None:
    spec = PreprocessSpec(size=336, resize="resize", grid=14)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        PreprocessSpec(resize="stretch")


def test_preprocess_spec_defaults_max_bytes_when_checkpoint_predates_it() -> None:
    old = PreprocessSpec(size=64).to_dict()
    del old["max_bytes"]
    spec = PreprocessSpec.from_dict(old)
    assert spec.max_bytes == DEFAULT_MAX_BYTES == 32 * 1024 * 1024
    assert PreprocessSpec.from_dict(PreprocessSpec(max_bytes=1000).to_dict()).max_bytes == 1000
    with pytest.raises(ValueError, match="max_bytes"):
        PreprocessSpec(max_bytes=0)
