# One rule per kind of prepared data among the invocation's datasets (cache.pt of arrays, index.json
# of image files): a rule's outputs are fixed names. The first is `prepare_data`.
for _i, _file in enumerate(sorted(set(DATA_FILES.values()))):

    rule:
        name:
            "prepare_data" if _i == 0 else f"prepare_data_{_file.split('.')[0]}"
        input:
            code=code_files("prepare_data", absolute=True),
        output:
            data=path("prepare_data", _file),
            manifest=path("prepare_data", "manifest.json"),
            metrics=path("prepare_data", "metrics.json"),
        log:
            "logs/{dataset}/data/{data_key}/prepare_data.log",
        wildcard_constraints:
            dataset=alternatives(d for d, f in DATA_FILES.items() if f == _file),
        threads: stage_threads("prepare_data")
        resources:
            **stage_resources("prepare_data"),
        params:
            cfg=stage_params("prepare_data"),
            command=command_of("metrics"),
        shell:
            "{TEDDY} {params.command} --config {CONFIG_DIR}/recipe-{wildcards.data_key}.yaml --set run.threads={threads} > {log} 2>&1"
