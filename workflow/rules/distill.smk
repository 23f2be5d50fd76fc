rule distill_shard:
    input:
        data="results/{dataset}/data/manifest.json",
        pool="results/{dataset}/pool/manifest.json",
    output:
        batches="results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/shards/{shard}-of-{nshards}/batches.pt",
        metrics="results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/shards/{shard}-of-{nshards}/metrics.json",
    log:
        "logs/{dataset}/distill/{method}_ipc{ipc}_seed{seed}_shard{shard}-of-{nshards}.log",
    threads: stage_threads("distill")
    resources:
        **stage_resources("distill"),
    params:
        cfg=lambda wildcards: method_params(config, wildcards.method),
    shell:
        "{TEDDY} distill {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " --pool $(dirname {input.pool}) --method {wildcards.method} --ipc {wildcards.ipc}"
        " --seed {wildcards.seed} --shard {wildcards.shard}/{wildcards.nshards}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"


rule distill:
    input:
        data="results/{dataset}/data/manifest.json",
        shards=get_distill_shards,
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
    threads: stage_threads("distill")
    resources:
        **stage_resources("distill"),
    params:
        cfg=lambda wildcards: method_params(config, wildcards.method),
        merge=lambda w, input: merge_args(input.shards),
    shell:
        "{TEDDY} distill {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " {params.merge} --method {wildcards.method} --ipc {wildcards.ipc} --seed {wildcards.seed}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
