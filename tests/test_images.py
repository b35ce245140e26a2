"""decode_image: every image mode converts to RGB; every bad input is a one-line error naming it."""

import io

import numpy as np
import pytest
from PIL import Image

from wbc.data.images import MAX_IMAGE_BYTES, ImageDecodeError, decode_image, decode_image_array


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.fixture
def rgb():
    pixels = np.zeros((60, 80, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[20:40, 30:50] = (10, 20, 150)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    "make",
    [
        lambda im, p: _save(im, p / "a.jpg"),
        lambda im, p: _save(im.convert("L"), p / "gray.jpg"),
        lambda im, p: _save(im.convert("RGBA"), p / "alpha.png"),
        lambda im, p: _save(im.convert("P", palette=Image.Palette.ADAPTIVE), p / "palette.png"),
        lambda im, p: _save(im.convert("CMYK"), p / "cmyk.jpg"),
        lambda im, p: _save(Image.fromarray((np.asarray(im.convert("L"), dtype=np.uint16) * 257)), p / "sixteen.png"),
        lambda im, p: _save(im.resize((1, 1)), p / "tiny.png"),
    ],
    ids=["rgb-jpeg", "grayscale", "rgba-png", "palette-png", "cmyk-jpeg", "16bit-png", "1x1"],
)
def test_modes_convert_to_square_rgb(make, rgb, tmp_path):
    path = make(rgb, tmp_path)
    tensor = decode_image(path, 32)
    assert tensor.shape == (3, 32, 32) and str(tensor.dtype) == "torch.uint8"
    assert tensor.float().std() > 0 or path.name == "tiny.png"


def test_tensor_is_the_array_channels_first(rgb, tmp_path):
    path = _save(rgb, tmp_path / "cell.jpg")
    tensor = decode_image(path, 24)
    assert tensor.is_contiguous()
    assert np.array_equal(tensor.numpy(), decode_image_array(path, 24).transpose(2, 0, 1))


def test_sixteen_bit_keeps_its_range(tmp_path):
    values = np.full((10, 10), 40000, dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert abs(int(decode_image_array(path, 10)[0, 0, 0]) - 40000 // 257) <= 1


def test_transparent_background_becomes_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert (decode_image_array(path, 8) == 255).all()


def test_bytes_and_path_decode_identically(rgb, tmp_path):
    path = _save(rgb, tmp_path / "a.jpg", quality=90)
    assert np.array_equal(decode_image_array(path, 24), decode_image_array(path.read_bytes(), 24))


def _bad_inputs(tmp_path, rgb):
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    bomb = io.BytesIO()
    Image.new("1", (6000, 6000)).save(bomb, format="PNG")
    (tmp_path / "bomb.png").write_bytes(bomb.getvalue())
    (tmp_path / "huge.jpg").write_bytes(b"\xff\xd8" + b"0" * (MAX_IMAGE_BYTES + 1))
    return {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "bomb.png": "pixel limit",
        "huge.jpg": "byte limit",
        "missing.jpg": "cannot read",
    }


def test_bad_inputs_raise_one_line_errors_naming_the_file(tmp_path, rgb):
    for name, reason in _bad_inputs(tmp_path, rgb).items():
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(tmp_path / name, 32)
        message = str(caught.value)
        assert name in message and reason in message and "\n" not in message, message
