"""`dvc plots show` must produce a page that renders offline.

DVC's default page (dvc_render/html.py) fills a `{scripts}` placeholder with
<script src="https://cdn.jsdelivr.net/..."> tags for vega, vega-lite and
vega-embed. The repo's .dvc/config sets `plots.html_template` to a template with
the three libraries inlined and no `{scripts}` placeholder, so no CDN is needed.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DVC_DIR = ROOT / ".dvc"

# A <script ...src=...> whose URL is absolute http(s) or protocol-relative (//host/...).
REMOTE_SCRIPT = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
# The UMD builds register these globals; vega-embed's page snippet calls vegaEmbed(...).
UMD_GLOBALS = {"vega": r"\.vega\s*=", "vega-lite": r"\.vegaLite\s*=", "vega-embed": r"\.vegaEmbed\s*="}


def html_template_setting() -> str:
    """The committed `[plots] html_template` value (DVC reads .dvc/config.local on top; not here)."""
    cfg = configparser.ConfigParser()
    cfg.read(DVC_DIR / "config", encoding="utf8")
    assert cfg.has_option("plots", "html_template"), ".dvc/config lacks [plots] html_template"
    return cfg.get("plots", "html_template").strip().strip("'\"")


def template_path() -> Path:
    """Resolve as DVC does (dvc/commands/plots.py): a relative value is relative to .dvc/."""
    value = Path(html_template_setting())
    return value if value.is_absolute() else DVC_DIR / value


def test_config_points_at_an_existing_template_inside_the_repo():
    path = template_path()
    assert path.is_file(), f"plots.html_template -> {path} does not exist"
    assert not Path(html_template_setting()).is_absolute(), "use a path relative to .dvc/ so clones work"
    assert ROOT in path.resolve().parents


def test_template_is_self_contained():
    html = template_path().read_text(encoding="utf8")
    # dvc-render requires {plot_divs}; it replaces every occurrence, so exactly one.
    assert html.count("{plot_divs}") == 1
    # {scripts} would make DVC inject the CDN <script src="https://..."> tags again.
    assert "{scripts}" not in html
    assert html.count("{refresh_tag}") <= 1
    for lib, pattern in UMD_GLOBALS.items():
        assert re.search(pattern, html), f"{lib} build not inlined"
    assert not REMOTE_SCRIPT.search(html), "template loads a script over the network"
    assert not re.search(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//", html, re.IGNORECASE)
    # Inlined code must not end its <script> element early (nor open an HTML comment in it).
    code = re.sub(r"<!--.*?-->", "", html, flags=re.DOTALL)
    assert "<!--" not in code
    assert code.lower().count("</script") == len(re.findall(r"<script\b", code, re.IGNORECASE)) >= 3
    assert '<meta charset="utf-8">' in html  # the minified builds contain non-ASCII characters


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_plots_show_uses_the_offline_template(tmp_path: Path):
    """A tiny DVC repo with the same config: the generated index.html has no remote scripts."""
    pytest.importorskip("dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    res = _dvc("init", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    setting = html_template_setting()
    dest = Path(setting) if Path(setting).is_absolute() else tmp_path / ".dvc" / setting
    if not Path(setting).is_absolute():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template_path(), dest)
    res = _dvc("config", "plots.html_template", setting, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (tmp_path / "scores.csv").write_text("layer,ski\n0,0.1\n1,0.5\n2,0.3\n", encoding="utf8")

    res = _dvc("plots", "show", "scores.csv", "-x", "layer", "-y", "ski", "-o", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf8")
    assert "https://cdn.jsdelivr.net" not in page
    assert not REMOTE_SCRIPT.search(page)
    assert "vegaEmbed(" in page and "{plot_divs}" not in page
    assert re.search(UMD_GLOBALS["vega-lite"], page)
