"""decode_image on real sensor_msgs messages (rclpy types): encodings, row padding, compression, errors."""
import cv2
import numpy as np
import pytest

from robovlm_ros.robot.images import ImageDecodeError, decode_image

sensor_msgs = pytest.importorskip("sensor_msgs.msg")

RGB = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)


def raw(img, encoding, pad=0):
    h, w = img.shape[:2]
    c = 1 if img.ndim == 2 else img.shape[2]
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, : w * c] = img.reshape(h, -1)
    return sensor_msgs.Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


@pytest.mark.parametrize("encoding,convert", [
    ("rgb8", lambda x: x), ("bgr8", lambda x: x[..., ::-1]),
    ("rgba8", lambda x: np.dstack([x, np.full(x.shape[:2], 255, np.uint8)])),
    ("bgra8", lambda x: np.dstack([x[..., ::-1], np.full(x.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_decode_to_rgb(encoding, convert, pad):
    out = decode_image(raw(np.ascontiguousarray(convert(RGB)), encoding, pad))
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, RGB)


def test_mono8_is_replicated_to_three_channels():
    gray = RGB[..., 0].copy()
    out = decode_image(raw(gray, "mono8"))
    np.testing.assert_array_equal(out, np.dstack([gray] * 3))


def test_compressed_png_is_lossless_and_jpeg_is_close():
    ok, png = cv2.imencode(".png", RGB[..., ::-1])
    out = decode_image(sensor_msgs.CompressedImage(format="png", data=png.tobytes()))
    np.testing.assert_array_equal(out, RGB)
    smooth = np.tile(np.linspace(0, 250, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
    smooth[..., 1] //= 2
    ok, jpg = cv2.imencode(".jpg", smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_image(sensor_msgs.CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpg.tobytes()))
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).mean() < 3


@pytest.mark.parametrize("make,match", [
    (lambda: raw(RGB, "rgb16"), "unsupported encoding"),
    (lambda: sensor_msgs.Image(height=6, width=5, encoding="rgb8", step=15, data=bytes(10)), "size mismatch"),
    (lambda: sensor_msgs.Image(height=6, width=5, encoding="rgb8", step=10, data=bytes(60)), "size mismatch"),
    (lambda: sensor_msgs.Image(height=0, width=5, encoding="rgb8", step=15, data=b""), "empty"),
    (lambda: sensor_msgs.CompressedImage(format="jpeg", data=b"not a jpeg"), r"compressed image \('jpeg'\): \w"),
    (lambda: sensor_msgs.CompressedImage(format="jpeg", data=b""), "no data"),
])
def test_malformed_images_raise_clear_errors(make, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(make())
