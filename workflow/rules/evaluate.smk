rule evaluate:
    input:
        code=code_files("evaluate", absolute=True),
        data=at("prepare_data", "manifest.json"),
        synthetic=path("distill", "synthetic.pt"),
        labels=evaluate_label_inputs,
    output:
        metrics=path("evaluate", "metrics.json"),
    log:
        "logs/{dataset}/{study}/evaluate/{method}_ipc{ipc}_{arch}_seed{seed}.log",
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    params:
        cfg=stage_params("evaluate"),
        command=command_of("metrics"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/study-{wildcards.study}.yaml --set run.threads={threads} > {log} 2>&1"
