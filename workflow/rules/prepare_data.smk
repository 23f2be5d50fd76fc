rule prepare_data:
    output:
        cache="results/{dataset}/data/cache.pt",
        manifest="results/{dataset}/data/manifest.json",
        metrics="results/{dataset}/data/metrics.json",
    params:
        cfg=stage_params("run", "prepare_data"),
    log:
        "logs/{dataset}/prepare_data.log",
    shell:
        "{TEDDY} prepare-data {CONFIG_ARG} --set run.threads={threads} --out $(dirname {output.metrics}) > {log} 2>&1"
