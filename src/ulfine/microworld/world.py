"""A procedural captioned-image world: 32x32 colour images of one object with attributes.

Why: no pretrained CLIP weights or captioned image data can be downloaded here, yet the first
command a user runs should exercise a real foundation model. This world is small enough that a
tiny CLIP learns it on a laptop CPU in minutes, and rich enough (8 shapes x 8 colours x size x
texture x position x background clutter, captions from templates) that the learnt text-image
space transfers zero-shot to colour/shape combinations it never saw.

Everything is vectorised numpy and deterministic from a seed: :func:`sample_attributes` draws
attribute arrays from a :class:`Style`, :func:`render` draws the images (2x supersampled for
anti-aliasing), :func:`caption` writes a caption from one image's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

IMAGE_SIZE = 32

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "ring", "cross", "star", "crescent",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (40, 175, 50),
    "cyan": (30, 200, 215),
    "blue": (40, 70, 225),
    "purple": (140, 50, 200),
    "pink": (250, 125, 185),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
#: red -> orange -> yellow -> green -> cyan -> blue -> purple -> pink -> red (hue order)
COLOUR_CYCLE: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 0)
SIZES: tuple[str, ...] = ("small", "medium", "large")
#: object radius range in pixels per size word (contiguous: sizes form one continuum)
SIZE_RADIUS: dict[str, tuple[float, float]] = {
    "small": (4.0, 6.5), "medium": (6.5, 9.5), "large": (9.5, 12.5),
}
#: period of the sensor banding (``Style.sensor_pattern``): the ViT's patch size, so every patch
#: carries the same pattern and the frozen tower sees one fixed offset per token, which an
#: adapter can learn to cancel and a classifier on the frozen features cannot
SENSOR_PERIOD = 4
#: textures the pretraining captions know; "checkered" and "noisy" are downstream-only shifts
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "noisy")


def is_held_out(colour: int, shape: int) -> bool:
    """Colour/shape combinations never shown in pretraining: (shape - colour) mod 8 in {0, 4}.

    Every colour misses two shapes and every shape misses two colours, so each word is still
    learnt, only the pairing is new (compositional zero-shot transfer).
    """
    return (shape - colour) % 8 in (0, 4)


@dataclass(frozen=True)
class Style:
    """How a split of the world is drawn: which sizes, textures and how much clutter.

    Probabilities are over the entries of ``textures``; ``bg_colour`` mixes a random colour cast
    into the grey background and ``bg_gradient`` adds a random linear brightness ramp.
    """

    sizes: tuple[str, ...] = SIZES
    textures: tuple[str, ...] = ("solid", "striped", "dotted")
    texture_p: tuple[float, ...] = (0.5, 0.25, 0.25)
    bg_level: tuple[float, float] = (20.0, 110.0)  # background brightness range
    bg_colour: float = 0.1  # strength of a random colour cast (relative to the brightness)
    bg_gradient: float = 20.0  # amplitude of a random linear brightness gradient
    noise: float = 6.0  # per-pixel Gaussian noise std
    clutter: tuple[int, int] = (0, 3)  # inclusive range of grey distractor strokes/blobs
    light: float = 0.08  # per-image multiplicative colour jitter (per channel)
    allowed: tuple[tuple[int, int], ...] | None = field(default=None)  # (colour, shape) pairs
    rotation: float = 20.0  # objects turn by a uniform angle in [-rotation, rotation] degrees
    #: every colour drawn this fraction of the way toward the next colour of COLOUR_CYCLE (a
    #: consistent shift of hue, like another camera's colour response)
    palette_shift: float = 0.0
    #: amplitude (grey levels) of a fixed banding the camera adds to every image: vertical
    #: stripes of period :data:`SENSOR_PERIOD` px, brightening and darkening alternate columns
    #: (a sensor's fixed-pattern noise). 0 = none.
    sensor_pattern: float = 0.0


#: the broad pretraining distribution: a foundation model has seen a bit of everything, the
#: downstream task's textures, clutter and lighting included; but its captions never name the
#: textures "checkered" and "noisy" (see :data:`CAPTIONED_TEXTURES`), so that what pretraining
#: leaves unaligned sits on the text side
PRETRAIN_STYLE = Style(
    textures=("solid", "striped", "dotted", "checkered", "noisy"),
    texture_p=(0.3, 0.15, 0.15, 0.2, 0.2),
    bg_level=(20.0, 150.0),
    bg_colour=0.25,
    bg_gradient=50.0,
    noise=12.0,
    clutter=(0, 5),
    light=0.15,
)
#: the downstream task: the unseen-in-captions textures on most objects, brighter coloured
#: gradient backgrounds, 2-5 clutter items, more noise, and another camera: every colour shifted
#: in hue (``palette_shift``, a text-side gap) and a fixed sensor banding that pretraining never
#: showed (``sensor_pattern``, an image-side gap that only fine-tuning the tower can close)
DOWNSTREAM_STYLE = replace(
    PRETRAIN_STYLE,
    textures=("solid", "striped", "checkered", "noisy"),
    texture_p=(0.2, 0.1, 0.35, 0.35),
    bg_level=(40.0, 150.0),
    clutter=(2, 5),
    palette_shift=0.4,
    sensor_pattern=40.0,
)
#: texture words pretraining captions use (the others are drawn but never named)
CAPTIONED_TEXTURES: tuple[str, ...] = ("striped", "dotted")


@dataclass
class Attributes:
    """Per-image attributes of a batch (arrays of length N)."""

    colour: np.ndarray  # index into COLOUR_NAMES
    shape: np.ndarray  # index into SHAPES
    size: np.ndarray  # index into SIZES
    texture: np.ndarray  # index into TEXTURES
    cx: np.ndarray  # object centre, pixels
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    seed: np.ndarray  # per-image seed for background, texture noise and clutter

    def __len__(self) -> int:
        return len(self.colour)

    def position(self, i: int) -> str:
        """Position phrase of image ``i`` (from its centre)."""
        dx, dy = self.cx[i] - IMAGE_SIZE / 2, self.cy[i] - IMAGE_SIZE / 2
        if max(abs(dx), abs(dy)) < 3.5:
            return "in the center"
        if abs(dx) >= abs(dy):
            return "on the left" if dx < 0 else "on the right"
        return "at the top" if dy < 0 else "at the bottom"


def sample_attributes(
    rng: np.random.Generator,
    n: int,
    style: Style = PRETRAIN_STYLE,
    colour: np.ndarray | None = None,
    shape: np.ndarray | None = None,
) -> Attributes:
    """Draw ``n`` objects. Colour/shape are given (a downstream class) or drawn from ``style``."""
    if colour is None or shape is None:
        pairs = np.array(
            style.allowed
            if style.allowed is not None
            else [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))],
            dtype=np.int64,
        )
        pick = pairs[rng.integers(0, len(pairs), n)]
        colour, shape = pick[:, 0], pick[:, 1]
    size_idx = np.array([SIZES.index(s) for s in style.sizes])[rng.integers(0, len(style.sizes), n)]
    lo = np.array([SIZE_RADIUS[SIZES[i]][0] for i in size_idx])
    hi = np.array([SIZE_RADIUS[SIZES[i]][1] for i in size_idx])
    radius = lo + (hi - lo) * rng.random(n)
    margin = radius + 1.0
    cx = margin + (IMAGE_SIZE - 2 * margin) * rng.random(n)
    cy = margin + (IMAGE_SIZE - 2 * margin) * rng.random(n)
    tex_idx = np.array([TEXTURES.index(t) for t in style.textures])
    texture = tex_idx[rng.choice(len(tex_idx), n, p=np.asarray(style.texture_p) / sum(style.texture_p))]
    return Attributes(
        colour=np.asarray(colour, dtype=np.int64),
        shape=np.asarray(shape, dtype=np.int64),
        size=size_idx.astype(np.int64),
        texture=texture.astype(np.int64),
        cx=cx,
        cy=cy,
        radius=radius,
        angle=np.deg2rad(style.rotation) * (2 * rng.random(n) - 1),
        seed=rng.integers(0, 2**31 - 1, n),
    )


def _shape_masks(u: np.ndarray, v: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Boolean coverage of each object in its own unit frame (u right, v up), (N, H, W)."""
    out = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(SHAPES):
        sel = shape == k
        if not sel.any():
            continue
        a, b = u[sel], v[sel]
        r = np.hypot(a, b)
        if name == "circle":
            m = r <= 1.0
        elif name == "square":
            m = np.maximum(np.abs(a), np.abs(b)) <= 0.8
        elif name == "triangle":
            m = (b >= -0.55) & (np.sqrt(3) * a + b <= 1.0) & (-np.sqrt(3) * a + b <= 1.0)
        elif name == "diamond":
            m = np.abs(a) + np.abs(b) <= 1.05
        elif name == "ring":
            m = (r <= 1.0) & (r >= 0.55)
        elif name == "cross":
            m = ((np.abs(a) <= 0.3) & (np.abs(b) <= 1.0)) | ((np.abs(b) <= 0.3) & (np.abs(a) <= 1.0))
        elif name == "star":
            t = (np.arctan2(b, a) * 5 / (2 * np.pi)) % 1.0
            m = r <= 0.42 + 0.58 * np.abs(2 * t - 1.0) ** 1.5
        else:  # crescent
            m = (r <= 1.0) & (np.hypot(a - 0.5, b) > 0.78)
        out[sel] = m
    return out


def _texture(u: np.ndarray, v: np.ndarray, texture: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Brightness factor of the object surface, (N, H, W) in [0.35, 1]."""
    out = np.ones(u.shape, dtype=np.float32)
    for k, name in enumerate(TEXTURES):
        sel = texture == k
        if not sel.any() or name == "solid":
            continue
        uu, vv = u[sel], v[sel]
        if name == "striped":
            f = np.where(np.sin(uu * 3 * np.pi) > 0, 1.0, 0.45)
        elif name == "dotted":
            f = np.where((np.sin(uu * 3.5 * np.pi) > 0.3) & (np.sin(vv * 3.5 * np.pi) > 0.3), 0.4, 1.0)
        elif name == "checkered":
            f = np.where((np.sin(uu * 2.5 * np.pi) > 0) ^ (np.sin(vv * 2.5 * np.pi) > 0), 1.0, 0.5)
        else:  # noisy
            f = np.clip(0.75 + 0.25 * noise[sel], 0.35, 1.0)
        out[sel] = f
    return out


MAX_CLUTTER = 8


def render(attrs: Attributes, style: Style = PRETRAIN_STYLE, supersample: int = 2) -> np.ndarray:
    """Draw the images of ``attrs`` as uint8 (N, 32, 32, 3); deterministic from the attributes.

    Background, clutter and noise come from one generator seeded by the images' own seeds, so
    the same attributes always give the same pixels.
    """
    n, s = len(attrs), supersample
    size = IMAGE_SIZE * s
    g = np.random.default_rng([int(x) for x in attrs.seed[:64]] + [n])
    f32 = np.float32
    # background: grey level, optional colour cast and linear gradient
    level = g.uniform(*style.bg_level, n).astype(f32)
    cast = g.normal(0.0, 1.0, (n, 3)).astype(f32) * style.bg_colour * level[:, None]
    grad_dir = g.uniform(0, 2 * np.pi, n).astype(f32)
    grad_amp = g.uniform(0, 1, n).astype(f32) * style.bg_gradient
    pix = (np.arange(IMAGE_SIZE, dtype=f32) + 0.5)  # background and clutter at 1x
    yy, xx = np.meshgrid(pix, pix, indexing="ij")
    ramp = (np.cos(grad_dir)[:, None, None] * (xx - 16) + np.sin(grad_dir)[:, None, None] * (yy - 16)) / 16
    img = (level[:, None, None] + grad_amp[:, None, None] * ramp)[..., None] + cast[:, None, None, :]
    # clutter: grey thin lines and small blobs that carry no label information
    count = g.integers(style.clutter[0], style.clutter[1] + 1, n)
    c = max(int(count.max(initial=0)), 1)
    active = np.arange(c)[None, :] < count[:, None]
    x0, y0 = g.uniform(0, 32, (2, n, c, 1, 1)).astype(f32)
    ang = g.uniform(0, np.pi, (n, c, 1, 1)).astype(f32)
    length = g.uniform(4, 12, (n, c, 1, 1)).astype(f32)
    blob_r = g.uniform(1.0, 2.5, (n, c, 1, 1)).astype(f32)
    is_line = g.random((n, c, 1, 1)) < 0.5
    grey = g.uniform(60, 200, (n, c)).astype(f32)
    ddx, ddy = xx - x0, yy - y0
    line = (np.abs(-ddx * np.sin(ang) + ddy * np.cos(ang)) <= 0.6) & (
        np.abs(ddx * np.cos(ang) + ddy * np.sin(ang)) <= length
    )
    blob = ddx * ddx + ddy * ddy <= blob_r * blob_r
    cm = np.where(is_line, line, blob) & active[:, :, None, None]  # (n, c, H, W)
    for j in range(c):  # later items paint over earlier ones
        img = np.where(cm[:, j, :, :, None], grey[:, j, None, None, None], img)
    # the object, in its rotated unit frame, supersampled s x s for anti-aliased coverage
    spix = (np.arange(size, dtype=f32) + 0.5) / s
    syy, sxx = np.meshgrid(spix, spix, indexing="ij")
    dx = (sxx[None] - attrs.cx[:, None, None].astype(f32)) / attrs.radius[:, None, None].astype(f32)
    dy = (attrs.cy[:, None, None].astype(f32) - syy[None]) / attrs.radius[:, None, None].astype(f32)
    ca = np.cos(attrs.angle)[:, None, None].astype(f32)
    sa = np.sin(attrs.angle)[:, None, None].astype(f32)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    mask = _shape_masks(u, v, attrs.shape)
    shade = _texture(u, v, attrs.texture, g.standard_normal((n, size, size), dtype=f32))
    pool = lambda a: a.reshape(n, IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(2, 4))
    alpha = pool(mask.astype(f32))[..., None]
    lum = pool(np.where(mask, shade, 0.0).astype(f32))[..., None]
    base = palette(style.palette_shift)[attrs.colour].reshape(n, 3)
    light = 1.0 + g.uniform(-style.light, style.light, (n, 3)).astype(f32)
    img = lum * (base * light)[:, None, None, :] + (1.0 - alpha) * img
    img = img + style.noise * g.standard_normal((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=f32)
    img = img + style.sensor_pattern * sensor_banding()[None, None, :, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sensor_banding() -> np.ndarray:
    """(IMAGE_SIZE,) float32 column profile of the sensor banding: cos(2 pi x / SENSOR_PERIOD) at
    integer columns, i.e. 1, 0, -1, 0, ... for period 4."""
    phase = np.arange(IMAGE_SIZE) % SENSOR_PERIOD
    return np.rint(np.cos(2 * np.pi * phase / SENSOR_PERIOD) * 1e6).astype(np.float32) / 1e6


def palette(shift: float = 0.0) -> np.ndarray:
    """(8, 3) float32 RGB of the colours, each moved ``shift`` of the way toward its successor in
    :data:`COLOUR_CYCLE`."""
    rgb = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
    return ((1.0 - shift) * rgb + shift * rgb[list(COLOUR_CYCLE)]).astype(np.float32)


PREFIXES: tuple[str, ...] = (
    "a photo of a", "a picture of a", "an image of a", "a rendering of a", "there is a", "a",
)


def caption(attrs: Attributes, i: int, rng: np.random.Generator) -> str:
    """A templated caption for image ``i``: colour and shape always, other attributes sometimes.

    Example: ``"a photo of a small striped red star on the left."``
    """
    words = [PREFIXES[rng.integers(0, len(PREFIXES))]]
    if rng.random() < 0.5:
        words.append(SIZES[attrs.size[i]])
    tex = TEXTURES[attrs.texture[i]]
    if tex != "solid" and rng.random() < 0.6 and tex in CAPTIONED_TEXTURES:
        words.append(tex)
    words.append(COLOUR_NAMES[attrs.colour[i]])
    words.append(SHAPES[attrs.shape[i]])
    if rng.random() < 0.3:
        words.append(attrs.position(i))
    return " ".join(words) + "."


def pretrain_style() -> Style:
    """The pretraining style with the held-out colour/shape pairs removed."""
    allowed = tuple(
        (c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if not is_held_out(c, s)
    )
    return replace(PRETRAIN_STYLE, allowed=allowed)


def sample_pretrain_batch(seed: int, n: int) -> tuple[np.ndarray, list[str], Attributes]:
    """``n`` pretraining images with captions, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    style = pretrain_style()
    attrs = sample_attributes(rng, n, style)
    images = render(attrs, style)
    captions = [caption(attrs, i, rng) for i in range(n)]
    return images, captions, attrs
