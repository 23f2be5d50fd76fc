# Teddy: prepare_data → pretrain_pool → distill → relabel → evaluate → report.
# All logic lives in the `teddy` package; rules only name files and call its CLI.
#   snakemake --cores 2                                   (local, config/config.yaml)
#   snakemake --cores all --configfile config/experiments/fashion_mnist.yaml
#   snakemake --profile slurm ...                         (SLURM; see README)
import os
import shlex
import sys

from teddy.config import ConfigError, resolve_for_workflow


configfile: "config/config.yaml"


# every job (local or on a SLURM node, which inherits the environment) records this invocation
os.environ.setdefault("TEDDY_COMMAND", shlex.join(["snakemake", *sys.argv[1:]]))


try:
    # Same JSON Schema as the package (workflow/schemas/config.schema.yaml), defaults filled,
    # plus the checks a schema cannot express; fails here, before any job starts.
    config, RESOLVED_CONFIG = resolve_for_workflow(config, ".snakemake/teddy")
except ConfigError as err:
    raise WorkflowError(str(err)) from None


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
        open_pipeline_run(config, " ".join(sys.argv))


onsuccess:
    from teddy.tracking import close_pipeline_run

    close_pipeline_run(config, "FINISHED")


onerror:
    from teddy.tracking import close_pipeline_run

    close_pipeline_run(config, "FAILED")


rule all:
    default_target: True
    input:
        final_outputs(config),


report: "workflow/report/workflow.rst"
