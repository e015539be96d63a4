"""Dimensions of ulfine-micro-vit (src/ulfine/models/configs/ulfine-micro-vit.json) for tests."""

WIDTH, LAYERS, MLP, EMBED, PATCH, IMAGE = 128, 4, 4 * 128, 64, 4, 32
TOKENS = (IMAGE // PATCH) ** 2 + 1  # 64 patches + CLS
