rule report:
    input:
        code=code_files("report", absolute=True),
        evaluations=get_evaluations,
    output:
        csv=report(
            path("report", "summary.csv"),
            caption="../report/summary.rst",
            category="Accuracy",
        ),
        md=path("report", "summary.md"),
        plot=report(
            path("report", "accuracy.png"),
            caption="../report/accuracy.rst",
            category="Accuracy",
        ),
        accuracy=path("report", "accuracy.json"),
        metrics=path("report", "metrics.json"),
        provenance=path("report", "provenance.json"),
    log:
        "logs/{dataset}/{study}/report.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    params:
        cfg=stage_params("report"),
        command=command_of("metrics"),
    shell:
        "{TEDDY} {params.command} --config {CONFIG_DIR}/study-{wildcards.study}.yaml --set run.threads={threads} > {log} 2>&1"
