# Teddy: prepare_data → pretrain_pool → distill → relabel → evaluate → report.
# All logic lives in the `teddy` package; rules only name files and call its CLI.
#   snakemake --cores all --config study=<name>           (a study: config/studies/<name>.yaml)
#   snakemake --cores all --config study=a,b              (several side by side, shared data/pool once)
#   snakemake --profile slurm --config study=<name>       (SLURM; see docs/slurm.md)
#   snakemake --cores 2                                   (config/config.yaml as study `default`)
import os
import shlex
import sys

from teddy.config import ConfigError, workflow_studies


configfile: "config/config.yaml"


# every job (local or on a SLURM node, which inherits the environment) records this invocation
os.environ.setdefault("TEDDY_COMMAND", shlex.join(["snakemake", *sys.argv[1:]]))


try:
    # Each study's file (or the merged config), checked against the package's JSON Schema with
    # defaults filled, plus the checks a schema cannot express; fails here, before any job starts.
    # {study: (resolved config, its file)}: every job runs with its study's file.
    STUDIES = workflow_studies(config, ".snakemake/teddy")
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config = next(iter(STUDIES.values()))[
    0
]  # machine keys (tracking, threads) are the same for all


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare_data.smk"
include: "workflow/rules/pretrain_pool.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/relabel.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


onstart:
    if config["tracking"][
        "enabled"
    ]:  # the shared MLflow store, and this invocation's run that every stage run nests under
        from teddy.tracking import open_pipeline_run

        # creates the store and experiment; where it cannot (no mlflow on a GPU node, the store
        # unreachable), it warns and every stage keeps its run in tracking_pending.json
        open_pipeline_run(config, " ".join(sys.argv), list(STUDIES))


onsuccess:
    from teddy.tracking import close_pipeline_run

    close_pipeline_run(config, "FINISHED")


onerror:
    from teddy.tracking import close_pipeline_run

    close_pipeline_run(config, "FAILED")


rule all:
    default_target: True
    input:
        all_outputs(),


report: "workflow/report/workflow.rst"
