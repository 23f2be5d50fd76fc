rule prepare_data:
    input:
        code=code_files("prepare_data", absolute=True),
    output:
        data=path("prepare_data", DATA_FILE),  # cache.pt, or index.json of image files
        manifest=path("prepare_data", "manifest.json"),
        metrics=path("prepare_data", "metrics.json"),
    log:
        "logs/{dataset}/prepare_data.log",
    threads: stage_threads("prepare_data")
    resources:
        **stage_resources("prepare_data"),
    params:
        cfg=stage_params("prepare_data"),
    shell:
        "{TEDDY} prepare-data {CONFIG_ARG} --set run.threads={threads} --out $(dirname {output.metrics}) > {log} 2>&1"
