"""A method's jobs depend only on the config keys that method reads (issue 36, 9): changing
distill.iterations (or any synthesis knob) reruns the synthesised sets, never the `random`
baseline's distill, relabel and evaluate jobs, in Snakemake (params trigger) and DVC (params)."""

import pytest

from teddy import config
from teddy.workflow import params, plan

from ..conftest import BASE


def plan_params(overrides=()):
    data = config.to_dict(config.load([BASE], list(overrides)))
    jobs = {job.name: job for job in plan.plan(data)}
    return data, jobs


@pytest.mark.parametrize(
    "change",
    [
        "distill.iterations=7",
        "distill.lr=0.3",
        "distill.matching=taylor",
        "distill.pool_size=2",
        "distill.init=teacher",
    ],
)
def test_a_synthesis_knob_leaves_random_alone(change):
    before, jobs_before = plan_params()
    after, jobs_after = plan_params([change])
    key = change.split("=")[0]
    for name, job in jobs_after.items():
        old = jobs_before[name]
        same_for_dvc = params.params_of(before, list(old.params)) == params.params_of(after, list(job.params))
        method = next((m for m in ("random", "teddy") if f"_{m}_" in f"_{name}_"), None)
        if method == "random":
            assert same_for_dvc, (name, job.params)
            if job.stage == "distill":
                assert not any(p.startswith("distill.") for p in job.params), job.params
                stage_params = params.job_params(after, "distill", "random")
                assert stage_params == params.job_params(before, "distill", "random")  # Snakemake
        elif method == "teddy" and job.stage in ("distill", "distill_shard"):
            assert key in job.params and not same_for_dvc, name
