rule report:
    input:
        get_evaluations,
    output:
        csv=report(
            "results/{dataset}/report/summary.csv",
            caption="../report/summary.rst",
            category="Accuracy",
        ),
        md="results/{dataset}/report/summary.md",
        plot=report(
            "results/{dataset}/report/accuracy.png",
            caption="../report/accuracy.rst",
            category="Accuracy",
        ),
        accuracy="results/{dataset}/report/accuracy.json",
        metrics="results/{dataset}/report/metrics.json",
        provenance="results/{dataset}/report/provenance.json",
    log:
        "logs/{dataset}/report.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    params:
        cfg=stage_params("report"),
        evaluations=lambda w, input: " ".join(os.path.dirname(f) for f in input),
    shell:
        "{TEDDY} report {CONFIG_ARG} --set run.threads={threads} --evaluations {params.evaluations}"
        " --out $(dirname {output.metrics}) > {log} 2>&1"
