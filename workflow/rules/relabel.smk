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
    shell:
        "{TEDDY} relabel --config {CONFIG_DIR}/study-{wildcards.study}.yaml --set run.threads={threads} --synthetic $(dirname {input.synthetic})"
        " --pool $(dirname {input.pool}) --seed {wildcards.seed}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
