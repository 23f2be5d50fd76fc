# Two commands set everything up on a fresh machine:
#   make run    — the whole pipeline on the embedded digits dataset (Snakemake, CPU, minutes)
#   make test   — the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
# .ci/run sets VENV to a fresh temporary folder (what a new machine would build)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-quick test-slurm lint dvc-yaml repro index mutation report-html plots mlflow-ui bench bench-fidelity bench-data bench-peers gpu-check lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# profiles/local: rerun-incomplete (an interrupted run's half-written outputs are redone), one retry
# (a stage stopped by SIGTERM resumes from its checkpoint), keep-going.
# STUDY: a study of config/studies/ (several: STUDY=a,b); `make run` builds the quickstart study.
# `teddy job-server --`: the jobs fork from one interpreter that has imported torch and MLflow
# (docs/slurm.md#a-warm-interpreter-for-local-jobs); JOB_SERVER= runs each job as a fresh process.
STUDY ?= quickstart
JOB_SERVER ?= $(BIN)/python -m teddy job-server --
run: $(STAMP)
	$(JOB_SERVER) $(BIN)/snakemake --profile profiles/local --cores $(CORES) --config study=$(STUDY)
	@echo "Results: results/<dataset>/$(STUDY)/report/summary.md — MLflow: make mlflow-ui"

# pytest-xdist: one worker per core (2 here), one torch thread per worker (tests/conftest.py); a
# module stays on one worker (its shared fixtures), handed out in tests/conftest.py's order (longest
# first): without --no-loadscope-reorder xdist sorts modules by their number of tests, which sent the
# few-test, minutes-long pipeline modules last
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -m "not slurm" $(PYTEST_ARGS)

# The suite without the whole-pipeline tests (marked slow): a few minutes, for iterating.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slurm and not slow" $(PYTEST_ARGS)

# The digits pipeline through the slurm executor on a real single-node SLURM cluster (root:
# installs slurmctld/slurmd/munge from Debian if missing, starts them, tears them down after).
test-slurm: $(STAMP)
	TEDDY_SLURM_INSTALL=1 workflow/cluster/slurm-up.sh
	TEDDY_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -m slurm $(PYTEST_ARGS); \
	  status=$$?; workflow/cluster/slurm-down.sh; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check teddy tests benchmarks workflow/scripts
	$(BIN)/ruff format --check teddy tests benchmarks workflow/scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules

# dvc.yaml is generated from teddy/workflow/plan.py's stage table (the jobs Snakemake runs) for STUDY
# (STUDY=a,b several, STUDY=all every committed study); `make repro STUDY=x` regenerates it for x
# and reproduces x's report (and whatever it needs) with dvc repro; DVC_SET="run.device=cuda" gives
# every command machine keys (never what the study computes).
COMMA := ,
dvc-yaml: $(STAMP)
	$(BIN)/python -m teddy workflow dvc $(addprefix --study ,$(subst $(COMMA), ,$(STUDY))) $(addprefix --set ,$(DVC_SET))

repro: dvc-yaml
	$(JOB_SERVER) $(BIN)/dvc repro

# results/INDEX.md: one row per study (question, headline, where it ran, command, commit)
index: $(STAMP)
	$(BIN)/python -m teddy index

report-html: $(STAMP)
	$(BIN)/snakemake --report results/report.html

# dvc plots show, rendered offline (vega inlined instead of loaded from a CDN).
plots: $(STAMP)
	test -s .dvc/offline.html || $(BIN)/python workflow/scripts/dvc_offline_template.py .dvc/offline.html
	$(BIN)/dvc plots show --html-template .dvc/offline.html -o results/dvc_plots

# Benchmarks run on demand (not in CI); each writes benchmarks/results/<name>.json.
bench: $(STAMP)
	$(BIN)/python benchmarks/distill.py $(BENCH_ARGS)

# Every distill objective against the exact unrolled meta-gradient → benchmarks/results/fidelity.json.
bench-fidelity: $(STAMP)
	$(BIN)/python benchmarks/fidelity.py $(BENCH_ARGS)

# The package's synthesis step vs SRe2L's recover loop (re-implemented from their public code),
# interleaved repeats → benchmarks/results/peers.json (BENCH_ARGS="--device cuda" on a GPU).
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/peers.py $(BENCH_ARGS)

# Data loading: teddy's image-file loader vs torchvision ImageFolder+PIL → benchmarks/results/data.json.
bench-data: $(STAMP)
	$(BIN)/python benchmarks/data.py $(BENCH_ARGS)

# One prepared check of the CUDA path, under 8 minutes on one GPU (srun --gpus=1 make gpu-check):
# GPU tests, both benchmarks on cuda, ResNet-18 synthesis throughput, a short pipeline on CUDA →
# benchmarks/results/gpu_check.{json,md}. Smoke run on CPU: GPU_CHECK_ARGS="--device cpu --quick".
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Mutation testing of the core modules (mutmut, in a scratch copy) → benchmarks/results/mutation.json.
# On demand, not in CI: tens of minutes. MUTATION_ARGS="--modules report --tests test_report".
MUTATION_PINS := mutmut==3.8.1 libcst==1.9.0 textual==8.2.8 setproctitle==1.3.8 coverage==7.17.5
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt $(MUTATION_PINS)
	$(BIN)/python benchmarks/mutation.py $(MUTATION_ARGS)

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

# Regenerate the pinned versions after changing dependencies in pyproject.toml. The frozen list
# replaces constraints.txt only if every line is a plain name==version from the package index
# (workflow/scripts/check_pins.py: no URL, no local wheel, no path; a fresh machine has only the index).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	( echo "# Pinned versions of every dependency (pip freeze of a working install, Python 3.11, x86_64)."; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable ) > constraints.txt.new
	rm -rf .lock-venv
	$(PYTHON) workflow/scripts/check_pins.py constraints.txt.new pyproject.toml \
	  || { rm -f constraints.txt.new; echo "make lock: constraints.txt left unchanged" >&2; exit 1; }
	mv constraints.txt.new constraints.txt

clean:
	rm -rf results/*/data results/*/pool results/*/*/distill results/*/*/relabel results/*/*/evaluate logs .snakemake
