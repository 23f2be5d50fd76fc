rule prepare_data:
    output:
        data=f"results/{{dataset}}/data/{DATA_FILE}",  # cache.pt, or index.json of image files
        manifest="results/{dataset}/data/manifest.json",
        metrics="results/{dataset}/data/metrics.json",
    log:
        "logs/{dataset}/prepare_data.log",
    threads: stage_threads("prepare_data")
    resources:
        **stage_resources("prepare_data"),
    params:
        cfg=stage_params("prepare_data"),
    shell:
        "{TEDDY} prepare-data {CONFIG_ARG} --set run.threads={threads} --out $(dirname {output.metrics}) > {log} 2>&1"
