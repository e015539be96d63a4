"""The procedural world: deterministic, captions true to the pixels' attributes, hold-out kept."""

from __future__ import annotations

import numpy as np

from ulfine.microworld import world as W


def test_same_seed_same_images_and_captions() -> None:
    a_img, a_cap, _ = W.sample_pretrain_batch(7, 24)
    b_img, b_cap, _ = W.sample_pretrain_batch(7, 24)
    assert a_img.dtype == np.uint8 and a_img.shape == (24, 32, 32, 3)
    assert np.array_equal(a_img, b_img)
    assert a_cap == b_cap


def test_different_seeds_differ() -> None:
    a_img, a_cap, _ = W.sample_pretrain_batch(1, 24)
    b_img, b_cap, _ = W.sample_pretrain_batch(2, 24)
    assert not np.array_equal(a_img, b_img)
    assert a_cap != b_cap


def test_captions_match_attributes() -> None:
    _, caps, attrs = W.sample_pretrain_batch(3, 200)
    for i, cap in enumerate(caps):
        words = cap.rstrip(".").split()
        colour, shape = W.COLOUR_NAMES[attrs.colour[i]], W.SHAPES[attrs.shape[i]]
        # colour and shape always appear, as the adjacent pair "<colour> <shape>"
        assert f"{colour} {shape}" in cap, cap
        assert [w for w in words if w in W.COLOUR_NAMES] == [colour]
        assert [w for w in words if w in W.SHAPES] == [shape]
        sizes = [w for w in words if w in W.SIZES]
        assert sizes in ([], [W.SIZES[attrs.size[i]]]), cap
        textures = [w for w in words if w in W.TEXTURES]
        assert textures in ([], [W.TEXTURES[attrs.texture[i]]]) and "solid" not in textures
        # the downstream textures are drawn in pretraining but never named
        assert not set(textures) - set(W.CAPTIONED_TEXTURES), cap
        # the size word agrees with the drawn radius
        lo, hi = W.SIZE_RADIUS[W.SIZES[attrs.size[i]]]
        assert lo <= attrs.radius[i] <= hi


def test_pretraining_never_shows_held_out_pairs() -> None:
    _, _, attrs = W.sample_pretrain_batch(5, 2000)
    assert not any(W.is_held_out(c, s) for c, s in zip(attrs.colour, attrs.shape))
    held = [(c, s) for c in range(8) for s in range(8) if W.is_held_out(c, s)]
    assert len(held) == 16  # two per colour, two per shape
    assert sorted({c for c, _ in held}) == list(range(8)) and sorted({s for _, s in held}) == list(range(8))


def test_render_draws_the_object_in_its_colour() -> None:
    """A clean large red square centred in the image: centre pixel is exactly the red, corner is grey."""
    style = W.Style(noise=0.0, clutter=(0, 0), light=0.0, bg_colour=0.0, bg_gradient=0.0, bg_level=(50.0, 50.0))
    attrs = W.Attributes(
        colour=np.array([W.COLOUR_NAMES.index("red")]), shape=np.array([W.SHAPES.index("square")]),
        size=np.array([2]), texture=np.array([0]), cx=np.array([16.0]), cy=np.array([16.0]),
        radius=np.array([10.0]), angle=np.array([0.0]), seed=np.array([0]),
    )
    img = W.render(attrs, style)[0]
    assert tuple(img[16, 16]) == W.COLOURS["red"]
    assert tuple(img[0, 0]) == (50, 50, 50)
    # square half-width 0.8 * 10 = 8 px around the centre: pixel 9 px away is background
    assert tuple(img[16, 16 + 9]) == (50, 50, 50)
    assert tuple(img[16, 16 + 7]) == W.COLOURS["red"]


def test_pretraining_draws_the_uncaptioned_textures() -> None:
    """Pretraining images carry every texture (the image tower sees them), captions name only some."""
    _, caps, attrs = W.sample_pretrain_batch(4, 400)
    drawn = {W.TEXTURES[t] for t in attrs.texture}
    assert {"checkered", "noisy"} <= drawn
    named = {w for cap in caps for w in cap.rstrip(".").split() if w in W.TEXTURES}
    assert named == set(W.CAPTIONED_TEXTURES)


def test_rotation_stays_in_the_styles_range() -> None:
    rng = np.random.default_rng(0)
    attrs = W.sample_attributes(rng, 500, W.Style(rotation=20.0))
    assert np.abs(attrs.angle).max() <= np.deg2rad(20.0) and np.abs(attrs.angle).max() > np.deg2rad(18.0)


def test_palette_shift_moves_each_colour_toward_the_next_hue() -> None:
    """palette(s) = (1 - s) * colour + s * successor; the centre pixel of a clean object shows it."""
    assert np.array_equal(W.palette(0.0), np.array([W.COLOURS[c] for c in W.COLOUR_NAMES], dtype=np.float32))
    red, orange = np.array(W.COLOURS["red"], dtype=np.float32), np.array(W.COLOURS["orange"], dtype=np.float32)
    np.testing.assert_allclose(W.palette(0.4)[W.COLOUR_NAMES.index("red")], 0.6 * red + 0.4 * orange, rtol=1e-6)
    pink = W.COLOUR_NAMES.index("pink")  # the cycle closes: pink moves toward red
    np.testing.assert_allclose(W.palette(1.0)[pink], red)
    style = W.Style(noise=0.0, clutter=(0, 0), light=0.0, bg_colour=0.0, bg_gradient=0.0, bg_level=(50.0, 50.0),
                    palette_shift=0.5)
    attrs = W.Attributes(
        colour=np.array([W.COLOUR_NAMES.index("red")]), shape=np.array([W.SHAPES.index("circle")]),
        size=np.array([2]), texture=np.array([0]), cx=np.array([16.0]), cy=np.array([16.0]),
        radius=np.array([10.0]), angle=np.array([0.0]), seed=np.array([0]),
    )
    assert tuple(W.render(attrs, style)[0, 16, 16]) == tuple(np.rint(0.5 * red + 0.5 * orange).astype(int))


def test_sensor_banding_adds_the_same_stripes_to_every_patch() -> None:
    """Style.sensor_pattern adds amplitude * (1, 0, -1, 0) per column (period = the ViT's patch),
    on top of everything else; the pretraining style has none, the downstream style 40."""
    rng = np.random.default_rng(3)
    attrs = W.sample_attributes(rng, 4, W.Style())
    plain = W.render(attrs, W.Style(bg_level=(100.0, 100.0))).astype(int)
    banded = W.render(attrs, W.Style(bg_level=(100.0, 100.0), sensor_pattern=40.0)).astype(int)
    diff = banded - plain
    inside = (plain > 45) & (plain < 210)  # away from clipping
    expected = np.broadcast_to(np.tile([40, 0, -40, 0], 8)[None, None, :, None], diff.shape)
    assert inside.mean() > 0.5 and np.array_equal(diff[inside], expected[inside])
    assert W.PRETRAIN_STYLE.sensor_pattern == 0.0 and W.DOWNSTREAM_STYLE.sensor_pattern == 40.0
    assert W.SENSOR_PERIOD == 4
