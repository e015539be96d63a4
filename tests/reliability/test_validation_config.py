"""Config values that validate as their type but crash (or exhaust the machine) long after the start
are refused when the config is read, in one line naming the key."""

from __future__ import annotations

import pytest

from ulfine.cli import main
from ulfine.config import load_config
from ulfine.errors import ConfigError

REFUSED = [
    ("seed=9223372036854775808", "seed"),  # 2**63: torch.manual_seed overflows
    ("train.batch_size=2097152", "train.batch_size"),
    ("eval.batch_size=2097152", "eval.batch_size"),
    ("adaptformer.bottleneck=10000000", "adaptformer.bottleneck"),
    ("eval.ece_bins=100001", "eval.ece_bins"),
    ("data.num_workers=100000", "data.num_workers"),
    ("data.image_size=100000", "data.image_size"),
    ("ssl.mu=100000", "ssl.mu"),
    ("model.templates=['a photo of {1}.']", "model.templates"),
    ("model.templates=['a {} next to a {}.']", "model.templates"),
    ("model.templates=['a photo.']", "model.templates"),
    ("model.templates=['a {!r}.']", "model.templates"),
    ("model.templates=['a {.']", "model.templates"),
]


@pytest.mark.parametrize(("override", "key"), REFUSED, ids=[r[0][:40] for r in REFUSED])
def test_values_that_would_crash_later_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_the_bounds_leave_real_values_alone():
    cfg = load_config(None, ["seed=9223372036854775807", "train.batch_size=1024", "eval.ece_bins=15",
                             "model.templates=['a photo of a {}.', 'a {{braced}} {}.']", "data.num_workers=64"])
    assert cfg.seed == 2**63 - 1 and cfg.model.templates[1] == "a {{braced}} {}."


def test_the_cli_says_it_in_one_line(capsys):
    assert main(["splits", "synthetic_smoke", "--no-data", "model.templates=['{} and {}']"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.templates" in err and "\n" not in err
