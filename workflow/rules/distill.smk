rule distill:
    input:
        data="results/{dataset}/data/manifest.json",
        pool=get_pool_input,
    output:
        synthetic="results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/synthetic.pt",
        grid=report(
            "results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/grid.png",
            caption="../report/grid.rst",
            category="Synthetic images",
            subcategory="{method}",
        ),
        metrics="results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/metrics.json",
    log:
        "logs/{dataset}/distill/{method}_ipc{ipc}_seed{seed}.log",
    params:
        cfg=stage_params("distill"),
        pool=lambda w, input: f"--pool $(dirname {input.pool})" if input.pool else "",
    shell:
        "{TEDDY} distill {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data}) {params.pool}"
        " --method {wildcards.method} --ipc {wildcards.ipc} --seed {wildcards.seed}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
