"""Report tables computed from evaluation rows (no training): the pool ablation pivot."""

import pandas as pd

from teddy import config, report

from .conftest import BASE

VARIANTS = (
    "distill.variants={t_prior3: {method: teddy, pool: prior, pool_size: 3},"
    " t_post3: {method: teddy, pool: post, pool_size: 3}, t_post5: {method: teddy, pool: post, pool_size: 5}}"
)


def test_pool_ablation_pivots_variants_by_generation_and_size():
    methods = "distill.methods=[random, sre2l, t_prior3, t_post3, t_post5]"
    cfg = config.load([BASE], [VARIANTS, methods, "pretrain_pool.post_members=5"])
    rows = [
        ("random", 0, 0, 80.0),
        ("sre2l", 1, 0, 60.0),
        ("t_prior3", 3, 0, 62.0),
        ("t_prior3", 3, 1, 64.0),
        ("t_post3", 3, 0, 70.0),
        ("t_post5", 5, 0, 72.0),
    ]
    df = pd.DataFrame(
        [
            {"method": m, "pool_size": p, "seed": s, "top1": t, "ipc": 10, "arch": "convnet"}
            for m, p, s, t in rows
        ]
    )
    table = report.pool_ablation(df, cfg).set_index("pool")
    assert list(table.columns) == ["ipc", "arch", "M=1", "M=3", "M=5"]
    assert table.loc["base", "M=1"] == "60.00"
    assert table.loc["prior", "M=3"] == "63.00 ± 1.41"  # mean ± std over the two seeds
    assert table.loc["post", "M=5"] == "72.00" and table.loc["prior", "M=5"] == ""
    assert report.pool_ablation(df[df.method.isin(["random", "sre2l"])], cfg) is None


def test_a_variant_that_cannot_run_fails_at_load():
    import pytest

    with pytest.raises(config.ConfigError, match="distill.variants.p: .*set pretrain_pool.post_members"):
        config.load([BASE], ["distill.variants={p: {method: teddy, pool: post}}"])
