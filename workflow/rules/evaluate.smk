rule evaluate:
    input:
        data="results/{dataset}/data/manifest.json",
        synthetic="results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/synthetic.pt",
        soft="results/{dataset}/relabel/{method}/ipc{ipc}/seed{seed}/soft_labels.pt",
        pool="results/{dataset}/pool/manifest.json",
    output:
        metrics="results/{dataset}/evaluate/{method}/ipc{ipc}/{arch}/seed{seed}/metrics.json",
    log:
        "logs/{dataset}/evaluate/{method}_ipc{ipc}_{arch}_seed{seed}.log",
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    params:
        cfg=stage_params("evaluate"),
    shell:
        "{TEDDY} evaluate {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " --synthetic $(dirname {input.synthetic}) --soft-labels $(dirname {input.soft})"
        " --pool $(dirname {input.pool})"
        " --arch {wildcards.arch} --seed {wildcards.seed}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
