"""The workflow, described once, read by Snakemake (workflow/rules/common.smk), the DVC generator and
the runner:

- ``plan``: the stage table, every job of a config (rule, DVC stage name, ``teddy`` command, input and
  output folders under ``FOLDERS``, the dotted config keys its result depends on);
- ``params``: which config keys each job depends on (Snakemake params, DVC params, the resume
  fingerprint) and the recipe keys that name shared data and pool folders;
- ``deps``: the package files a stage's command runs (from the import graph), so a code change reruns
  exactly the jobs downstream of it;
- ``dvc``: dvc.yaml from the plan; ``resources``: a job's SLURM resources.

teddy.config only loads and checks configs; the pool's job names live in teddy.pool.naming."""
