# One job per pool member group (a cluster builds them in parallel), then the manifest.
rule pretrain_pool_base:
    input:
        data="results/{dataset}/data/manifest.json",
    output:
        model="results/{dataset}/pool/base/base.pt",
        members="results/{dataset}/pool/base/members.json",
        metrics="results/{dataset}/pool/base/metrics.json",
    log:
        "logs/{dataset}/pretrain_pool/base.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=pool_params("base"),
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " --member base --out $(dirname {output.members}) > {log} 2>&1"


rule pretrain_pool_prior:
    input:
        data="results/{dataset}/data/manifest.json",
        base=prior_base_input,
    output:
        members="results/{dataset}/pool/prior_s{seed}/members.json",
        metrics="results/{dataset}/pool/prior_s{seed}/metrics.json",
    log:
        "logs/{dataset}/pretrain_pool/prior_s{seed}.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=pool_params("prior"),
        base=lambda wildcards, input: (
            f"--base {os.path.dirname(input.base[0])}" if input.base else ""
        ),
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " {params.base} --member prior:{wildcards.seed} --out $(dirname {output.members}) > {log} 2>&1"


rule pretrain_pool_prior_arch:
    # prior members of another architecture (pretrain_pool.member_archs): its own trajectory
    input:
        data="results/{dataset}/data/manifest.json",
        base=prior_base_input,
    output:
        members="results/{dataset}/pool/prior_{member_arch}_s{seed}/members.json",
        metrics="results/{dataset}/pool/prior_{member_arch}_s{seed}/metrics.json",
    log:
        "logs/{dataset}/pretrain_pool/prior_{member_arch}_s{seed}.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=pool_params("prior"),
        arch=lambda wildcards: MEMBER_ARCHS[wildcards.member_arch],
        base=lambda wildcards, input: (
            f"--base {os.path.dirname(input.base[0])}" if input.base else ""
        ),
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " {params.base} --member prior:{params.arch}:{wildcards.seed} --out $(dirname {output.members})"
        " > {log} 2>&1"


rule pretrain_pool_post:
    input:
        data="results/{dataset}/data/manifest.json",
        base="results/{dataset}/pool/base/members.json",
    output:
        model="results/{dataset}/pool/post_{index}/member.pt",
        members="results/{dataset}/pool/post_{index}/members.json",
        metrics="results/{dataset}/pool/post_{index}/metrics.json",
    log:
        "logs/{dataset}/pretrain_pool/post_{index}.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=pool_params("post"),
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --set run.threads={threads} --data $(dirname {input.data})"
        " --base $(dirname {input.base}) --member post:{wildcards.index} --out $(dirname {output.members})"
        " > {log} 2>&1"


rule pretrain_pool:
    input:
        jobs=expand(
            "results/{{dataset}}/pool/{job}/members.json",
            job=pool_job_names(config["pretrain_pool"]),
        ),
    output:
        manifest=report(
            "results/{dataset}/pool/manifest.json",
            caption="../report/pool.rst",
            category="Pool",
        ),
        metrics="results/{dataset}/pool/metrics.json",
    log:
        "logs/{dataset}/pretrain_pool/manifest.log",
    localrule: True
    shell:
        "{TEDDY} pretrain-pool {CONFIG_ARG} --assemble $(dirname {input.jobs})"
        " --out $(dirname {output.manifest}) > {log} 2>&1"
