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
        if reason == "not an image":
            assert "accepted: JPEG, PNG, TIFF, BMP, GIF, WebP" in message, "the formats the decoder really reads"


def _cell(seed: int = 0) -> Image.Image:
    from conftest import cell_image

    return cell_image("monocyte", seed, size=48).crop((0, 0, 48, 40))  # not square: a turn shows


@pytest.mark.parametrize("orientation, stored", [(6, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180),
                                                 (8, Image.Transpose.ROTATE_270), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_the_exif_orientation_a_camera_wrote_is_honoured(orientation, stored, tmp_path):
    upright = _cell()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(upright.transpose(stored), tmp_path / "phone.png", exif=exif)
    assert np.array_equal(decode_image_array(path, None), np.asarray(upright))
    assert np.array_equal(decode_image_array(path, 32), decode_image_array(_save(upright, tmp_path / "ref.png"), 32))


def test_grey_levels_are_scaled_by_the_range_the_file_really_holds(tmp_path):
    grey = np.asarray(_cell().convert("L"), dtype=np.float64)
    expected = decode_image_array(_save(Image.fromarray(grey.astype(np.uint8)), tmp_path / "ref.png"), None).astype(int)
    float_unit = _save(Image.fromarray((grey / 255).astype(np.float32), mode="F"), tmp_path / "unit.tif")
    float_255 = _save(Image.fromarray(grey.astype(np.float32), mode="F"), tmp_path / "f255.tif")
    twelve_bit = _save(Image.fromarray(np.round(grey * 4095 / 255).astype(np.uint16)), tmp_path / "twelve.tif")
    sixteen_bit = _save(Image.fromarray(np.round(grey * 257).astype(np.uint16)), tmp_path / "sixteen.tif")
    for path in (float_unit, float_255, twelve_bit, sixteen_bit):
        assert np.abs(decode_image_array(path, None).astype(int) - expected).max() <= 1, path.name
    negative = _save(Image.fromarray((grey - 255).astype(np.float32), mode="F"), tmp_path / "negative.tif")
    with pytest.raises(ImageDecodeError, match="negative.tif: negative grey levels"):
        decode_image_array(negative, 32)


def test_a_file_of_several_images_is_refused_naming_the_count(tmp_path):
    path = tmp_path / "three.tif"
    _cell(0).save(path, save_all=True, append_images=[_cell(1), _cell(2)])
    with pytest.raises(ImageDecodeError, match="three.tif: 3 images in one file"):
        decode_image_array(path, 32)


def test_pages_split_into_cells_of_their_own_with_their_pixels_kept(tmp_path):
    """Each page a cell named file#page, decoding exactly like the page saved alone, whatever its mode: an 8-bit RGB
    page, a 12-bit grey page and a float page in one TIFF stack; the frames of an animated GIF; an MPO (a camera
    JPEG with its preview appended) stays one picture."""
    from wbc.data.images import split_pages

    grey = np.asarray(_cell(1).convert("L"), dtype=np.float32)
    pages = [_cell(0), Image.fromarray(np.round(grey * 4095 / 255).astype(np.uint16)), Image.fromarray(grey / 255, mode="F")]
    stack = tmp_path / "stack.tif"
    pages[0].save(stack, save_all=True, append_images=pages[1:])
    split = split_pages(stack, "stack.tif")
    assert [name for name, _ in split] == ["stack.tif#1", "stack.tif#2", "stack.tif#3"]
    for index, (page, (name, source)) in enumerate(zip(pages, split)):
        alone = _save(page, tmp_path / f"page{index}.tif")
        assert np.array_equal(decode_image_array(source, 32, name=name), decode_image_array(alone, 32)), name
    assert decode_image_array(split[1][1], None).std() > 20, "the 12-bit page keeps its contrast"

    animation = tmp_path / "cells.gif"
    _cell(0).save(animation, save_all=True, append_images=[_cell(2)], duration=100)
    frames = split_pages(animation, "cells.gif")
    assert [name for name, _ in frames] == ["cells.gif#1", "cells.gif#2"]
    assert not np.array_equal(decode_image_array(frames[0][1], 32), decode_image_array(frames[1][1], 32))

    single = _save(_cell(0), tmp_path / "one.png")
    assert split_pages(single, "one.png") == [("one.png", single)]
    mpo = tmp_path / "camera.mpo"
    _cell(0).save(mpo, "MPO", save_all=True, append_images=[_cell(0).resize((16, 16))])
    assert Image.open(mpo).n_frames == 2 and split_pages(mpo, "camera.mpo") == [("camera.mpo", mpo)]
    assert decode_image_array(mpo, None).shape == np.asarray(_cell(0)).shape
    assert split_pages(b"not an image", "x.bin") == [("x.bin", b"not an image")], "the decoder names the problem later"


def test_base64_as_encoders_send_it_decodes_to_the_same_file(tmp_path):
    import base64

    from wbc.serving.pyfunc import _decode_base64

    data = io.BytesIO()
    _cell().save(data, format="JPEG")
    raw = data.getvalue()
    plain = base64.b64encode(raw).decode()
    for sent in (plain, base64.encodebytes(raw).decode(), plain + "\n", "data:image/jpeg;base64," + plain,
                 "\r\n".join(plain[i:i + 64] for i in range(0, len(plain), 64))):
        assert _decode_base64(sent, "row 0") == raw
    assert "row 3: 'image' is not valid base64" in _decode_base64(plain[:20] + "*" + plain[20:], "row 3")
