rule relabel:
    input:
        code=code_files("relabel", absolute=True),
        synthetic=path("distill", "synthetic.pt"),
        pool=at("pretrain_pool", "manifest.json"),
    output:
        soft=path("relabel", "soft_labels.pt"),
        metrics=path("relabel", "metrics.json"),
    log:
        "logs/{dataset}/{study}/relabel/{method}_ipc{ipc}_seed{seed}.log",
    threads: stage_threads("relabel")
    resources:
        **stage_resources("relabel"),
    params:
        cfg=stage_params("relabel"),  # with evaluate.epochs: one stored view per student epoch
        command=command_of("metrics"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/study-{wildcards.study}.yaml --set run.threads={threads} > {log} 2>&1"
