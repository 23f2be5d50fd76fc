"""Property: whatever value a user sets on any config key, loading the config either gives a value
of the schema's type, inside its bounds and finite, or refuses with a message naming that key; and
a stage run with such a value either runs or exits with one message naming the key or file —
never a raw traceback (issue 36, 4 and 8, generalised)."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teddy import cli, config

from ..conftest import BASE, TINY, evaluate_args, tiny_soft_labels


def numeric_keys() -> list[tuple[str, dict]]:
    """Every (dotted key, schema) whose type includes number or integer."""
    found = []

    def walk(schema: dict, where: str) -> None:
        for key, sub in schema.get("properties", {}).items():
            dotted = f"{where}.{key}" if where else key
            if dotted == "study":  # filled from a study file's name and question, not set by a value
                continue
            kinds = sub.get("type", [])
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if sub.get("type") == "object" or "properties" in sub:
                walk(sub, dotted)
            elif {"number", "integer"} & set(kinds):
                found.append((dotted, sub))

    walk(config.load_schema(), "")
    return found


KEYS = numeric_keys()
VALUES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["nan", ".inf", "-.inf", "1e400", "5.0", "0.5", "1e-3", "abc", "", "[1, 2]", "true", "null"]
    ),
    st.booleans(),
    st.none(),
)


def as_override(key: str, value) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def lookup(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def within(value, schema: dict) -> bool:
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if value is None:
        return "null" in kinds
    if isinstance(value, bool):
        return "boolean" in kinds
    if isinstance(value, float) and ("number" not in kinds or not math.isfinite(value)):
        return False
    if not isinstance(value, int | float):
        return True  # a string or list member of a union type: the schema checked it
    lo, hi = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        return False
    return lo <= value <= hi


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), VALUES)
def test_any_value_on_any_numeric_key_loads_right_or_names_the_key(key_schema, value):
    key, schema = key_schema
    override = as_override(key, value)
    try:
        cfg = config.load([BASE, TINY], [override], check_data=False)
    except config.ConfigError as err:
        assert key in str(err), (override, str(err))
        return
    got = lookup(cfg, key)
    assert within(got, schema), (override, got)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("property")
    return tmp, *tiny_soft_labels(tmp, "--set", "evaluate.epochs=4")  # views for up to 4 epochs


EVALUATE_KEYS = [(k, s) for k, s in KEYS if k.startswith("evaluate.") and "full_data" not in k]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(EVALUATE_KEYS), VALUES)
def test_evaluate_runs_or_names_the_key(tiny, capsys, key_schema, value):
    """A stage run in-process: an unhandled error would propagate here as the traceback it prints."""
    tmp, cfg, data, pool, syn, soft = tiny
    key = key_schema[0]
    out = tmp / "ev"
    argv = ["evaluate", *cfg, "--set", "evaluate.epochs=2", "--set", as_override(key, value)]
    capsys.readouterr()
    code = cli.main([*argv, *evaluate_args(data, syn, soft), "--pool", str(pool), "--out", str(out)])
    err = capsys.readouterr().err
    assert code in (0, 1, 2), code
    if code:
        assert key in err or "soft_labels.pt" in err, err


DISTILL_KEYS = [(k, s) for k, s in KEYS if k.startswith("distill.") and k != "distill.shards"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(DISTILL_KEYS), VALUES)
def test_distill_runs_or_names_the_key(tiny, capsys, key_schema, value):
    tmp, cfg, data, pool, syn, soft = tiny
    key = key_schema[0]
    argv = ["distill", *cfg, "--set", "distill.iterations=2", "--set", as_override(key, value)]
    argv += ["--data", str(data), "--pool", str(pool), "--method", "teddy", "--ipc", "1", "--seed", "0"]
    capsys.readouterr()
    code = cli.main([*argv, "--out", str(tmp / "syn_teddy")])
    err = capsys.readouterr().err
    assert code in (0, 1, 2), code
    if code:
        assert key in err, err
