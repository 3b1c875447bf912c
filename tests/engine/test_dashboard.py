"""The local cluster's dashboard, seen in a real headless Chromium while a patches pipeline runs.

The test drives Debian's ``chromium`` through ``chromium-driver`` with selenium. A plain ``chromium --screenshot``
is not enough: Bokeh draws the plots only after its websocket delivers them, so such a screenshot shows the nav
bar alone. Screenshots are kept as artifacts in ``$ZARRFORGE_ARTIFACTS`` (default ``<repo>/test-artifacts``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from operator import not_
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import psutil
import pytest
import xarray as xr

from engine.pipelines import run_patches
from storage.store import TrainingStore
from storage.synthetic import write_micrographs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]

#: Blocks let through while /status is open, so its task stream shows finished ``store-write`` tasks.
WRITES_LET_THROUGH = 6

# Every ColumnDataSource of the page's Bokeh documents that has all the given columns: its ``name`` column
# (task prefixes). The labels are drawn on canvases, so the text is not in the DOM; the models are.
_NAMES_JS = """
const [needed] = arguments;
const names = [];
for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
  for (const model of doc.all_models) {
    if (!model.data) continue;
    const data = model.data instanceof Map ? Object.fromEntries(model.data) : model.data;
    if (needed.every((column) => column in data)) names.push(...Array.from(data.name));
  }
}
return names;
"""

# Canvases with at least one painted pixel. Bokeh 3 nests them in several levels of shadow DOM.
_PAINTED_CANVASES_JS = """
function canvases(root) {
  const found = [...root.querySelectorAll('canvas')];
  root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) found.push(...canvases(e.shadowRoot)); });
  return found;
}
return canvases(document).filter((canvas) => {
  const context = canvas.width && canvas.height ? canvas.getContext('2d') : null;
  if (!context) return false;
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) return true;
  return false;
}).length;
"""

# The progress bars are one source (columns show-name, done), the task stream another (duration, worker_thread).
_PROGRESS = ["name", "show-name", "done"]
_TASK_STREAM = ["name", "duration", "worker_thread"]
_STEPS = {"read-mrc", "patches-extract", "store-write"}


def _browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {package})"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    return None


@contextmanager
def headless_chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium driven by selenium; on exit, checks that no chromium or chromedriver process is left."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",  # runs as root in containers and CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    chromedriver = psutil.Process(driver.service.process.pid)
    try:
        yield driver
    finally:
        started = [chromedriver, *chromedriver.children(recursive=True)]
        driver.quit()
        _, alive = psutil.wait_procs(started, timeout=15)
        for process in alive:  # only processes this function started, by pid
            process.kill()
        assert not alive, f"chromium processes left after quit: {[p.pid for p in alive]}"


@pytest.fixture
def dashboard_links() -> Iterator[queue.Queue[str]]:
    """The dashboard links ``engine.clusters`` logs (the line the CLI prints at start), as they come."""
    links: queue.Queue[str] = queue.Queue()

    class Links(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("dashboard: "):
                links.put(message.removeprefix("dashboard: "))

    # On the module's own logger: an in-process CLI test may have stopped "engine" from propagating to the root.
    logger = logging.getLogger("engine.clusters")
    handler, level = Links(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield links
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class WriteGate:
    """Holds every block write until let through: :meth:`allow` lets ``n`` more pass, :meth:`open` all."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._allowed = 0
        self._opened = False
        self.waiting = 0

    def wait_turn(self) -> None:
        with self._changed:
            self.waiting += 1
            # bounded, so a broken test cannot hang the suite
            self._changed.wait_for(lambda: self._opened or self._allowed > 0, timeout=300)
            self._allowed = max(self._allowed - 1, 0)
            self.waiting -= 1

    def allow(self, n: int) -> None:
        with self._changed:
            self._allowed += n
            self._changed.notify_all()

    def open(self) -> None:
        with self._changed:
            self._opened = True
            self._changed.notify_all()


@pytest.fixture
def write_gate(monkeypatch) -> Iterator[WriteGate]:
    """Block writes wait at a :class:`WriteGate`, so the pipeline is certainly mid-run while the browser looks."""
    gate = WriteGate()
    write_block = TrainingStore.write_block

    def write_block_in_turn(self: TrainingStore, *args: Any, **kwargs: Any) -> int:
        gate.wait_turn()
        return write_block(self, *args, **kwargs)

    # The threads cluster runs tasks in this process, so the patched class is the one the workers use.
    monkeypatch.setattr(TrainingStore, "write_block", write_block_in_turn)
    try:
        yield gate
    finally:
        gate.open()


def _wait_for(what: str, probe: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 60) -> Any:
    """Poll ``probe()`` until ``done(value)``; fail naming ``what`` and the last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {value!r}")
        time.sleep(0.25)


def _artifacts() -> Path:
    folder = Path(os.environ.get("ZARRFORGE_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _listening_on(port: int) -> list[str]:
    """Addresses this process listens on at ``port``."""
    return [
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def _connected_to(port: int) -> list[Any]:
    """The open connections this process serves at ``port``."""
    return [
        c
        for c in psutil.Process().net_connections(kind="inet")
        if c.status != psutil.CONN_LISTEN and c.laddr.port == port
    ]


def test_dashboard_shows_the_pipeline_steps_while_it_runs(
    tmp_path: Path,
    require_feature: Callable[[str, str | None], None],
    monkeypatch: pytest.MonkeyPatch,
    threads_cluster: None,
    small_shards: None,
    dashboard_links: queue.Queue[str],
    write_gate: WriteGate,
):
    require_feature("browser", _browser_missing())
    # Explicit binaries: Selenium Manager has nothing to look up and must not try to download anything.
    monkeypatch.setenv("SE_OFFLINE", "true")
    write_micrographs(tmp_path / "mics", 4, (256, 256), seed=3)
    out = tmp_path / "train.zarr"
    with ThreadPoolExecutor(1) as pool:
        try:
            run = pool.submit(run_patches, f"{tmp_path}/mics/*.mrc", out, size=64, stride=32, progress=False)
            _wait_for("the dashboard link", lambda: run.done() or not dashboard_links.empty(), bool)
            if run.done():
                run.result()  # raises what stopped the run before its cluster started
            link = dashboard_links.get_nowait()
            url = urlsplit(link)
            assert url.scheme == "http" and url.hostname == "127.0.0.1", link
            port = url.port or 0
            assert _listening_on(port) == ["127.0.0.1"], _listening_on(port)
            base = f"{url.scheme}://{url.netloc}"
            with urlopen(f"{base}/health", timeout=10) as health:
                assert health.read() == b"ok"
            _wait_for("a block write", lambda: write_gate.waiting, bool)

            with headless_chromium(tmp_path / "chromium-profile") as chromium:
                # The task stream records tasks that finish after a page first asked for it: open /status, then
                # let a few blocks through (their writes, and the reads and cuts of the blocks submitted after).
                chromium.get(f"{base}/status")
                _wait_for_steps(chromium, _PROGRESS, "status")
                write_gate.allow(WRITES_LET_THROUGH)
                _wait_for_steps(chromium, _TASK_STREAM, "status")
                _screenshot(chromium, "status")

                chromium.get(f"{base}/individual-progress")
                _wait_for_steps(chromium, _PROGRESS, "individual-progress")
                _screenshot(chromium, "individual-progress")
            assert not run.done(), "the run ended before the browser had looked"
            # Let the run end (and close its cluster) only once the dashboard has closed the browser's
            # websockets: Bokeh leaves un-awaited coroutines (a warning, so an error here) when the event loop
            # stops while it still has updates queued for a page.
            _wait_for("the dashboard to close the browser's connections", lambda: _connected_to(port), not_)
        finally:
            write_gate.open()
        summary = run.result(timeout=120)
    assert summary.blocks_written == summary.blocks_total > WRITES_LET_THROUGH
    assert xr.open_zarr(out).attrs["zarrforge"]["complete"]


def _wait_for_steps(driver: Any, columns: list[str], page: str) -> None:
    _wait_for(
        f"{', '.join(sorted(_STEPS))} in the {columns[1:]} plot of /{page}",
        lambda: sorted(set(driver.execute_script(_NAMES_JS, columns))),
        lambda names: set(names) >= _STEPS,
    )


def _screenshot(driver: Any, page: str) -> None:
    _wait_for(f"plots drawn on /{page}", lambda: driver.execute_script(_PAINTED_CANVASES_JS), bool)
    time.sleep(1)  # a few periodic updates, so the screenshot shows the bars, not a first frame
    png = _artifacts() / f"dashboard-{page}.png"
    assert driver.save_screenshot(str(png)), png
    assert png.stat().st_size > 20_000, f"{png} looks empty"
