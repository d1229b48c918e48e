#!/usr/bin/env bash
# Look at `dvc plots show` / `dvc plots diff` as a reader would: render DVC's page in headless Chromium with the
# network off and write one screenshot per Vega chart, then check that every chart drew and every axis has a title.
#
#   tests/plots_screenshot.sh [-C REPO] [-o OUTDIR] [show [PLOT_ID...] | diff REV...]
#
#   -C REPO    the DVC project whose plots to render (default: this repository; its dvc.yaml and .dvc/plots/*.json)
#   -o OUTDIR  where to write (default: REPO/dvc_plots/screenshots, which git ignores); emptied first, so it must be
#              new, empty or an earlier output of this script
#   show       `dvc plots show` (the default); diff REV...: `dvc plots diff REV...` (e.g. `diff HEAD~1 HEAD`, or `diff HEAD`
#              for the commit against the workspace)
#
# Writes OUTDIR/html/index.html (DVC's page, as `dvc plots show -o` writes it), OUTDIR/NN_<plot id>.png (one
# screenshot per chart, sized to the chart), OUTDIR/NN_<plot id>.html (the chart alone on the offline page) and
# OUTDIR/checks.txt. Exit status: 0 all charts drew, with titled axes; 1 a chart failed (see checks.txt); 2 usage or
# DVC error; 77 Chromium is missing (install: `apt-get install -y chromium`; or set CHROMIUM=/path/to/chrome).
#
# The page is rendered offline twice over: the charts' libraries are inlined by .dvc/plots/offline.html, and Chromium
# runs inside `unshare -n` (a network namespace with no interfaces) where that is permitted. The default run's
# outputs: `tests/plots_screenshot.sh` in the repository after `dvc repro`; then open the PNGs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=""
while getopts "C:o:h" opt; do
  case $opt in
    C) REPO=$(cd "$OPTARG" && pwd) ;;
    o) OUT=$OPTARG ;;
    h) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
MODE=${1:-show}
[ $# -gt 0 ] && shift
case $MODE in show|diff) ;; *) echo "unknown mode '$MODE' (show or diff)" >&2; exit 2 ;; esac
OUT=${OUT:-$REPO/dvc_plots/screenshots}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/checks.txt" ] && [ ! -f "$OUT/dvc.log" ]; then
  echo "refusing to empty $OUT: not an earlier output of this script" >&2; exit 2
fi

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$CHROMIUM" ]; then
  echo "SKIP: no chromium on PATH (apt-get install -y chromium, or set CHROMIUM=/path/to/chrome)" >&2
  exit 77
fi
PYTHON=${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || ( [ -x "$HERE/../.venv/bin/python" ] && echo "$HERE/../.venv/bin/python" ) || command -v python3)}
NOLAN=()
if unshare -n true 2>/dev/null; then NOLAN=(unshare -n); else echo "note: unshare -n not permitted; Chromium runs with the network up (the page needs none)" >&2; fi

find "$OUT" -mindepth 1 -delete
cd "$REPO"
if ! DVC_NO_ANALYTICS=1 "$PYTHON" -m dvc plots "$MODE" "$@" -o "$OUT/html" >"$OUT/dvc.log" 2>&1 || [ ! -f "$OUT/html/index.html" ]; then
  cat "$OUT/dvc.log" >&2; echo "dvc plots $MODE wrote no page (see above)" >&2; exit 2
fi

export CHROMIUM OUT
NOLAN_STR="${NOLAN[*]:-}" exec "$PYTHON" - <<'PY'
"""Split DVC's page into one page per Vega chart, render each (SVG) in Chromium, check it and screenshot it."""
import html, os, re, shlex, subprocess, sys, tempfile
from pathlib import Path

out = Path(os.environ["OUT"])
page = (out / "html" / "index.html").read_text(encoding="utf8")
first = page.find('<div id = "')
# the page's own <body> tag: the last one before the first chart (the offline template's comment mentions "<body>" too)
head = page[: page.rindex("<body>", 0, first if first >= 0 else len(page))]
# dvc_render.vega.VegaRenderer.DIV: <div id = "{id}"> <script ...> var spec = {partial}; vegaEmbed('#{id}', spec); ...
divs = re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed\(', page, re.S)
images = re.findall(r'<img src="(static/[^"]+)"', page)
chrome = [*shlex.split(os.environ.get("NOLAN_STR", "")), os.environ["CHROMIUM"], "--headless", "--no-sandbox", "--disable-gpu",
          "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
          "--hide-scrollbars", "--virtual-time-budget=15000"]
# Axis titles a reader cannot decode: DVC's fallbacks ("y", "step") and bare column names.
BAD_TITLES = {"y", "x", "step", "value", "layer", "epoch", "trainable_parameters", "dvc_inferred_y_value", "undefined", ""}


def run(args: list[str]) -> str:
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([*chrome, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    return res.stdout


lines, failed = [], 0
for i, (div_id, spec) in enumerate(divs, 1):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", div_id)[:80]
    single = out / f"{i:02d}_{name}.html"
    single.write_text(
        f'{head}<body style="margin:8px">\n<div id="{div_id}"></div>\n<script type="text/javascript">\nvar spec = {spec};\n'
        f"vegaEmbed('#{div_id}', spec, {{renderer: 'svg'}}).catch(function (e) {{\n"
        "  var p = document.createElement('pre'); p.id = 'vega-' + 'error'; p.textContent = String(e); document.body.appendChild(p);\n});\n"
        "</script>\n</body></html>\n", encoding="utf8")
    dom = run(["--dump-dom", single.as_uri()])
    problems = []
    err = re.search(r'<pre id="vega-error">(.*?)</pre>', dom, re.S)
    svg = re.search(r'<svg[^>]*class="marks"[^>]*width="([^"]+)"[^>]*height="([^"]+)"', dom)
    if err:
        problems.append("vega error: " + html.unescape(err.group(1)).strip())
    w, h = (float(svg.group(1)), float(svg.group(2))) if svg else (0, 0)
    if not svg:
        problems.append("no chart drawn")
    elif not (0 < w < 20000 and 0 < h < 20000):
        problems.append(f"layout broke: the chart is {svg.group(1)} x {svg.group(2)} px")
    w, h = (int(w), int(h)) if 0 < w < 20000 and 0 < h < 20000 else (800, 400)
    # Vega's SVG: <g class="mark-text role-axis-title" ...><text ...>TITLE</text>
    titles = [html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t))).strip()
              for t in re.findall(r'role-axis-title[^>]*>(?:<[^>]*>)*?<text[^>]*>(.*?)</text>', dom, re.S)]
    if svg and not titles:
        problems.append("no axis titles")
    bad = sorted({t for t in titles if t in BAD_TITLES})
    if bad:
        problems.append(f"axis titled {bad}")
    marks = len(re.findall(r'class="mark-(?:symbol|line|rect|area|rule)[^"]*role-mark', dom))
    if svg and marks == 0:
        problems.append("no data marks")
    png = single.with_suffix(".png")
    run([f"--screenshot={png}", f"--window-size={max(w + 40, 480)},{h + 40}", single.as_uri()])
    status = "FAIL " + "; ".join(problems) if problems else "ok"
    failed += bool(problems)
    lines.append(f"{png.name}: {w}x{h}px, {marks} mark groups, axis titles {sorted(set(titles))}: {status}")
lines.append(f"{len(divs)} Vega charts, {failed} failed; {len(images)} images on the page: {images}")
if not divs:
    lines.append("FAIL: the page has no Vega chart")
    failed += 1
(out / "checks.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
print("\n".join(lines))
print(f"screenshots: {out}")
sys.exit(1 if failed else 0)
PY
