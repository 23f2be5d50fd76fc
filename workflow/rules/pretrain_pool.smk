# One job per pool member group (a cluster builds them in parallel), then the manifest.
rule pretrain_pool_base:
    input:
        code=code_files("pretrain_pool", absolute=True),
        data=at("prepare_data", "manifest.json"),
    output:
        model=path("pool_job", "base.pt", job="base"),
        members=path("pool_job", "members.json", job="base"),
        metrics=path("pool_job", "metrics.json", job="base"),
    log:
        "logs/{dataset}/pool/{pool_key}/base.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=stage_params("pretrain_pool", member="base"),
        command=command_of("members"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/recipe-{wildcards.pool_key}.yaml --set run.threads={threads} > {log} 2>&1"


rule pretrain_pool_prior:
    input:
        code=code_files("pretrain_pool", absolute=True),
        data=at("prepare_data", "manifest.json"),
        base=prior_base_input,
    output:
        members=path("pool_job", "members.json", job="prior_s{seed}"),
        metrics=path("pool_job", "metrics.json", job="prior_s{seed}"),
    log:
        "logs/{dataset}/pool/{pool_key}/prior_s{seed}.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=stage_params("pretrain_pool", member="prior"),
        command=command_of("members"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/recipe-{wildcards.pool_key}.yaml --set run.threads={threads} > {log} 2>&1"


rule pretrain_pool_prior_arch:
    # prior members of another architecture (pretrain_pool.member_archs): its own trajectory
    input:
        code=code_files("pretrain_pool", absolute=True),
        data=at("prepare_data", "manifest.json"),
        base=prior_base_input,
    output:
        members=path("pool_job", "members.json", job="prior_{member_arch}_s{seed}"),
        metrics=path("pool_job", "metrics.json", job="prior_{member_arch}_s{seed}"),
    log:
        "logs/{dataset}/pool/{pool_key}/prior_{member_arch}_s{seed}.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=stage_params("pretrain_pool", member="prior"),
        command=command_of("members"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/recipe-{wildcards.pool_key}.yaml --set run.threads={threads} > {log} 2>&1"


rule pretrain_pool_post:
    input:
        code=code_files("pretrain_pool", absolute=True),
        data=at("prepare_data", "manifest.json"),
        base=path("pool_job", "members.json", job="base"),
    output:
        model=path("pool_job", "member.pt", job="post_{index}"),
        members=path("pool_job", "members.json", job="post_{index}"),
        metrics=path("pool_job", "metrics.json", job="post_{index}"),
    log:
        "logs/{dataset}/pool/{pool_key}/post_{index}.log",
    threads: stage_threads("pretrain_pool")
    resources:
        **stage_resources("pretrain_pool"),
    params:
        cfg=stage_params("pretrain_pool", member="post"),
        command=command_of("members"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/recipe-{wildcards.pool_key}.yaml --set run.threads={threads} > {log} 2>&1"


rule pretrain_pool:
    input:
        code=code_files("pretrain_pool", absolute=True),
        jobs=get_pool_jobs,
    output:
        manifest=report(
            path("pretrain_pool", "manifest.json"),
            caption="../report/pool.rst",
            category="Pool",
        ),
        metrics=path("pretrain_pool", "metrics.json"),
    log:
        "logs/{dataset}/pool/{pool_key}/manifest.log",
    localrule: True
    params:
        command=command_of("manifest"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/recipe-{wildcards.pool_key}.yaml --set run.threads={threads} > {log} 2>&1"
