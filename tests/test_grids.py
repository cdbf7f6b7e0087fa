"""Image grids (torchvision's make_grid behind the report's sample grids and the figures'
labelled grids): each image in its cell, row by row, padding in the pad colour."""

import numpy as np
import pytest

from hkd.analysis.plots import compose
from hkd.images import grid, to_uint8
from hkd.report.build import image_grid


def cells(n, channels, h=3, w=4, dtype=np.uint8):
    """n images, each a different constant per channel, so a misplaced one shows."""
    values = np.arange(n * channels).reshape(n, channels, 1, 1) + 10
    return np.broadcast_to(values, (n, channels, h, w)).astype(dtype)


@pytest.mark.parametrize(("n", "cols", "channels"), [(7, 3, 1), (6, 3, 3), (2, 5, 3), (1, 4, 1)])
def test_grid_places_each_image_in_its_cell(n, cols, channels):
    images, pad = cells(n, channels), 2
    out = grid(images, cols, pad, pad_value=255)
    width = min(n, cols)
    rows = -(-n // width)
    assert out.shape == (rows * (3 + pad) + pad, width * (4 + pad) + pad, channels)
    expected = np.full(out.shape, 255, np.uint8)
    for i in range(n):
        y, x = pad + (i // width) * (3 + pad), pad + (i % width) * (4 + pad)
        expected[y : y + 3, x : x + 4] = images[i].transpose(1, 2, 0)
    np.testing.assert_array_equal(out, expected)


def test_grid_rejects_a_single_image():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        grid(np.zeros((3, 4, 4)), 2, 2, 0)


def test_report_grid_is_the_uint8_grid_scaled_up():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.2, 1.2, (5, 1, 4, 4)).astype(np.float32)
    img = image_grid(images, cols=2, pad=1, scale=3)
    assert img.mode == "L"  # grey samples stay one channel
    small = grid(to_uint8(images), 2, 1, pad_value=255)[..., 0]
    np.testing.assert_array_equal(np.asarray(img), small.repeat(3, 0).repeat(3, 1))
    assert image_grid(images.repeat(3, 1), cols=2).mode == "RGB"


def test_figure_canvas_is_the_grid_of_the_images_in_zero_one():
    rows = np.linspace(-1.5, 1.5, 2 * 3 * 1 * 2 * 2, dtype=np.float32).reshape(2, 3, 1, 2, 2)
    canvas = compose(rows)
    assert canvas.shape == (2 * 4 + 2, 3 * 4 + 2, 3)  # grey drawn as RGB
    flat = np.clip((rows.reshape(6, 1, 2, 2) + 1) / 2, 0, 1)
    np.testing.assert_array_equal(canvas, grid(flat, 3, 2, pad_value=1.0).repeat(3, -1))
    assert canvas[0].min() == 1.0 and canvas.min() == 0.0
