"""Write an HTML template that makes ``dvc plots show`` render offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so it stays blank without
internet. This template inlines the same libraries (the bundle shipped in the vl-convert-python
wheel) and omits DVC's ``{scripts}`` placeholder, so no CDN tag is added:

    python workflow/scripts/dvc_offline_template.py .dvc/offline.html
    dvc plots show --html-template .dvc/offline.html -o results/dvc_plots

Each plot's inline ``vegaEmbed(...)`` call runs before the (module) bundle, so a tiny stub queues
the calls and the bundle replays them once it has loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>Teddy — DVC plots (offline)</title>
    <script>
        window.__teddyPlots = [];
        window.vegaEmbed = function (el, spec) { window.__teddyPlots.push([el, spec]); };
    </script>
    <script type="module">
BUNDLE
    </script>
    <style>table { border-spacing: 15px; } body { font-family: sans-serif; }</style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
REPLAY = "for (const [el, spec] of window.__teddyPlots) { vegaEmbed(el, spec); }\n"


def main(out: str) -> int:
    import vl_convert

    bundle = vl_convert.javascript_bundle(REPLAY).replace("</script", "<\\/script")
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:
            raise RuntimeError(f"the vega bundle contains DVC's placeholder {placeholder}; cannot inline it")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.replace("BUNDLE", bundle))
    print(
        f"wrote {path} (vega {vl_convert.get_vega_version()}, vega-embed {vl_convert.get_vega_embed_version()})"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: dvc_offline_template.py OUT.html")
    sys.exit(main(sys.argv[1]))
