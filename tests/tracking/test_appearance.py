"""Colours that tell two people apart: same clothes near 0, different clothes near 1, shade and grey tell nothing."""

from __future__ import annotations

import numpy as np

from edgedet.tracking.appearance import APPEARANCE_SIZE, colour_histograms, colourless, hellinger

RED, BLUE, GREEN, WHITE = (0, 0, 200), (200, 0, 0), (0, 160, 0), (230, 230, 230)


def scene(people, shade: float = 1.0) -> np.ndarray:
    image = np.full((200, 400, 3), 90, np.uint8)
    for (x, y), top, bottom in people:
        image[y:y + 50, x:x + 30] = top
        image[y + 50:y + 100, x:x + 30] = bottom
    return (image * shade).astype(np.uint8)


def boxes(*corners) -> np.ndarray:
    return np.array([[x, y, x + 30, y + 100] for x, y in corners], np.float32)


def test_the_same_clothes_anywhere_are_close_and_other_clothes_far():
    image = scene([((10, 10), RED, BLUE), ((200, 80), RED, BLUE), ((300, 50), BLUE, RED)])
    looks = colour_histograms(image, boxes((10, 10), (200, 80), (300, 50)))
    assert looks.shape == (3, APPEARANCE_SIZE)
    d = hellinger(looks, looks)
    assert d[0, 1] < 0.05  # the same person somewhere else
    assert d[0, 2] > 0.9  # a red top and blue trousers is not a blue top and red trousers


def test_shade_does_not_change_colours():
    sunny = colour_histograms(scene([((10, 10), RED, GREEN)]), boxes((10, 10)))
    shady = colour_histograms(scene([((10, 10), RED, GREEN)], shade=0.5), boxes((10, 10)))
    assert hellinger(sunny, shady)[0, 0] < 0.2


def test_grey_pictures_and_unseen_objects_veto_nothing():
    grey = scene([((10, 10), WHITE, (40, 40, 40)), ((200, 50), (60, 60, 60), WHITE)])[..., 0]
    looks = colour_histograms(grey, boxes((10, 10), (200, 50)))
    assert hellinger(looks, looks).max() == 0.0
    unseen = np.full((1, APPEARANCE_SIZE), np.nan, np.float32)
    assert hellinger(unseen, looks).tolist() == [[0.0, 0.0]]


def test_grey_pictures_and_grey_clothes_are_colourless():
    grey = scene([((10, 10), WHITE, (40, 40, 40)), ((200, 50), RED, BLUE)])
    looks = colour_histograms(grey, boxes((10, 10), (200, 50)))
    assert colourless(looks).tolist() == [True, False]
    assert colourless(colour_histograms(grey[..., 0], boxes((200, 50)))).tolist() == [True]  # a grey picture
    assert colourless(np.full((1, APPEARANCE_SIZE), np.nan, np.float32)).tolist() == [True]  # never seen


def test_no_boxes_and_boxes_outside_the_picture():
    image = scene([])
    assert colour_histograms(image, np.zeros((0, 4), np.float32)).shape == (0, APPEARANCE_SIZE)
    edge = colour_histograms(image, np.array([[-50, -50, 20, 30], [390, 190, 500, 400]], np.float32))
    assert np.allclose(np.linalg.norm(edge, axis=1), 1.0)
