rule pretrain_pool:
    input:
        data="results/{dataset}/data/manifest.json",
    output:
        base="results/{dataset}/pool/base.pt",
        manifest="results/{dataset}/pool/manifest.json",
        metrics="results/{dataset}/pool/metrics.json",
    params:
        cfg=stage_params("run", "pretrain_pool"),
    log:
        "logs/{dataset}/pretrain_pool.log",
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
