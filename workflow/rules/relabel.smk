rule relabel:
    input:
        synthetic="results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/synthetic.pt",
        pool="results/{dataset}/pool/manifest.json",
    output:
        soft="results/{dataset}/relabel/{method}/ipc{ipc}/seed{seed}/soft_labels.pt",
        metrics="results/{dataset}/relabel/{method}/ipc{ipc}/seed{seed}/metrics.json",
    log:
        "logs/{dataset}/relabel/{method}_ipc{ipc}_seed{seed}.log",
    threads: stage_threads("relabel")
    resources:
        **stage_resources("relabel"),
    params:
        cfg=stage_params("relabel"),
        epochs=config["evaluate"]["epochs"],  # one stored view per student epoch
    shell:
        "{TEDDY} relabel {CONFIG_ARG} --set run.threads={threads} --synthetic $(dirname {input.synthetic})"
        " --pool $(dirname {input.pool}) --seed {wildcards.seed}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
