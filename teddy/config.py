"""Layered, schema-validated configuration.

defaults (schema) ← config/config.yaml ← experiment deltas ← ``--set key=value`` overrides.
The JSON Schema in ``workflow/schemas/config.schema.yaml`` is the single source of truth for keys,
types and defaults; it is also what Snakemake validates against. The validated mapping becomes
frozen dataclasses generated from that schema, so attribute typos fail loudly too.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from teddy.data import datasets
from teddy.method import registry

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


class ConfigError(ValueError):
    """A configuration problem, phrased as what is wrong, where, and how to fix it."""


@functools.cache
def load_schema() -> dict:
    """The JSON Schema, with the registries' names filled in: run.dataset (teddy.data: array datasets
    and image-file layouts), distill.matching and a variant's method (teddy.method.registry)."""
    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    props = schema["properties"]
    props["run"]["properties"]["dataset"]["enum"] = datasets.available()
    props["distill"]["properties"]["matching"]["enum"] = list(registry.MATCHING)
    variant = props["distill"]["properties"]["variants"]["additionalProperties"]
    variant["properties"]["method"]["enum"] = list(registry.METHODS)
    return schema


def deep_merge(base: Mapping, delta: Mapping) -> dict:
    """Return ``base`` updated recursively by ``delta`` (lists and scalars replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return dict(data)


ROOT = DEFAULT_CONFIG.parent.parent
STUDIES_DIR = ROOT / "config" / "studies"
DEFAULT_STUDY = "quickstart"  # what `make run` and the committed dvc.yaml build
STUDY_FILE_KEYS = ("question", "headline", "extends")  # a study file's keys besides config sections
# Where and how a job runs, not what it computes: the profile or --set gives them, never a study file
# (whole sections: None). A study run on a GPU cluster and on a laptop is the same study.
MACHINE_KEYS: dict[str, set[str] | None] = {
    "run": {"device", "threads", "dtype", "progress_seconds", "checkpoint_minutes"},
    "distill": {"shards", "checkpoint_every"},
    "prepare_data": {"root", "fashion_mnist_dir", "workers", "storage", "cache_max_gb"},
    "tracking": None,
    "resources": None,
}


def is_machine_key(section: str, key: str | None = None) -> bool:
    keys = MACHINE_KEYS.get(section, set())
    return keys is None or key in keys


def study_path(name: str) -> Path:
    """config/studies/<name>.yaml, or a ConfigError listing the committed studies."""
    path = STUDIES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))) or "none"
        raise ConfigError(f"study {name!r}: {path} does not exist; committed studies: {known}")
    return path


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def _project_of(path: Path) -> Path:
    """The project a config file belongs to: the folder holding config/ for a file in config/<x>/
    (a study, a protocol), else this package's project."""
    parent = path.resolve().parent
    return parent.parent.parent if parent.parent.name == "config" else ROOT


def _extends_path(value: Any, child: Path) -> Path:
    """A study name (a file beside ``child`` in config/studies/) or a file relative to the project."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{child}: extends must name a study or a config file, got {value!r}")
    project = _project_of(child)
    if value.endswith((".yaml", ".yml")) or "/" in value:
        target = Path(value) if Path(value).is_absolute() else project / value
        if not target.is_file():
            raise ConfigError(f"{child}: extends {value!r}, but {target} does not exist")
        return target
    target = project / "config" / "studies" / f"{value}.yaml"
    if not target.is_file():
        raise ConfigError(f"{child}: extends {value!r}, but there is no study {target}")
    return target


def layers(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The config files ``path`` stands for, base first: its ``extends:`` chain (a study name or a
    file, or a list of them layered in order, each file once; a study without one extends
    config/config.yaml), then ``path`` itself. A study file (one
    with a top-level ``question:``) becomes the ``study`` section (name = its file name) and may not
    set machine keys."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " → ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"{path}: extends forms a cycle ({chain}); break it")
    raw = read_yaml(path)
    study = "question" in raw
    parent = raw.pop("extends", None)
    if parent is None and study:
        parent = "config/config.yaml"  # the project's own defaults
    if study:
        _check_study_file(path, raw)
        raw["study"] = {
            "name": path.stem,
            "question": raw.pop("question"),
            "headline": raw.pop("headline", None),
        }
    parents = parent if isinstance(parent, list) else [] if parent is None else [parent]
    if isinstance(parent, list) and not parent:
        raise ConfigError(f"{path}: extends is an empty list; name a study or config file, or remove it")
    below: list[tuple[Path, dict]] = []
    # a list layers its files in order, each with its own chain; a file two chains share (the project's
    # config/config.yaml) comes in once, where it first appears: so every file of such a list should
    # extend what it stands on, else a later chain's base would undo it
    for name in parents:
        for layer in layers(_extends_path(name, path), (*_seen, path.resolve())):
            if all(layer[0].resolve() != seen.resolve() for seen, _ in below):
                below.append(layer)
    return [*below, (path, raw)]


def _check_study_file(path: Path, raw: Mapping) -> None:
    problems = []
    if not isinstance(raw.get("question"), str) or not raw["question"].strip():
        problems.append("question: say in one sentence what the study answers")
    if "study" in raw:
        problems.append("study: set by the loader from the file name and question; remove it")
    for section, value in raw.items():
        if section in STUDY_FILE_KEYS or not isinstance(value, Mapping):
            continue
        for key in sorted(value):
            if is_machine_key(section, key):
                problems.append(
                    f"{section}.{key}: a machine choice, not part of a study; give it in the Snakemake "
                    f"profile or on the command line (--set {section}.{key}=... ; snakemake --config "
                    f"{section}='{{{key}: ...}}')"
                )
    if problems:
        raise ConfigError(f"study file {path}:\n  " + "\n  ".join(problems))


def merged(paths: Iterable[str | Path]) -> dict:
    """The raw mapping of config files (each with its extends chain), first = base."""
    raw: dict = {}
    for path in paths:
        for _, layer in layers(path):
            raw = deep_merge(raw, layer)
    return raw


def parse_override(item: str) -> dict:
    """``"distill.iterations=5"`` → ``{"distill": {"iterations": 5}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, raw = item.split("=", 1)
    try:
        value: Any = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({problem}); "
            "write lists as key=[1, 2] and quote the whole --set argument in the shell"
        ) from None
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def _fill_defaults(validator_cls):
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
                elif sub.get("type") == "object":
                    instance.setdefault(key, {})
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return f"unknown config key {', '.join(hints)} in {where}: allowed keys are {', '.join(allowed)}"
    desc = error.schema.get("description", "").strip()
    fix = f" — {desc}" if desc else ""
    return f"config key {where}: {error.message}{fix}"


def _types(schema: Mapping) -> set[str]:
    kind = schema.get("type", ())
    return {kind} if isinstance(kind, str) else set(kind)


def _scalar(text: str, kinds: set[str]) -> Any:
    """``text`` as the schema's number/integer/boolean/null when it reads as one, else unchanged."""
    word = text.strip()
    if "null" in kinds and word.lower() in ("null", "none", "~", ""):
        return None
    if "boolean" in kinds and word.lower() in ("true", "false"):
        return word.lower() == "true"
    for kind, convert in (("integer", int), ("number", float)):
        if kind in kinds:
            try:
                value = convert(word)
            except ValueError:
                continue
            return int(value) if kind == "number" and value.is_integer() and "." not in word else value
    return text


def coerce(value: Any, schema: Mapping) -> Any:
    """Strings where the schema wants numbers, integers, booleans or lists of them become those
    types: PyYAML reads ``1e-3`` (no dot) as a string, and ``snakemake --config`` passes nested
    values as strings. Anything that does not read as the wanted type is left for validation."""
    kinds = _types(schema)
    if isinstance(value, Mapping):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {
            k: coerce(v, props.get(k, extra if isinstance(extra, Mapping) else {})) for k, v in value.items()
        }
    if isinstance(value, str) and "array" in kinds and value.strip().startswith("["):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if isinstance(value, list):
        return [coerce(v, schema.get("items", {})) for v in value]
    if isinstance(value, str) and kinds & {"number", "integer", "boolean", "null"} and "string" not in kinds:
        return _scalar(value, kinds)
    return value


def _number_problems(value: Any, schema: Mapping, where: str = "") -> Iterable[str]:
    """What JSON Schema lets through: NaN/±Inf (every bound comparison with NaN is false; a learning
    rate of inf fails only deep inside a stage), and 5.0 where a whole number is meant (Draft 2020
    counts it as an integer; range(5.0) then fails inside the stage)."""
    desc = schema.get("description", "").strip()
    fix = f" — {desc}" if desc else ""
    if isinstance(value, float) and not math.isfinite(value):
        yield f"config key {where}: {value} is not a finite number{fix}"
    elif isinstance(value, float) and "integer" in _types(schema) and "number" not in _types(schema):
        whole = f"write {int(value)}" if value.is_integer() else "write a whole number"
        yield f"config key {where}: {value} is not a whole number ({whole}){fix}"
    elif isinstance(value, Mapping):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, Mapping) else {})
            yield from _number_problems(v, sub, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _number_problems(v, schema.get("items", {}), f"{where}.{i}")


def validate(raw: Mapping) -> dict:
    """Validate ``raw`` against the schema, filling defaults; raise ConfigError listing problems."""
    schema = load_schema()
    data = coerce(copy.deepcopy(dict(raw)), schema)
    errors = sorted(_Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    problems = [_describe(e, schema) for e in errors] + list(_number_problems(data, schema))
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n  {lines}")
    return data


@functools.cache
def _dataclass_for(name: str, schema_json: str) -> type:
    import json

    schema = json.loads(schema_json)
    fields = [(key, Any) for key in schema.get("properties", {})]
    return dataclasses.make_dataclass(name, fields, frozen=True)


def _freeze(name: str, value: Any, schema: dict) -> Any:
    import json

    if (
        schema.get("type") == "object"
        and isinstance(value, Mapping)
        and schema.get("additionalProperties") is not False
    ):
        items = schema.get("additionalProperties")  # a free mapping (names → values), not a section
        items = items if isinstance(items, dict) else {}
        return types.MappingProxyType({k: _freeze(k, v, items) for k, v in value.items()})
    if schema.get("type") == "object" and isinstance(value, Mapping):
        cls = _dataclass_for(name, json.dumps(schema, sort_keys=True))
        props = schema.get("properties", {})
        return cls(**{k: _freeze(k.title(), value[k], props[k]) for k in props})
    if isinstance(value, list):
        return tuple(value)
    return value


def to_dict(cfg: Any) -> dict:
    """Frozen config → plain nested dict (tuples become lists) for YAML/JSON/MLflow."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def freeze(data: Mapping) -> Any:
    return _freeze("Config", data, load_schema())


def load(
    paths: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    check_data: bool = True,
    list_files: bool = True,
) -> Any:
    """Compose config files (first = base) and overrides, validate, check (unless ``check_data``
    is false: planning before the data is there), and freeze. ``list_files`` false: an image-file
    dataset's folder is not walked again (the stages after prepare_data read its index; walking
    ImageNet's 1.28M files costs a minute per job, benchmarks/results/scale.json)."""
    raw = merged(list(paths) or [DEFAULT_CONFIG])
    for item in overrides:
        raw = deep_merge(raw, parse_override(item))
    data = validate(raw)
    if check_data:
        check(data, list_files)
    return freeze(data)


FULL_DATA_MAX_GB = 16  # evaluate.full_data holds the training set in memory as float32


@functools.cache
def registered_archs() -> tuple[str, ...]:
    """The architectures teddy/models.py registers (``@register("name")``), read from its source: the
    config checks and the Snakefile's DAG load no torch, and no stage's code includes models.py
    for a name check (adding an architecture reruns only the stages that build models)."""
    import ast

    tree = ast.parse((Path(__file__).parent / "models.py").read_text())
    return tuple(
        sorted(
            d.args[0].value
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            for d in node.decorator_list
            if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register" and d.args
        )
    )


def unknown_arch(name: str) -> str | None:
    """None for a known architecture, else the message naming the choices. ``torchvision:<name>`` and
    ``timm:<name>`` ask the library (imported only then); names registered at run time count once
    teddy.models is loaded."""
    import sys

    models = sys.modules.get("teddy.models")
    if ":" in name or models is not None:
        if models is None:
            from teddy import models  # torchvision:/timm: names: the library says
        return None if models.known(name) else models.unknown_message(name)
    return None if name in registered_archs() else unknown_arch_message(name, registered_archs())


def unknown_arch_message(name: str, registered: Iterable[str]) -> str:
    return (
        f"unknown architecture {name!r}; registered: {', '.join(registered)}, or any "
        "torchvision:<name> (torchvision.models.list_models()) or timm:<name> (timm.list_models())"
    )


def check(data: Mapping, list_files: bool = True) -> None:
    """Checks the schema cannot express: names in registries, datasets present, IPC feasible (for an
    image-file dataset only with ``list_files``: that walks its folder)."""
    problems = []
    for key, names in (
        ("pretrain_pool.arch", [data["pretrain_pool"]["arch"]]),
        ("evaluate.archs", data["evaluate"]["archs"]),
    ):
        for name in names:
            if (problem := unknown_arch(name)) is not None:
                problems.append(f"config key {key}: {problem}")
    try:
        spec = datasets.get(data["run"]["dataset"])
        if list_files or not spec.files:  # an image-file dataset's folder checks are prepare_data's
            spec.check_available(data["prepare_data"])
            smallest = spec.min_train_per_class(data["prepare_data"])
            too_big = [ipc for ipc in data["distill"]["ipcs"] if ipc > smallest]
            if too_big:
                problems.append(
                    f"config key distill.ipcs: IPC {too_big} exceeds the {smallest} training images "
                    f"of the smallest class of {spec.name}; use IPC ≤ {smallest}"
                )
            if spec.files and data["evaluate"]["full_data"]:
                prep = data["prepare_data"]
                side = prep["image_size"] or spec.native_size or 0
                gb = smallest * len(spec.listing(prep).class_ids) * prep["channels"] * side * side * 4 / 1e9
                if gb > FULL_DATA_MAX_GB:
                    problems.append(
                        "config key evaluate.full_data: the full-data row trains students on the whole "
                        f"training set held in memory as a float32 set (≈ {gb:,.0f} GB for {spec.name}); turn "
                        "it off at this scale (the base model's val top-1 in the pool manifest is the "
                        "full-data reference)"
                    )
    except datasets.DatasetError as err:
        problems.append(str(err))
    weights = data["pretrain_pool"]["checkpoint"]
    if weights and not Path(weights).expanduser().is_file():
        problems.append(
            f"config key pretrain_pool.checkpoint: {weights} is not a file; point it at local base-model "
            "weights (e.g. torchvision's resnet18-f37072fd.pth; nothing is downloaded)"
            " or set it to null to train"
        )
    for epoch in data["pretrain_pool"]["prior_epochs"]:
        if epoch >= data["pretrain_pool"]["epochs"]:
            problems.append(
                f"config key pretrain_pool.prior_epochs: epoch {epoch} is not before the last "
                f"epoch ({data['pretrain_pool']['epochs']}); prior members are early checkpoints"
            )
    from teddy.protocol import algorithm  # imports this module at its top: not importable at ours

    pp, variants = data["pretrain_pool"], data["distill"]["variants"]
    for name in data["distill"]["methods"]:  # only what a configured method draws from must exist
        method = registry.METHODS.get(algorithm(data, name))
        if method is None or method.pool != "members":
            continue
        own = name in variants and "pool" in variants[name]
        pool = variants[name]["pool"] if own else data["distill"]["pool"]
        key = f"distill.variants.{name}.pool" if own else "distill.pool"
        if pool in ("post", "both") and pp["post_members"] == 0:
            problems.append(
                f"config key {key}: {pool!r} needs post members; set pretrain_pool.post_members ≥ 1"
            )
        if pool in ("prior", "both") and not (pp["prior_epochs"] or pp["prior_targets"]):
            problems.append(
                f"config key {key}: {pool!r} needs prior members; set pretrain_pool.prior_epochs "
                "or pretrain_pool.prior_targets"
            )
    problems = list(dict.fromkeys(problems))  # one line per key, however many methods share it
    if pp["checkpoint"] and not Path(pp["checkpoint"]).expanduser().is_file():
        problems.append(
            f"config key pretrain_pool.checkpoint: {pp['checkpoint']} is not a file; give the path of a "
            "local checkpoint, or null to train the base model"
        )
    distill_keys = (
        set(load_schema()["properties"]["distill"]["properties"]) - grid_keys()["distill"] - {"variants"}
    )
    for name, variant in data["distill"]["variants"].items():
        if name in registry.METHODS:
            problems.append(
                f"config key distill.variants.{name}: a variant cannot reuse a method name; rename it"
            )
        unknown = set(variant) - {"method"} - distill_keys
        for key in unknown:
            hint = difflib.get_close_matches(key, distill_keys, n=1)
            problems.append(
                f"config key distill.variants.{name}.{key}: not a distill key a variant can set"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        if not unknown and name not in registry.METHODS:  # the variant's own config must be valid too
            merged = copy.deepcopy(dict(data))
            merged["distill"] = {**merged["distill"], **_variant_keys(variant)}
            merged["distill"] |= {"variants": {}, "methods": [variant["method"]]}
            merged["report"] = {
                **merged["report"],
                "baseline_method": variant["method"],
                "also_against": [],
                "row_groups": {},
            }
            merged["study"] = {**merged.get("study", {}), "headline": None}
            merged["evaluate"] = {
                **merged["evaluate"],
                "full_data": False,
            }  # the baseline's row, not the variant's
            try:
                check(validate(merged))
            except ConfigError as err:
                problems.append(f"config key distill.variants.{name}: {str(err).split(chr(10), 1)[-1].strip()}")
    for name in data["distill"]["methods"]:
        if name not in registry.METHODS and name not in data["distill"]["variants"]:
            problems.append(
                f"config key distill.methods: {name!r} is neither a method ({', '.join(registry.METHODS)}) nor "
                "defined under distill.variants"
            )
    for name in data["pretrain_pool"]["member_archs"]:
        if (problem := unknown_arch(name)) is not None:
            problems.append(f"config key pretrain_pool.member_archs: {problem}")
    in_pool = {data["pretrain_pool"]["arch"], *data["pretrain_pool"]["member_archs"]}
    for name in data["distill"]["pool_archs"] or []:
        if name not in in_pool:
            problems.append(
                f"config key distill.pool_archs: {name!r} has no members in the pool ({sorted(in_pool)}); "
                "add it to pretrain_pool.member_archs"
            )
    stray_full = sorted(set(data["evaluate"]["full_data_archs"] or []) - set(data["evaluate"]["archs"]))
    if stray_full:
        problems.append(
            f"config key evaluate.full_data_archs: {stray_full} not in evaluate.archs "
            f"{data['evaluate']['archs']}; the full-data row's students are some of the sets' students"
        )
    stray = sorted(set(data["evaluate"]["hard_label_archs"]) - set(data["evaluate"]["archs"]))
    if stray:
        problems.append(
            f"config key evaluate.hard_label_archs: {stray} not in evaluate.archs {data['evaluate']['archs']}; "
            "a hard-label student trains beside a student of evaluate.archs"
        )
    if data["evaluate"]["labels"] == "hard" and data["evaluate"]["hard_label_archs"]:
        problems.append(
            "config key evaluate.hard_label_archs: with evaluate.labels: hard every student already learns "
            "hard labels (and no soft-label student trains beside it); set it to []"
        )
    if data["evaluate"]["full_data"] and registry.BASELINE not in data["distill"]["methods"]:
        problems.append(
            f"config key evaluate.full_data: the full-data row is method {registry.BASELINE} at the full IPC; "
            f"add {registry.BASELINE} to distill.methods"
        )
    if data["report"]["baseline_method"] not in data["distill"]["methods"]:
        problems.append(
            f"config key report.baseline_method: {data['report']['baseline_method']!r} is not in "
            f"distill.methods {data['distill']['methods']}; add it there or change the baseline"
        )
    listed = data["distill"]["methods"]
    for name in data["report"]["also_against"]:
        if name not in listed:
            problems.append(f"config key report.also_against: {name!r} is not in distill.methods {listed}")
    known = [*registry.METHODS, *data["distill"]["variants"]]
    for label, names in data["report"]["row_groups"].items():
        for name in names:  # a group may name methods other studies of a shared file run; not unknown ones
            if name not in known:
                problems.append(
                    f"config key report.row_groups.{label}: {name!r} is neither a method nor a "
                    f"distill.variants name ({', '.join(known)})"
                )
    headline = data.get("study", {}).get("headline")
    for key, names in (("method", data["distill"]["methods"]), ("baseline", data["distill"]["methods"])):
        if headline and key in headline and headline[key] not in names:
            problems.append(
                f"config key study.headline.{key}: {headline[key]!r} is not in distill.methods {names}"
            )
    if headline and headline["ipc"] not in data["distill"]["ipcs"]:
        problems.append(
            f"config key study.headline.ipc: {headline['ipc']} is not in distill.ipcs {data['distill']['ipcs']}"
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


RESOLVED = "config.resolved.yaml"  # every stage writes the config it ran with beside its outputs


def dump(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def resolve_for_workflow(raw: Mapping, folder: str | Path) -> tuple[dict, Path]:
    """Validate + check a workflow's merged config and write it, content-addressed, to ``folder``.

    Snakemake merges config/config.yaml, ``--configfile`` deltas and ``--config`` items; every job
    then hands the stage CLI exactly that resolved file, so rules never re-derive the layering.
    """
    import hashlib

    data = validate(raw)
    check(data)
    text = yaml.safe_dump(data, sort_keys=True)
    path = Path(folder) / f"config-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.exists():
        from teddy.io.files import atomic_path  # loads torch: not at import

        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return data, path


def workflow_studies(raw: Mapping, folder: str | Path) -> dict[str, tuple[dict, Path]]:
    """Snakemake's merged config → {study name: (resolved config, its file in ``folder``)}.

    Without a ``study`` item the merged config is one study (its ``study.name``, default
    ``default``). With ``--config study=a`` (or ``study=a,b``: several side by side) each study file
    is the config, with the machine keys (MACHINE_KEYS) that the profile, ``--configfile`` or
    ``--config`` set differently from config/config.yaml laid over it; any other key set there is
    refused: what a study computes lives in its file, so one command always rebuilds the same thing.
    """
    raw = dict(raw)
    names = raw.pop("study", None)
    if names is None or isinstance(names, Mapping):
        data, path = resolve_for_workflow(raw if names is None else {**raw, "study": names}, folder)
        return {data["study"]["name"]: (data, path)}
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"--config study={names!r}: name one study or several (study=a,b)")
    schema = load_schema()
    given, default = coerce(raw, schema), coerce(read_yaml(DEFAULT_CONFIG), schema)
    machine: dict = {}
    stray = []
    for section, values in given.items():
        if not isinstance(values, Mapping):
            stray.append(section)
            continue
        for key, value in values.items():
            if value == default.get(section, {}).get(key):
                continue
            if is_machine_key(section, key):
                machine.setdefault(section, {})[key] = value
            else:
                stray.append(f"{section}.{key}")
    if stray:
        raise ConfigError(
            f"--config study={','.join(names)}: {', '.join(stray)} set on the command line or in a "
            "--configfile; a study's settings live in its file (config/studies/<name>.yaml) so that one "
            "command rebuilds it: put them there, or in a new study that extends it. Only machine keys "
            "(device, threads, dtype, shards, data locations, tracking, resources) may come from outside"
        )
    return {
        name: resolve_for_workflow(deep_merge(merged([study_path(name)]), machine), folder)
        for name in dict.fromkeys(names)
    }


def stable_copy(source: Path, folder: str | Path, name: str) -> Path:
    """``folder/<name>.yaml`` holding ``source``'s text, rewritten only when it differs. A job's
    command names its study's config by this stable path (built from its wildcards): a
    content-addressed path there would change every job's command, hence rerun every job, whenever
    any key of the study changed."""
    target = Path(folder) / f"{name}.yaml"
    text = Path(source).read_text()
    if not target.is_file() or target.read_text() != text:
        from teddy.io.files import atomic_path  # loads torch: not at import

        with atomic_path(target) as tmp:
            tmp.write_text(text)
    return target


def plain(data: Any) -> dict:
    """A config as a plain nested mapping: ``data`` itself when it is one (the workflow's resolved
    configs), else the frozen config's to_dict (a stage's). The one place the two shapes meet."""
    return data if isinstance(data, Mapping) else to_dict(data)


@functools.cache
def grid_keys() -> dict[str, frozenset[str]]:
    """Per section, the keys that define the workflow's grid of jobs (one job per value) rather than
    what one job computes: those the schema marks ``x-grid: true``."""
    return {
        name: frozenset(
            k for k, v in body.get("properties", {}).items() if isinstance(v, Mapping) and v.get("x-grid")
        )
        for name, body in load_schema()["properties"].items()
    }


def resolve_variant(cfg: Any, name: str) -> tuple[Any, str]:
    """(config with the variant's distill keys applied, its method); a plain method is unchanged."""
    variant = cfg.distill.variants.get(name)
    if variant is None:
        return cfg, name
    data = to_dict(cfg)
    data["distill"] |= _variant_keys(data["distill"]["variants"][name])  # plain: lists, not frozen tuples
    data = validate(data)
    check(data)
    return freeze(data), variant["method"]


def _variant_keys(variant: Mapping) -> dict:
    """The distill keys a variant sets (everything but its method)."""
    return {k: copy.deepcopy(v) for k, v in variant.items() if k != "method"}
