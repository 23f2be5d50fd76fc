rule distill_shard:
    input:
        code=code_files("distill", absolute=True),
        data=at("prepare_data", "manifest.json"),
        pool=at("pretrain_pool", "manifest.json"),
    output:
        batches=path("distill_shard", "batches.pt"),
        metrics=path("distill_shard", "metrics.json"),
    log:
        "logs/{dataset}/{study}/distill/{method}_ipc{ipc}_seed{seed}_shard{shard}-of-{nshards}.log",
    threads: stage_threads("distill")
    resources:
        **stage_resources("distill"),
    params:
        cfg=stage_params("distill", method=True),
        command=command_of("metrics"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/study-{wildcards.study}.yaml --set run.threads={threads} > {log} 2>&1"


rule distill:
    input:
        code=code_files("distill", absolute=True),
        data=at("prepare_data", "manifest.json"),
        shards=get_distill_shards,
    output:
        synthetic=path("distill", "synthetic.pt"),
        grid=report(
            path("distill", "grid.png"),
            caption="../report/grid.rst",
            category="Synthetic images",
            subcategory="{method}",
        ),
        metrics=path("distill", "metrics.json"),
    log:
        "logs/{dataset}/{study}/distill/{method}_ipc{ipc}_seed{seed}.log",
    threads: stage_threads("distill")
    resources:
        **stage_resources("distill"),
    params:
        cfg=stage_params("distill", method=True),
        command=command_of("metrics"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/study-{wildcards.study}.yaml --set run.threads={threads} > {log} 2>&1"
