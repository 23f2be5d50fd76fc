rule pretrain_pool:
    input:
        data="results/{dataset}/data/manifest.json",
    output:
        base="results/{dataset}/pool/base.pt",
        manifest="results/{dataset}/pool/manifest.json",
        metrics="results/{dataset}/pool/metrics.json",
    log:
        "logs/{dataset}/pretrain_pool.log",
    params:
        cfg=stage_params("pretrain_pool"),
        seed=config["run"]["seeds"][0],  # the base model's seed
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
