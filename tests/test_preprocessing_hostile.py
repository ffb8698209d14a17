"""Hostile inputs to the one preprocessing: bounded work, allowed formats only, byte and pixel caps, one error type.

The Triton preprocessing model runs :func:`aigi.preprocessing.preprocess` on untrusted bytes, so every
input must either give a finite FP32 tensor or raise :class:`InvalidImageError`, within bounded memory.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from _fuzz_images import base_images, mutated_images
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError, WebPImagePlugin

from aigi.errors import InvalidImageError
from aigi.preprocessing import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_BYTES,
    PreprocessSpec,
    center_origin,
    decode_image,
    fit_and_crop,
    fit_to_size,
    fitted_size,
    preprocess,
    read_image_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = PreprocessSpec()
ALLOWED_MESSAGE = "unsupported image format (allowed: JPEG, PNG, WebP, BMP, GIF, TIFF)"


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _run_limited(code: str, address_space_gib: float) -> dict:
    """Run ``code`` in a fresh interpreter whose address space is capped, so a blow-up fails there, not here.

    The code gets ``report(**fields)`` to send results back; ``maxrss_mb`` is the peak resident memory the
    measured part added (``mark()`` starts the measurement).
    """
    prelude = textwrap.dedent(f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({int(address_space_gib * 2**30)},) * 2)
        _base = [0]
        def mark():
            _base[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        def report(**fields):
            fields["maxrss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _base[0]) / 1024
            print("RESULT " + json.dumps(fields))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"subprocess failed (rc {done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


# --- 1. bounded work -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(64000, 1), (1, 64000)])
def test_preprocess_stays_small_when_png_is_64000_pixels_thin(width: int, height: int) -> None:
    # Upscaling first would make a 14336000x224 RGB image (~13 GB) out of this ~150-byte PNG.
    result = _run_limited(
        f"""
        import io
        from PIL import Image
        from aigi.preprocessing import PreprocessSpec, preprocess
        buffer = io.BytesIO()
        Image.new("L", ({width}, {height}), 77).save(buffer, "PNG")
        mark()
        out = preprocess(buffer.getvalue(), PreprocessSpec())
        report(shape=list(out.shape), size=len(buffer.getvalue()))
        """,
        address_space_gib=1.0,
    )
    assert result["shape"] == [3, 224, 224]
    assert result["size"] < 1000
    assert result["maxrss_mb"] < 64, result


def _png16_zeros_code(side: int) -> str:
    """Source that builds a ``side`` x ``side`` 16-bit gray PNG by streaming (the file is ~130 KB at 8000)."""
    return f"""
        import struct, zlib
        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        compressor = zlib.compressobj(9)
        row = b"\\x00" + b"\\x12\\x34" * {side}
        idat = b"".join(compressor.compress(row) for _ in range({side})) + compressor.flush()
        header = struct.pack(">IIBBBBB", {side}, {side}, 16, 0, 0, 0, 0)
        data = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    """


def test_preprocess_stays_small_when_png_is_16_bit_8000_squared() -> None:
    # float64 conversion of the whole image needed ~1.6 GB for this ~140 KB file.
    result = _run_limited(
        _png16_zeros_code(8000)
        + """
        from aigi.preprocessing import PreprocessSpec, preprocess
        mark()
        out = preprocess(data, PreprocessSpec())
        report(shape=list(out.shape), value=float(out[0, 0, 0]), size=len(data))
        """,
        address_space_gib=1.0,
    )
    assert result["shape"] == [3, 224, 224]
    assert result["size"] < 200_000
    assert result["maxrss_mb"] < 400, result  # the decoded 16-bit source alone is 122 MB


def test_decode_image_converts_16_bit_8000_squared_png_without_float64() -> None:
    result = _run_limited(
        _png16_zeros_code(8000)
        + """
        from aigi.preprocessing import decode_image
        mark()
        rgb = decode_image(data)
        report(shape=list(rgb.shape), value=int(rgb[0, 0, 0]))
        """,
        address_space_gib=1.0,
    )
    assert result["shape"] == [8000, 8000, 3]
    assert result["value"] == round(0x1234 * 255 / 65535)  # PNG is big-endian: bytes 12 34 are 0x1234
    assert result["maxrss_mb"] < 700, result


SHAPES = [(100, 150), (150, 100), (223, 500), (500, 223), (10, 300), (300, 10), (1, 1000), (37, 1234), (640, 480)]


@pytest.mark.parametrize("policy", ["crop", "resize"])
@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_fit_and_crop_matches_full_resize_then_crop_when_image_is_ordinary(
    height: int, width: int, policy: str
) -> None:
    spec = PreprocessSpec(resize=policy)
    rgb = _noise(height, width)  # noise is the worst case for rounding differences
    fitted = fit_to_size(rgb, spec)
    assert fitted.shape[:2] == fitted_size(height, width, spec)
    rng = np.random.default_rng(height * 7919 + width)
    last = (fitted.shape[0] - spec.size, fitted.shape[1] - spec.size)
    origins = [None, (0, 0), last, (int(rng.integers(last[0] + 1)), int(rng.integers(last[1] + 1)))]
    for origin in origins:
        top, left = origin if origin is not None else center_origin(*fitted.shape[:2], spec)
        expected = fitted[top : top + spec.size, left : left + spec.size].astype(np.int16)
        for source in (rgb, Image.fromarray(rgb)):
            got = fit_and_crop(source, spec, origin).astype(np.int16)
            diff = np.abs(got - expected)
            # measured: at most 1 level, on under 0.1% of pixels (Pillow's float32 box coordinates)
            assert diff.max() <= 1, (origin, diff.max())
            assert (diff > 0).mean() < 0.002, (origin, (diff > 0).mean())


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "LA"])
@pytest.mark.parametrize(("height", "width"), [(300, 260), (40, 500)])
def test_fit_and_crop_converts_only_the_crop_like_the_whole_image_when_mode_is_odd(
    mode: str, height: int, width: int
) -> None:
    spec = PreprocessSpec(size=32)
    gray = _noise(height, width)[:, :, 0]
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        values = gray.astype(np.int32)
        values[0, 0] = 1000  # far from the crop: the whole image's peak (65535) must still apply
        image = Image.fromarray(values if mode == "I" else values.astype(np.float32))
    else:
        image = Image.fromarray(_noise(height, width)).convert(mode)
    fitted = fit_to_size(decode_image(image), spec)
    top, left = center_origin(*fitted.shape[:2], spec)
    expected = fitted[top : top + 32, left : left + 32].astype(np.int16)
    diff = np.abs(fit_and_crop(image, spec).astype(np.int16) - expected)
    if (height, width) == fitted.shape[:2]:
        assert diff.max() == 0  # no resize: cropping commutes exactly with per-pixel conversion
    else:
        assert diff.max() <= 1


def test_preprocess_center_crop_equals_full_decode_when_int32_image_peaks_outside_crop() -> None:
    values = np.full((400, 400), 200, dtype=np.int32)
    values[0, 0] = 60000
    data = _encode(Image.fromarray(values), "TIFF")
    crop = fit_and_crop(decode_image(data), SPEC)
    assert crop.max() == round(200 * 255 / 65535)
    np.testing.assert_array_equal(preprocess(data, SPEC), preprocess(np.ascontiguousarray(crop), SPEC))


# --- 2. formats --------------------------------------------------------------------------------------------


def _hand_written_eps() -> bytes:
    # Pillow would run Ghostscript on this at load(); the endless loop would hang the server
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n{} loop\nshowpage\n%%EOF\n"


def _hand_written_psd() -> bytes:
    header = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 8, 8, 8, 3)  # 3 channels, 8x8, 8-bit RGB
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x80" * (3 * 8 * 8)


def _hand_written_fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += ["NAXIS1  =                    8", "NAXIS2  =                    8", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    return header + b"\x80" * 64 + b"\0" * (2880 - 64)


WRITABLE_REFUSED = ["ICO", "TGA", "DDS", "ICNS", "JPEG2000", "PCX", "PPM", "SGI", "QOI", "IM", "AVIF", "DIB", "XBM"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Pillow deprecates IM
@pytest.mark.parametrize("fmt", WRITABLE_REFUSED)
def test_decode_image_refuses_format_when_pillow_reads_it_but_contract_does_not(fmt: str) -> None:
    image = Image.fromarray(_noise(32, 32))
    try:
        data = _encode(image.convert("1") if fmt == "XBM" else image, fmt)
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"Pillow cannot write {fmt} here: {exc}")
    Image.open(io.BytesIO(data)).load()  # Pillow itself would decode it
    with pytest.raises(
        InvalidImageError, match=r"unsupported image format \(allowed: JPEG, PNG, WebP, BMP, GIF, TIFF\)"
    ):
        decode_image(data)


@pytest.mark.parametrize(
    ("name", "payload"), [("EPS", _hand_written_eps()), ("PSD", _hand_written_psd()), ("FITS", _hand_written_fits())]
)
def test_decode_image_refuses_format_when_file_is_hand_written(name: str, payload: bytes, monkeypatch) -> None:
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript must never run on untrusted bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    assert Image.open(io.BytesIO(payload)).format == name  # Pillow recognizes it ...
    with pytest.raises(InvalidImageError, match=r"unsupported image format \(allowed:"):
        preprocess(payload, SPEC)  # ... aigi does not


def test_preprocess_refuses_format_when_path_holds_disallowed_file(tmp_path) -> None:
    path = tmp_path / "icon.png"  # the name lies; the bytes decide
    path.write_bytes(_encode(Image.fromarray(_noise(16, 16)), "ICO"))
    with pytest.raises(InvalidImageError, match=str(path)):
        preprocess(path, SPEC)


@pytest.mark.parametrize("name", ["gif", "gif_animated", "tiff", "tiff_deflate", "tiff_int32", "mpo", "webp_lossy"])
def test_preprocess_accepts_when_format_is_allowed(name: str) -> None:
    data = dict(base_images())[name]
    assert Image.open(io.BytesIO(data)).format in (*ALLOWED_FORMATS, "MPO")
    out = preprocess(data, SPEC)
    assert out.shape == (3, 224, 224)
    assert np.isfinite(out).all()


def test_decode_image_opens_mpo_when_jpeg_carries_several_frames() -> None:
    data = dict(base_images())["mpo"]
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert decode_image(data).shape == (30, 40, 3)


def test_decode_image_names_the_format_when_allowed_header_is_corrupt() -> None:
    data = bytearray(dict(base_images())["png"])
    data[16:24] = b"\xff" * 8  # IHDR width and height, CRC now wrong
    with pytest.raises(InvalidImageError, match="corrupt PNG header"):
        decode_image(bytes(data))


def _claims(fmt: str, side: int) -> bytes:
    """A small file in ``fmt`` whose header claims ``side`` x ``side`` pixels."""
    small = Image.fromarray(_noise(8, 8))
    if fmt == "PNG":
        data = bytearray(_encode(small, "PNG"))
        data[16:24] = struct.pack(">II", side, side)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    elif fmt == "GIF":
        data = bytearray(_encode(small, "GIF"))
        data[6:10] = struct.pack("<HH", side, side)
        descriptor = data.index(b"\x2c", 13)
        data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", side, side)
    elif fmt == "BMP":
        data = bytearray(_encode(small, "BMP"))
        data[18:26] = struct.pack("<ii", side, side)
    elif fmt == "JPEG":
        data = bytearray(_encode(small, "JPEG"))
        frame = data.index(b"\xff\xc0")
        data[frame + 5 : frame + 9] = struct.pack(">HH", side, side)
    elif fmt == "TIFF":
        tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8)]
        tags += [(277, 3, 1), (278, 4, side), (279, 4, side * side)]
        entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
        data = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + b"\0\0\0\0" + b"\x80" * 64)
    elif fmt == "WEBP-VP8L":
        data = bytearray(_encode(small, "WEBP", lossless=True))
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        data[21:25] = (bits | (side - 1) | ((side - 1) << 14)).to_bytes(4, "little")
    elif fmt == "WEBP-VP8":
        data = bytearray(_encode(small, "WEBP", quality=80))
        data[26:30] = struct.pack("<HH", side, side)
    else:  # WEBP-VP8X: an extended header with a canvas in front of the lossless image
        inner = _encode(small, "WEBP", lossless=True)[12:]
        canvas = (side - 1).to_bytes(3, "little") * 2
        body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + canvas + inner
        data = bytearray(b"RIFF" + struct.pack("<I", len(body)) + body)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG", "TIFF", "WEBP-VP8L", "WEBP-VP8", "WEBP-VP8X"])
def test_decode_image_refuses_before_decoding_when_header_claims_too_many_pixels(fmt: str, monkeypatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("pixels decoded (or a canvas allocated) before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_run)
    # libwebp reserves 2 canvases of 4 bytes per claimed pixel when Pillow merely opens a WebP
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", must_not_run)
    with pytest.raises(InvalidImageError, match="9000x9000 pixels, over the limit of 64,000,000"):
        decode_image(_claims(fmt, 9000))  # 81M pixels: over aigi's limit, under Pillow's own bomb check


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG", "TIFF", "WEBP-VP8L", "WEBP-VP8", "WEBP-VP8X"])
def test_decode_image_sees_true_size_when_header_claim_is_modest(fmt: str) -> None:
    # the same forgery at 300x300 passes the size check, so the claims above really are read as 9000x9000
    with pytest.raises(InvalidImageError) as caught:
        decode_image(_claims(fmt, 300), max_pixels=300 * 300 - 1)
    assert "300x300 pixels" in str(caught.value)


def test_decode_image_applies_pixel_limit_when_input_is_trusted_pil_image() -> None:
    with pytest.raises(InvalidImageError, match="100x50 pixels"):
        decode_image(Image.new("L", (100, 50)), max_pixels=4999)


# --- 3. 16-bit conversion and the byte cap ------------------------------------------------------------------


def _old_wide_formula(values: np.ndarray, peak: float) -> np.ndarray:
    """The float64 conversion preprocessing used before the lookup table; the new one must match it exactly."""
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_decode_image_matches_float_formula_when_image_holds_every_16_bit_value(fmt: str, big_endian: bool) -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    image = Image.fromarray(values.astype(">u2") if big_endian else values)
    decoded = decode_image(_encode(image, fmt))
    np.testing.assert_array_equal(decoded[:, :, 0], _old_wide_formula(values, 65535.0))
    np.testing.assert_array_equal(decoded[:, :, 0], decoded[:, :, 2])


@pytest.mark.parametrize(
    ("values", "peak"),
    [
        (np.arange(-300, 65836, dtype=np.int32).reshape(8, -1), 65535.0),  # negatives, overflow
        (np.arange(-40, 216, dtype=np.int32).reshape(16, 16), 255.0),  # max <= 255: taken as 8-bit
    ],
)
def test_decode_image_matches_float_formula_when_image_is_int32(values: np.ndarray, peak: float) -> None:
    decoded = decode_image(_encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_array_equal(decoded[:, :, 0], _old_wide_formula(values, peak))


def test_decode_image_maps_nan_to_zero_when_float_image_has_nan() -> None:
    values = np.array([[np.nan, 10.4, 254.6, -3.0]], dtype=np.float32)
    decoded = decode_image(_encode(Image.fromarray(values), "TIFF"))
    assert decoded[0, :, 0].tolist() == [0, 10, 255, 0]


def test_preprocess_refuses_bytes_when_over_spec_max_bytes() -> None:
    data = _encode(Image.fromarray(_noise(64, 64)), "PNG")
    spec = PreprocessSpec(size=32, max_bytes=len(data) - 1)
    with pytest.raises(InvalidImageError, match=f"is {len(data):,} bytes, over the limit of {len(data) - 1:,} bytes"):
        preprocess(data, spec)
    with pytest.raises(InvalidImageError, match="over the limit"):
        preprocess(memoryview(data), spec)
    assert preprocess(data, PreprocessSpec(size=32, max_bytes=len(data))).shape == (3, 32, 32)


def test_preprocess_refuses_file_by_size_before_reading_it(tmp_path, monkeypatch) -> None:
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as file:
        file.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: no disk used

    def must_not_read(*args, **kwargs):
        raise AssertionError("file opened before its size was checked")

    monkeypatch.setattr("aigi.preprocessing.open", must_not_read, raising=False)
    monkeypatch.setattr(Path, "read_bytes", must_not_read)
    with pytest.raises(InvalidImageError, match=f"huge.jpg is {DEFAULT_MAX_BYTES + 1:,} bytes, over the limit"):
        preprocess(path, SPEC)
    with pytest.raises(InvalidImageError, match="over the limit"):
        decode_image(str(path))


def test_decode_image_takes_max_bytes_when_given() -> None:
    data = _encode(Image.fromarray(_noise(16, 16)), "PNG")
    with pytest.raises(InvalidImageError, match="over the limit of 10 bytes per image"):
        decode_image(data, max_bytes=10)


def test_read_image_bytes_reads_file_when_under_cap(tmp_path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    assert read_image_bytes(path, max_bytes=100) == b"x" * 100
    assert read_image_bytes(str(path)) == b"x" * 100
    with pytest.raises(InvalidImageError, match="a.png is 100 bytes, over the limit of 99 bytes per image"):
        read_image_bytes(path, max_bytes=99)


def test_read_image_bytes_raises_invalid_image_when_path_cannot_be_read(tmp_path) -> None:
    with pytest.raises(InvalidImageError, match="cannot read"):
        read_image_bytes(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="cannot read"):
        read_image_bytes(tmp_path)  # a directory


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_read_image_bytes_stops_at_cap_when_file_size_is_unknown() -> None:
    # a device (or pipe) reports size 0 to stat; the read itself must still stop one byte past the cap
    with pytest.raises(InvalidImageError, match="over the limit of 1,000 bytes"):
        read_image_bytes("/dev/zero", max_bytes=1000)


# --- 4. one error type ------------------------------------------------------------------------------------


def _tiff_with_float_strip_offset() -> bytes:
    """An 8x8 gray TIFF whose StripOffsets tag is a FLOAT: Pillow's loader raised a bare TypeError on it."""
    tags = [(256, 3, 8), (257, 3, 8), (258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, 1), (278, 3, 8), (279, 4, 64)]
    entries = [
        struct.pack("<HHIHH", tag, 3, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, 4, 1, value)
        for tag, kind, value in tags
    ]
    entries.insert(5, struct.pack("<HHIf", 273, 11, 1, 150.5))  # keep tags sorted: 273 after 262
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + b"".join(entries) + b"\0\0\0\0" + b"\x80" * 64


def test_preprocess_raises_invalid_image_when_tiff_strip_offset_is_a_float() -> None:
    with pytest.raises(InvalidImageError, match="TypeError"):
        preprocess(_tiff_with_float_strip_offset(), SPEC)


PILLOW_ERRORS = [
    OSError("broken data stream"),
    ValueError("bad value"),
    SyntaxError("not a PNG file"),
    struct.error("unpack requires a buffer of 4 bytes"),
    IndexError("index out of range"),
    TypeError("unsupported operand"),
    EOFError("no more images"),
    ZeroDivisionError("division by zero"),
    KeyError(305),
    MemoryError(),
    RuntimeError("decoder error"),
    Image.DecompressionBombError("Image size exceeds limit"),
]


@pytest.mark.parametrize(
    "error", PILLOW_ERRORS, ids=lambda error: type(error).__qualname__.replace("error", "struct.error")
)
@pytest.mark.parametrize("step", ["open", "load", "exif_transpose", "convert"])
def test_preprocess_raises_invalid_image_when_pillow_raises_anything(step: str, error: Exception, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise error

    data = _encode(Image.fromarray(_noise(40, 40)).convert("L"), "PNG")
    target = {
        "open": (PngImagePlugin.PngImageFile, "_open"),
        "load": (ImageFile.ImageFile, "load"),
        "exif_transpose": (ImageOps, "exif_transpose"),
        "convert": (Image.Image, "convert"),
    }[step]
    monkeypatch.setattr(*target, fail)
    with pytest.raises(InvalidImageError) as caught:
        preprocess(data, PreprocessSpec(size=32))
    # Pillow's own open turns a plugin's IndexError, KeyError, EOFError ... into "cannot identify"
    assert caught.value.__cause__ is error or (
        step == "open" and isinstance(caught.value.__cause__, UnidentifiedImageError)
    )


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_preprocess_lets_interrupts_through_when_raised_while_decoding(interrupt: type, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise interrupt()

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(interrupt):
        preprocess(_encode(Image.fromarray(_noise(40, 40)), "PNG"), SPEC)


def test_mutated_images_are_deterministic_when_seed_is_fixed() -> None:
    first, second = mutated_images(50, seed=3), mutated_images(50, seed=3)
    assert first == second
    assert mutated_images(50, seed=4) != first
    assert len({name for name, _ in first}) == 50


@pytest.mark.filterwarnings("ignore")  # Pillow warns about every corrupt tag; only exceptions matter here
def test_preprocess_returns_tensor_or_invalid_image_when_bytes_are_fuzzed() -> None:
    outcomes = {"ok": 0, "invalid": 0}
    failures = []
    for name, payload in mutated_images(600, seed=20240601):
        try:
            out = preprocess(payload, SPEC)
        except InvalidImageError:
            outcomes["invalid"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - exactly what this test looks for
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if out.shape != (3, 224, 224) or out.dtype != np.float32 or not np.isfinite(out).all():
            failures.append(f"{name}: bad tensor {out.shape} {out.dtype}")
        else:
            outcomes["ok"] += 1
    assert not failures, "\n".join(failures)
    assert outcomes["ok"] > 20 and outcomes["invalid"] > 20, outcomes  # both paths really exercised
