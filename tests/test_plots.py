"""dvc.yaml's top-level `plots:` and the Vega-Lite templates in .dvc/plots/ against figures.py's tidy CSVs.

figures.FIGURES names every figure the report writes: plots/report/<stem>.png and a tidy <stem>.csv (one x column,
`value`, `series`, `panel`, sometimes `std`, `in_band`). Each CSV needs one plot definition that reads only those
columns, so a profile with other seeds, targets or strategies loses no chart (they are rows, never columns), with a
template DVC can fill. The slow visual check is tests/plots_screenshot.sh (headless Chromium, one PNG per chart).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inflection_layers.reporting.figures import FIGURES

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / ".dvc" / "plots"
TIDY = {"layer", "epoch", "step", "tau", "trainable_parameters", "value", "std", "series", "panel", "in_band"}
# Anchors DVC fills in a custom template (dvc_render/vega.py, VegaRenderer.get_filled_template); DATA is required.
ANCHORS = (
    "<DVC_METRIC_DATA>",
    "<DVC_METRIC_TITLE>",
    "<DVC_METRIC_X>",
    "<DVC_METRIC_Y>",
    "<DVC_METRIC_X_LABEL>",
    "<DVC_METRIC_Y_LABEL>",
)
ANCHOR = re.compile(r"<DVC_METRIC_[A-Z_]+>")


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf8"))


def report_dir() -> str:
    """Where the report stage writes (its `--out`), read from its command."""
    cmd = dvc_yaml()["stages"]["report"]["cmd"]
    return re.search(r"--out\s+(\S+)", cmd).group(1).rstrip("/")


def definitions() -> tuple[dict[str, dict], list[str]]:
    """(plot id -> properties) for the data-series plots, and the image paths listed on their own."""
    series, images = {}, []
    for entry in dvc_yaml().get("plots") or []:
        if isinstance(entry, str):
            images.append(entry)
            continue
        ((pid, props),) = entry.items()
        if props and isinstance(props.get("y"), dict):
            series[pid] = props
        else:
            images.append(pid)
    return series, images


def csv_of(props: dict) -> str:
    ((path, _field),) = props["y"].items()
    return path


def template(name: str) -> dict:
    return json.loads((TEMPLATE_DIR / f"{name}.json").read_text(encoding="utf8"))


def strings(node) -> list[tuple[str, str]]:
    """Every (key, string) in a JSON tree; the key is the enclosing dict key (or '' inside lists)."""
    out, stack = [], [("", node)]
    while stack:
        key, n = stack.pop()
        if isinstance(n, dict):
            stack.extend(n.items())
        elif isinstance(n, list):
            stack.extend((key, v) for v in n)
        elif isinstance(n, str):
            out.append((key, n))
    return out


def test_every_figure_csv_has_one_definition_and_every_png_is_listed():
    series, images = definitions()
    out = report_dir()
    csvs = sorted(csv_of(p) for p in series.values())
    assert len(csvs) == len(set(csvs)), f"a CSV is drawn twice: {csvs}"
    assert set(csvs) == {f"{out}/{stem}.csv" for stem in FIGURES}, (
        "dvc.yaml plots: must draw exactly figures.FIGURES' CSVs"
    )
    assert set(series) == set(FIGURES), "plot ids are the figure stems (the ids `dvc plots show <id>` takes)"
    for pid, props in series.items():
        assert csv_of(props) == f"{out}/{pid}.csv"
    assert sorted(images) == sorted(f"{out}/{stem}.png" for stem in FIGURES), (
        "list each figure's PNG (rendered as an image)"
    )


def test_definitions_read_tidy_columns_only():
    """x is the figure's x column and y is `value`: nothing names a seed, a target, a regime or a strategy."""
    study = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf8")).get("study", {})
    specific = {
        str(v) for key in ("targets", "regimes", "seeds", "strategies", "peft_strategies") for v in study.get(key) or []
    }
    series, _ = definitions()
    for pid, props in series.items():
        ((_, y),) = props["y"].items()
        assert props["x"] == FIGURES[pid][0], f"{pid}: x must be figures.FIGURES' x column"
        assert y == "value", f"{pid}: y must be the tidy `value` column, not {y!r}"
        for field in (props["x"], y):
            assert field in TIDY
            assert not any(tok in re.split(r"[_\W]+", field) for tok in specific), (
                f"{pid}: {field!r} is profile-specific"
            )
            assert not re.search(r"\d", field), f"{pid}: {field!r} looks seed-specific"


def test_titles_and_axis_labels_say_what_is_drawn():
    """Title = the figure's caption; y label = the PNG's y label (a '\\n' only breaks the line); x label not a bare
    column."""
    series, _ = definitions()
    for pid, props in series.items():
        _x_col, caption, y_label, _ = FIGURES[pid]
        assert props.get("title") == caption, f"{pid}: title should be figures.FIGURES' caption"
        assert str(props.get("y_label", "")).replace("\n", " ") == y_label, (
            f"{pid}: y_label should be the PNG's y label"
        )
        x_label = str(props.get("x_label", ""))
        assert x_label.strip() and x_label not in TIDY | {"x", "y", "step"}, (
            f"{pid}: x_label must name the axis and its unit"
        )
        assert "\n" not in props["title"]


def test_templates_exist_are_vega_lite_and_use_dvc_anchors():
    series, _ = definitions()
    used = {p["template"] for p in series.values()}
    for name in used:
        path = TEMPLATE_DIR / f"{name}.json"
        assert path.is_file(), f"template {name!r} (dvc.yaml) has no {path.relative_to(ROOT)}"
        t = template(name)
        assert t["$schema"].endswith("/vega-lite/v5.json"), name
        assert t["data"] == {"values": "<DVC_METRIC_DATA>"}, f"{name}: DVC injects the rows at data.values"
        text = json.dumps(t, ensure_ascii=False)
        for anchor in ANCHORS:
            assert anchor in text, f"{name} lacks {anchor}"
        assert set(ANCHOR.findall(text)) <= set(ANCHORS), f"{name}: anchors DVC would fill with its own defaults"
        fields = {v for k, v in strings(t) if k == "field"}
        assert {"series", "panel", "rev"} <= fields, f"{name}: colour by series, split by panel, tell revisions apart"
        for key, s in strings(t):
            # labels and titles may hold '\n' or quotes: never inside an expression (Vega-Lite does not escape them)
            if key in {"calculate", "filter", "test", "expr", "signal", "labelExpr"}:
                assert not re.search(r"<DVC_METRIC_(TITLE|X_LABEL|Y_LABEL)>", s), (
                    f"{name}: label inside expression {s!r}"
                )
    orphans = {p.stem for p in TEMPLATE_DIR.glob("*.json")} - used
    assert not orphans, f"templates no plot uses: {sorted(orphans)}"


def encodings(node, channel: str) -> list[dict]:
    """Every `channel` encoding (x, y, ...) in a Vega-Lite spec, layers included."""
    found, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if isinstance(n.get("encoding"), dict) and isinstance(n["encoding"].get(channel), dict):
                found.append(n["encoding"][channel])
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return found


def test_log_scales_where_the_png_has_them():
    """Figure 1's parameter counts on a log x; gradient norms and Δ-CKA (FIGURES' log-y flag) on a log y."""
    series, _ = definitions()
    for pid, props in series.items():
        t = template(props["template"])
        x_log = any(e.get("scale", {}).get("type") == "log" for e in encodings(t, "x"))
        y_log = any(e.get("scale", {}).get("type") == "log" for e in encodings(t, "y"))
        assert x_log == (FIGURES[pid][0] == "trainable_parameters"), f"{pid}: log x for parameter counts only"
        assert y_log == FIGURES[pid][3], f"{pid}: log y as figures.FIGURES has it"


# --- fill the templates the way DVC does, on rows shaped like figures.py's ---


def tidy_rows(stem: str, revs=("workspace",)) -> list[dict]:
    """A few rows in the CSV's layout as DVC hands them to a template: strings, plus rev/filename/field."""
    x = FIGURES[stem][0]
    rows = []
    for rev in revs:
        for panel in ("rt / under", "cr / over"):
            for series in ("a", "b"):
                for i in range(3):
                    xv = 10 ** (3 + i) if x == "trainable_parameters" else i
                    row = {
                        x: str(xv),
                        "value": str(0.5 + 0.1 * i if stem != "delta_cka" else -2.2e-16 * i),
                        "std": "0.01" if i else "",
                        "series": series,
                        "panel": panel,
                        "in_band": str(i % 2),
                    }
                    rows.append({**row, "rev": rev, "filename": f"plots/report/{stem}.csv", "field": "value"})
    return rows


def filled_specs(revs=("workspace",)) -> dict[str, dict]:
    pytest.importorskip("dvc_render")
    from dvc_render.vega import VegaRenderer

    series, _ = definitions()
    specs = {}
    for pid, props in series.items():
        r = VegaRenderer(
            tidy_rows(pid, revs),
            pid,
            template=props["template"],
            template_dir=str(TEMPLATE_DIR),
            x=props["x"],
            y="value",
            title=props["title"],
            x_label=props["x_label"],
            y_label=props["y_label"],
        )
        specs[pid] = r.get_filled_template()
    return specs


def test_dvc_render_fills_every_anchor():
    for pid, spec in filled_specs(("HEAD", "workspace")).items():
        text = json.dumps(spec, ensure_ascii=False)
        assert not ANCHOR.search(text), f"{pid}: unfilled anchor"
        assert len(spec["data"]["values"]) == 24
        assert FIGURES[pid][1] in text


NODE_CHECK = r"""
const fs = require('fs'), vm = require('vm');
const ctx = {
  console, setTimeout, clearTimeout, setInterval, clearInterval, structuredClone, TextEncoder, TextDecoder, URL
};
ctx.self = ctx; ctx.window = ctx;
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.env.VEGA_LIBS, 'utf8'), ctx);
const specs = JSON.parse(fs.readFileSync(0, 'utf8'));
(async () => {
  const out = {};
  for (const [id, spec] of Object.entries(specs)) {
    const warnings = [];
    try {
      const vg = ctx.vegaLite.compile(spec, {
        logger: {warn: (...a) => warnings.push(a.join(' ')), info() {}, debug() {}, level() { return this; }}
      }).spec;
      const view = new ctx.vega.View(ctx.vega.parse(vg), {renderer: 'none'});
      const svg = await view.toSVG();
      const titles = [...svg.matchAll(/role-axis-title[^>]*>(?:<[^>]*>)*?<text[^>]*>([\s\S]*?)<\/text>/g)]
        .map(m => m[1].replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim());
      const size = svg.match(/<svg[^>]*width="([^"]*)" height="([^"]*)"/);
      out[id] = {
        ok: true, width: +size[1], height: +size[2], marks: (svg.match(/role-mark/g) || []).length, titles, warnings
      };
    } catch (e) {
      out[id] = {ok: false, error: String(e), warnings};
    }
  }
  console.log(JSON.stringify(out));
})();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the inlined Vega/Vega-Lite builds")
def test_filled_templates_compile_and_render_in_vega(tmp_path: Path):
    """The page's own Vega-Lite 5 and Vega 5 builds (from the offline template) compile and draw every chart, in show
    and diff."""
    html = (TEMPLATE_DIR / "offline.html").read_text(encoding="utf8")
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.S)
    libs = tmp_path / "vega.js"
    libs.write_text("\n".join(s for s in scripts if "vegaEmbed" not in s[-400:]), encoding="utf8")
    for revs in (("workspace",), ("HEAD~1", "workspace")):
        res = subprocess.run(
            ["node", "-e", NODE_CHECK],
            input=json.dumps(filled_specs(revs)),
            capture_output=True,
            env={**os.environ, "VEGA_LIBS": str(libs)},
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        result = json.loads(res.stdout.strip().splitlines()[-1])
        for pid, r in result.items():
            assert r["ok"], f"{pid} ({revs}): {r.get('error')}"
            assert r["marks"] > 0, f"{pid}: nothing drawn"
            assert 0 < r["width"] < 5000 and 0 < r["height"] < 5000, (
                f"{pid}: layout broke ({r['width']} x {r['height']} px)"
            )
            titles = set(r["titles"])
            series, _ = definitions()
            want = {series[pid]["x_label"].replace("\n", " "), series[pid]["y_label"].replace("\n", " ")}
            assert want <= titles, f"{pid}: axis titles {titles}, want {want}"
            assert not r["warnings"], f"{pid}: Vega-Lite warns {r['warnings']}"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_plots_show_draws_every_definition(tmp_path: Path):
    """The real `dvc plots show` on this dvc.yaml's plots and templates, with tidy CSVs of another profile's shape."""
    pytest.importorskip("dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert run("git", "init", "-q").returncode == 0
    assert run(sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    shutil.copytree(TEMPLATE_DIR, tmp_path / ".dvc" / "plots", dirs_exist_ok=True)
    assert run(sys.executable, "-m", "dvc", "config", "plots.html_template", "plots/offline.html").returncode == 0
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"plots": dvc_yaml()["plots"]}, allow_unicode=True), encoding="utf8"
    )
    out = tmp_path / report_dir()
    out.mkdir(parents=True)
    for stem, (x, *_rest) in FIGURES.items():
        rows = [{k: v for k, v in r.items() if k not in ("rev", "filename", "field")} for r in tidy_rows(stem)]
        cols = [x, "value", "std", "series", "panel"] + (["in_band"] if stem == "ski" else [])
        lines = [",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]
        (out / f"{stem}.csv").write_text("\n".join(lines) + "\n", encoding="utf8")
    res = run(sys.executable, "-m", "dvc", "plots", "show", "-o", "page")
    assert res.returncode == 0, res.stdout + res.stderr
    page = (tmp_path / "page" / "index.html").read_text(encoding="utf8")
    specs = re.findall(r"var spec = (.*?);\s*vegaEmbed\(", page, re.S)
    assert len(specs) == len(FIGURES), (
        f"{len(specs)} charts on the page, {len(FIGURES)} figures: {shlex.quote(res.stderr[-500:])}"
    )
    for spec in map(json.loads, specs):
        assert not ANCHOR.search(json.dumps(spec)), "an anchor was left unfilled"
        assert spec["data"]["values"], "a chart without rows"
    assert "cdn.jsdelivr.net" not in page
