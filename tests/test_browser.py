"""Notebook 07's dashboard in a real browser: JupyterLab in headless Chromium.

The test starts a throwaway JupyterLab server (its own config, data and
runtime folders, a token, a free localhost port, the announcements plugin
off, fast settings), opens ``notebooks/07_dashboard.ipynb``, runs every cell,
checks that no control's label is cut off, moves the draft-length and
update-interval sliders with the keyboard, presses Run, and checks that the
status line and the alpha plot change. Widgets are
found by the CSS classes ``osd_lab.dashboard.Dashboard`` gives them
(``osd-draft-len``, ``osd-run``, ...). On failure a screenshot is saved to a
temporary folder and its path printed.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and PyPI's ``playwright``
(no browser download: Playwright drives the system executable); ``.ci/run``
installs both and sets ``OSD_LAB_BROWSER=required``, under which their
absence fails the test instead of skipping it. Deselect with ``-m "not browser"``.
"""

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
NOTEBOOK = "notebooks/07_dashboard.ipynb"
SERVER_START_S, NOTEBOOK_RUN_S, CLICK_RUN_S = 60, 180, 60  # generous: a loaded CPU


@pytest.mark.widgets  # make test-min runs it on the lowest ipywidgets
def test_dashboard_widgets_carry_stable_css_classes(zoo):
    """The selectors the browser test relies on (checked without a browser)."""
    from osd_lab.dashboard import Dashboard
    dashboard = Dashboard(zoo, {"sql": ["SELECT"]})
    parts = dict(dashboard.controls, run=dashboard.button, status=dashboard.status,
                 plot=dashboard.plot, dashboard=dashboard.widget)
    for name, part in parts.items():
        assert "osd-" + name.replace("_", "-") in part._dom_classes


# ---------------------------------------------------------------------------- the server

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_jupyterlab(folder, port, token):
    """A JupyterLab server that reads and writes only under ``folder``.

    It serves a copy of the notebook: JupyterLab's autosave never touches the repository.
    """
    served = folder / "served" / NOTEBOOK
    served.parent.mkdir(parents=True)
    shutil.copyfile(ROOT / NOTEBOOK, served)
    config = folder / "config"
    (config / "labconfig").mkdir(parents=True)
    # what `jupyter labextension disable --level=user` writes: no news fetched at start
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config),
               JUPYTER_DATA_DIR=str(folder / "data"),
               JUPYTER_RUNTIME_DIR=str(folder / "runtime"), IPYTHONDIR=str(folder / "ipython"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])),
               OSD_LAB_FAST="1", OMP_NUM_THREADS="1")
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder / 'served'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the kernel goes down with it
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited: {(folder / 'server.log').read_text()}")
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=2)
            return server
        except OSError:
            time.sleep(0.3)
    stop(server)
    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s")


def stop(server):
    """End the server's process group (server and kernel): TERM, then KILL."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# ---------------------------------------------------------------------------- the page

def click_menu(page, menu, item):
    """Click a JupyterLab menu entry, e.g. ("Run", "Run All Cells")."""
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def wait_idle(page, timeout_s):
    """Wait for the status bar's "Python 3 (ipykernel) | Idle": a kernel, started and idle.

    (The toolbar's indicator also says idle while no kernel is attached yet.)
    """
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\(ipykernel\) \| Idle$")) \
        .wait_for(timeout=timeout_s * 1000)


def move_slider(page, css_class, key):
    """Press ``key`` once on a slider's handle, as a keyboard user would; return its readout.

    One key press per slider: ipywidgets holds back a model's next change until
    the kernel has answered the previous one, so a second press could reach
    the kernel after the Run click.
    """
    handle = page.locator(f".{css_class} .noUi-handle")
    handle.focus()
    handle.press(key)
    return page.locator(f".{css_class} .widget-readout").inner_text()


def drive_dashboard(page, base_url, token):
    page.goto(f"{base_url}/lab/tree/{NOTEBOOK}?token={token}&reset",
              timeout=SERVER_START_S * 1000)
    wait_idle(page, SERVER_START_S)
    # clear the stored outputs, so that a numbered prompt proves this run executed the cell
    click_menu(page, "Edit", "Clear Outputs of All Cells")
    click_menu(page, "Run", "Run All Cells")
    code_cells = sum(cell["cell_type"] == "code"
                     for cell in json.loads((ROOT / NOTEBOOK).read_text())["cells"])
    page.wait_for_function(
        """count => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length === count && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", arg=code_cells, timeout=NOTEBOOK_RUN_S * 1000)
    wait_idle(page, NOTEBOOK_RUN_S)

    page.locator(".osd-dashboard").scroll_into_view_if_needed()  # cells off screen are not drawn
    # every control's label is shown in full, not cut to "update ev..."
    cut = page.evaluate("""() => [...document.querySelectorAll('.osd-dashboard .widget-label')]
        .filter(label => label.textContent && label.scrollWidth > label.clientWidth)
        .map(label => label.textContent)""")
    assert cut == [], f"labels cut off: {cut}"
    status, plot = page.locator(".osd-status"), page.locator(".osd-plot")
    status_before, plot_before = status.text_content(), plot.get_attribute("src")
    assert "query 8/8" in status_before, status_before  # the notebook's last click
    # the notebook leaves draft len 4 and update every 4: make them 5 and 1 (Home: the minimum)
    assert move_slider(page, "osd-draft-len", "ArrowRight") == "5"
    assert move_slider(page, "osd-update-interval", "Home") == "1"
    page.locator(".osd-run").click()
    # run() writes the status line, then the plot; both reach the page after the kernel's idle
    page.wait_for_function(
        """([status, plot]) =>
            document.querySelector('.osd-status').textContent !== status
            && document.querySelector('.osd-plot').getAttribute('src') !== plot""",
        arg=[status_before, plot_before], timeout=CLICK_RUN_S * 1000)
    status_after = status.text_content()
    # 8 queries and an update due after each (the slider's new value) instead of every 4th;
    # a due update is left out while the draft's running alpha is >= update_below_alpha
    updates = [int(re.search(r"(\d+) updates", text).group(1))
               for text in (status_before, status_after)]
    assert "query 8/8" in status_after and updates[0] <= 2 < updates[1] <= 8, status_after


def require(available, what):
    """Skip the browser test without ``what``; in CI (.ci/run sets OSD_LAB_BROWSER=required)
    fail instead, so that a missing browser never passes as a skip."""
    if available:
        return
    message = f"the browser test needs {what}"
    if os.environ.get("OSD_LAB_BROWSER") == "required":
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.browser
def test_dashboard_in_jupyterlab_in_headless_chromium():
    require(CHROMIUM.exists(), f"Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    require(importlib.util.find_spec("playwright"), "playwright (pip install -e '.[test]')")
    require(importlib.util.find_spec("jupyterlab"), "jupyterlab (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright
    folder = Path(tempfile.mkdtemp(prefix="osd_lab_browser_"))
    token, port = secrets.token_hex(16), free_port()
    server = start_jupyterlab(folder, port, token)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                folder / "chromium-profile", executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1000})
            page = browser.pages[0]
            try:
                drive_dashboard(page, f"http://127.0.0.1:{port}", token)
            except Exception:
                shot = folder / "failure.png"
                page.screenshot(path=shot, full_page=True)
                print(f"screenshot: {shot}\nserver log: {folder / 'server.log'}")
                raise
            finally:
                browser.close()
    finally:
        stop(server)
    shutil.rmtree(folder)  # kept on failure, for the screenshot and the server log
