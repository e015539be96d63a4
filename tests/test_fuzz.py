"""Property-based tests (hypothesis): random configs, random ``key=value`` overrides and random split
settings either work or fail with a one-line UlfineError naming the key; never a traceback.

Example counts are kept small (the whole file runs in seconds); ``plugins`` is never drawn (it
imports code by design).
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from ulfine.cli import main
from ulfine.config import Config, build_config, load_config, parse_overrides
from ulfine.config.schema import option_sections
from ulfine.data import build_ssl_data, plan_counts, realised_counts
from ulfine.errors import ConfigError, DataError, UlfineError

# no example database: nothing is written into the working folder
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [prefix + name] + _keys(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


KEYS = sorted({k for k in _keys(Config) if k != "plugins"}
              | {f"{s}.{k}" for s, cls in option_sections().items() for k in _keys(cls)})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["lft", "ulfine", "cifar10", "cosine", "-1", "1e3"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                             max_size=2), max_leaves=4)
keys = st.one_of(st.sampled_from(KEYS), st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True))


def _nest(key: str, value: object) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value  # type: ignore[return-value]


def _named(msg: str, key: str) -> bool:
    """The message names the key, or the section above it (a wrong section type, an unknown key)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in msg for i in range(len(parts), 0, -1))


@FAST
@given(key=keys, value=values)
def test_config_loader_accepts_or_names_the_key(key, value):
    try:
        cfg = build_config(_nest(key, value))
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and _named(msg, key), msg
        return
    assert isinstance(cfg, Config)
    build_config(cfg.model_dump(mode="json"))  # what is accepted also survives a save and reload


# YAML's corners: dates that do not exist, bad tags, aliases, unclosed flows, null keys
YAML_CORNERS = ["2001-13-01", "2001-02-30", "!!float abc", "!!binary x", "&a [*a]", "?", "[", "{a: 1", ":",
                "1e9999", ".nan", "-.inf", "0x1F", "~", "''", "[1, [2, [3]]]", "{data: {root: 3}}"]
override_text = st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=16),
                          st.sampled_from(YAML_CORNERS))


@FAST
@given(items=st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, override_text), override_text), max_size=3))
def test_override_parser_and_the_cli_never_trace_back(items):
    items = [i for i in items if not i.lstrip().startswith(("-", "plugins"))]  # options are argparse's
    try:
        parsed = parse_overrides(items)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(parsed, dict)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["splits", "cifar10_n1500_m3000_g100_consistent", "--json", "--no-data", *items])
    assert code in (0, 2)
    if code == 2:
        text = err.getvalue()
        assert text.startswith("error: ") and text.count("\n") == 1 and "Traceback" not in text, text


split_settings = st.fixed_dictionaries({
    "data.num_labeled_head": st.one_of(st.none(), st.integers(-2, 260)),
    "data.num_unlabeled_head": st.one_of(st.none(), st.integers(-2, 260)),
    "data.imbalance_labeled": st.floats(0.5, 400), "data.imbalance_unlabeled": st.floats(0.5, 400),
    "data.unlabeled_order": st.sampled_from(["consistent", "uniform", "reversed", "middle", "headtail"]),
    "data.labeled_fraction": st.one_of(st.none(), st.floats(-0.1, 1.2)),
    "data.val_per_class": st.integers(-1, 60), "data.selection": st.sampled_from(["shuffle", "first"]),
    "data.labeled_in_unlabeled": st.booleans(), "data.pin_last": st.booleans(),
    "seed": st.integers(0, 5),
})


@settings(max_examples=40, deadline=None, database=None)
@given(setting=split_settings)
def test_split_engine_draws_the_planned_split_or_names_the_keys(setting):
    overrides = ["data.dataset=synthetic10", *(f"{k}={'null' if v is None else v}" for k, v in setting.items())]
    try:
        cfg = load_config(None, overrides)
        plan = plan_counts(cfg.data)
        data = build_ssl_data(cfg.data, cfg.seed)
    except (ConfigError, DataError) as exc:
        msg = str(exc)
        assert "\n" not in msg and ("data." in msg or "ratio" in msg), msg
        return
    except UlfineError as exc:  # pragma: no cover - any other kind is a finding
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc}") from None
    got = realised_counts(data)
    assert got["labeled"] == plan.labeled
    if plan.unlabeled is not None:
        assert got["unlabeled"] == plan.unlabeled
    roles = {r: set(data.indices[r].indices.tolist()) for r in ("labeled", "unlabeled", "val")}
    assert not roles["val"] & (roles["labeled"] | roles["unlabeled"])
    if cfg.data.labeled_in_unlabeled:
        assert roles["labeled"] <= roles["unlabeled"]
    else:
        assert not roles["labeled"] & roles["unlabeled"]
    val_labels = np.asarray(data.val.labels) if data.val is not None else np.zeros(0, np.int64)
    assert np.bincount(val_labels, minlength=10).tolist() == [cfg.data.val_per_class] * 10
    assert all(math.isfinite(c) and c >= 0 for c in got["labeled"])
