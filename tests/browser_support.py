"""A real headless browser for tests: Debian's Chromium driven by Playwright, and axe-core for accessibility.

A plain module (not a conftest), imported by the browser tests. What it needs from outside pip is installed
by the project's own script, scripts/install-browser: Debian's chromium through apt-get (as root; CI runs as
root) and axe-core from the npm registry into .cache/npm. Never `playwright install`: it downloads a browser
build of its own, which this project does not use and which cannot be fetched here.

Chromium runs with the flags that keep it off the network (background services, component updates, sync,
QUIC), and the tests point TMPDIR, XDG_CONFIG_HOME and XDG_CACHE_HOME at a test folder so neither Chromium nor
Playwright's driver leaves anything in the home folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "scripts" / "install-browser"
CHROMIUM = Path("/usr/bin/chromium")
AXE_JS = ROOT / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERIOUS = ("serious", "critical")


def _install(*args: str) -> None:
    r = subprocess.run(["bash", str(INSTALL_SCRIPT), *args], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"scripts/install-browser {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def ensure_chromium() -> Path:
    """/usr/bin/chromium, installed by scripts/install-browser if missing (as root); else skip."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip("Debian's chromium is not installed and installing it needs root: run "
                        "`sudo scripts/install-browser` once")
        _install()
    return CHROMIUM


def ensure_axe() -> Path:
    """axe.min.js from the npm package axe-core, installed into .cache/npm if missing."""
    if not AXE_JS.exists():
        if shutil.which("npm") is None:
            pytest.skip("axe-core is not installed and npm is missing to install it (Debian: apt-get install npm)")
        _install("--axe-only")
    return AXE_JS


@contextmanager
def quiet_environment(folder: Path) -> Iterator[dict[str, str]]:
    """TMPDIR, XDG_CONFIG_HOME and XDG_CACHE_HOME in `folder` for this process and what it starts."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {name: str(folder / name.lower()) for name in ("TMPDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    for path in values.values():
        Path(path).mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            mp.setenv(name, value)
        yield values


@contextmanager
def chromium_browser(folder: Path) -> Iterator[Any]:
    """A launched Playwright Browser (Debian's chromium, headless, offline flags); closed on exit."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(it is in the project's test extras: pip install -e '.[test]')")
    executable = ensure_chromium()
    with quiet_environment(folder), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def axe_violations(page: Any, axe_js: Path, impacts: tuple[str, ...] = SERIOUS) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now; the violations of the given impact levels.

    The page's Content Security Policy forbids injected scripts: the page must belong to a browser context
    made with bypass_csp=True.
    """
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(axe_js))
    results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [v for v in results["violations"] if v.get("impact") in impacts]


def describe_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['impact']}: {v['id']}: {v['help']}")
        lines.extend(f"    {' '.join(n.get('target', []))}: {n.get('failureSummary', '')}" for n in v["nodes"][:5])
    return "\n".join(lines)
