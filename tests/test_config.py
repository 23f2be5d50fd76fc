import pytest
import yaml

from teddy import config
from teddy.workflow import params, resources

from .conftest import BASE, TINY


def write(tmp_path, data, name="delta.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_is_valid_and_complete():
    cfg = config.load([BASE])
    assert cfg.run.dataset == "digits"
    assert cfg.distill.methods == ("teddy", "random")
    # every schema key is present in the documented config file (no hidden defaults)
    raw = yaml.safe_load(BASE.read_text())
    for section, spec in config.load_schema()["properties"].items():
        assert set(spec["properties"]) == set(raw[section]), section


def test_config_is_frozen(tiny_cfg):
    with pytest.raises(AttributeError):
        tiny_cfg.distill.iterations = 3


def test_layering_and_overrides(tmp_path):
    delta = write(tmp_path, {"distill": {"iterations": 7}})
    cfg = config.load([BASE, delta], ["evaluate.epochs=3", "distill.ipcs=[1, 5]"])
    assert (cfg.distill.iterations, cfg.evaluate.epochs, cfg.distill.ipcs) == (7, 3, (1, 5))
    assert cfg.distill.lr == config.read_yaml(BASE)["distill"]["lr"]


def test_key_typo_names_key_and_suggestion(tmp_path):
    delta = write(tmp_path, {"distill": {"iteratons": 5}})
    with pytest.raises(config.ConfigError, match=r"'iteratons' \(did you mean 'iterations'\?\) in distill"):
        config.load([BASE, delta])


def test_wrong_type_names_key():
    with pytest.raises(config.ConfigError, match=r"distill.iterations: 'many' is not of type 'integer'"):
        config.load([BASE], ["distill.iterations=many"])


def test_unknown_dataset():
    with pytest.raises(config.ConfigError, match=r"run.dataset: 'imagenet22k' is not one of"):
        config.load([BASE], ["run.dataset=imagenet22k"])


def test_ipc_larger_than_class():
    with pytest.raises(config.ConfigError, match=r"distill.ipcs: IPC \[500\] exceeds the 139 training images"):
        config.load([BASE], ["distill.ipcs=[1, 500]"])


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(config.ConfigError, match="apt-get install dataset-fashion-mnist"):
        config.load([BASE], ["run.dataset=fashion_mnist", f"prepare_data.fashion_mnist_dir={tmp_path}"])


def test_cifar_without_root_says_which_key():
    with pytest.raises(config.ConfigError, match="prepare_data.root"):
        config.load([BASE], ["run.dataset=cifar10"])


def test_unknown_architecture():
    with pytest.raises(config.ConfigError, match="evaluate.archs: unknown architecture 'resnet19'"):
        config.load([BASE], ["evaluate.archs=[convnet, resnet19]"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load([bad])


def test_experiment_files_are_valid_deltas():
    for path in (BASE.parent / "experiments").glob("*.yaml"):
        delta = config.read_yaml(path)
        assert set(delta) <= set(config.load_schema()["properties"]), path
        config.validate(config.deep_merge(config.read_yaml(BASE), delta))


def test_tiny_test_config_is_valid():
    assert config.load([BASE, TINY]).tracking.enabled is False


def test_job_params_leave_out_grid_keys():
    data = config.validate(config.read_yaml(BASE))
    distill, evaluate = params.job_params(data, "distill", "teddy"), params.job_params(data, "evaluate")
    assert "distill.iterations" in distill and not {"distill.ipcs", "distill.methods"} & set(distill)
    assert "evaluate.archs" not in evaluate and evaluate["evaluate.epochs"] == data["evaluate"]["epochs"]
    assert params.job_params(data, "relabel")["evaluate.epochs"] == data["evaluate"]["epochs"]  # views


def test_method_params_change_only_for_the_variant_that_changed():
    """Snakemake's params trigger: adding or editing one variant reruns only its distill jobs."""
    one = config.validate(config.read_yaml(BASE))
    two = config.deep_merge(one, {"distill": {"variants": {"v": {"method": "teddy", "pool_size": 2}}}})
    three = config.deep_merge(two, {"distill": {"variants": {"w": {"method": "teddy", "iterations": 7}}}})
    assert params.job_params(one, "distill", "teddy") == params.job_params(three, "distill", "teddy")
    assert params.job_params(two, "distill", "v") == params.job_params(three, "distill", "v")
    assert params.job_params(three, "distill", "v")["distill.variants.v"]["pool_size"] == 2
    assert params.job_params(three, "distill", "w")["distill.variants.w"] == {
        "method": "teddy",
        "iterations": 7,
    }
    assert params.job_params(three, "distill", "w") != params.job_params(three, "distill", "v")


def test_stage_resources_scale_runtime_with_the_dataset():
    data = config.validate(config.read_yaml(BASE))
    digits = resources.stage_resources(data, "distill")
    assert digits == {"runtime": 60, "mem_mb": 8000, "cpus_per_task": 1}
    data["run"]["dataset"] = "fashion_mnist"
    assert (
        resources.stage_resources(data, "distill")["runtime"]
        == 60 * data["resources"]["runtime_scale"]["fashion_mnist"]
    )


def test_old_matching_name_says_what_it_became():
    with pytest.raises(
        config.ConfigError, match=r"distill.matching: 'gradient' is not one of .*was called 'gradient'"
    ):
        config.load([BASE], ["distill.matching=gradient"])


def test_schema_defaults_are_config_yaml_one_source_of_defaults():
    """Every key has a schema default equal to config/config.yaml's value, and config.yaml sets
    every key: a config file that omits a key gets what config.yaml documents (no second set)."""
    schema = config.load_schema()
    documented = yaml.safe_load(BASE.read_text())
    differ = []

    def walk(props: dict, values: dict, where: str) -> None:
        assert set(values) <= set(props), (
            f"{where}: config.yaml keys the schema lacks: {set(values) - set(props)}"
        )
        for key, sub in props.items():
            path = f"{where}.{key}".strip(".")
            assert key in values, f"config/config.yaml does not set {path}"
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub["properties"], values[key], path)
            elif sub.get("default", "<none>") != values[key]:
                differ.append(f"{path}: schema {sub.get('default', '<none>')!r} vs config.yaml {values[key]!r}")

    walk(schema["properties"], documented, "")
    assert not differ, "schema defaults differ from config/config.yaml:\n" + "\n".join(differ)


def test_schema_method_enum_is_the_registry():
    from teddy.method import registry

    variant = config.load_schema()["properties"]["distill"]["properties"]["variants"]["additionalProperties"]
    assert variant["properties"]["method"]["enum"] == list(registry.METHODS)


def test_pool_members_are_required_only_by_a_method_that_draws_from_them():
    """sre2l (base model) and random (no model) need no prior or post members; teddy, or a variant
    with its own pool, does, and the error names the key that asks for them."""
    no_members = ["pretrain_pool.prior_epochs=[]", "pretrain_pool.post_members=0", "distill.pool=both"]
    config.load([BASE], [*no_members, "distill.methods=[sre2l, random]"])
    with pytest.raises(config.ConfigError, match=r"distill.pool: 'both' needs post members"):
        config.load([BASE], [*no_members, "distill.methods=[teddy, random]"])
    variant = [
        "distill.pool=prior",
        "distill.methods=[sre2l, random, p]",
        "distill.variants={p: {method: teddy, pool: post}}",
    ]
    with pytest.raises(config.ConfigError, match=r"distill.variants.p.pool: 'post' needs post members"):
        config.load([BASE], ["pretrain_pool.post_members=0", *variant])
