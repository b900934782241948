"""The workflows in a real browser: Debian's headless Chromium opens ComfyUI's own front end
(on the 0.3.75 host: 1.32.9, which it pins, and the current 1.58.1; the 2024 host's bundled web/),
loads every workflows/*.json the way the Templates dialog does, and reads back what the
front end holds and would queue. Screenshots go to runs/screenshots/ (not tracked: look at
them to see what a user sees).

    make test-browser        (apt-get installs chromium + chromium-driver first; pytest tests/browser)

`make test` runs it after the suite on each host; it needs the browser packages, so the suite itself (`pytest tests`) leaves this folder out.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from devtools import ui_workflow as uw
from devtools.pack import REPO

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
NAMES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
IMAGES = REPO / "runs" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1600,1000"]

pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver (make test-browser)")


def front_ends() -> dict:
    """label -> static folder of each front end the host under test is tried with: on hosts
    that take --front-end-root, the one 0.3.75 pins (1.32.9, requirements-dev.txt) and the
    current one (1.58.1, .hosts/frontend-1.58 from make setup); older hosts serve their own."""
    from devtools import host
    if "--front-end-root" not in (host.comfyui_path() / "comfy" / "cli_args.py").read_text():
        return {"2024": None}
    import comfyui_frontend_package
    return {"1.32": Path(comfyui_frontend_package.__file__).parent / "static",
            "1.58": REPO / ".hosts" / "frontend-1.58"}


@pytest.fixture(scope="module", params=list(front_ends()))
def server(request, tmp_path_factory):
    from devtools import headless, host
    root = front_ends()[request.param]
    if root is not None and not (root / "index.html").exists():
        pytest.fail(f"front end {request.param} missing at {root}: run make setup")
    with headless.ComfyServer(host.comfyui_path(), tmp_path_factory.mktemp("server"), front_end_root=root) as s:
        s.front_end = request.param
        s.new_front_end = root is not None
        if s.new_front_end:
            for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Workflow.ShowMissingModelsWarning", False),
                               ("Comfy.Workflow.ShowMissingNodesWarning", False)):
                s.post(f"/settings/{key}", value)
        yield s


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    try:
        driver.get(server.url)
        deadline = time.time() + 180
        while time.time() < deadline:
            if driver.execute_script("return !!(window.app && window.app.graph && window.ReVersionUI)"):
                break
            time.sleep(1)
        else:
            logs = "\n".join(str(e) for e in driver.get_log("browser"))[-3000:]
            raise TimeoutError(f"the front end did not load (or not this pack's extension):\n{logs}")
        time.sleep(2)
        yield driver
    finally:
        driver.quit()


def run_js(driver, body: str, *args):
    """Run an async JS body (`args` as `args`) and return its result; JS errors raise here."""
    script = ("const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);"
              f"(async () => {{ {body} }})().then(r => done({{ok: r}}), e => done({{error: String(e && e.stack || e)}}));")
    out = driver.execute_async_script(script, *args)
    if "error" in out:
        raise RuntimeError(out["error"])
    return out["ok"]


LOAD = """
  const [name, text] = args;
  const data = JSON.parse(text);
  await app.loadGraphData(data);
  await new Promise(r => setTimeout(r, 500));
  const nodes = app.graph._nodes ?? app.graph.nodes;
  const prompt = await app.graphToPrompt();
  return {
    nodes: nodes.map(n => ({id: n.id, type: n.type,
      widgets: (n.widgets || []).filter(w => w.name !== 'reversion_status').map(w => [w.name, w.value])})),
    output: prompt.output,
  };
"""


def load(browser, name: str, via_templates_route: bool, server) -> dict:
    if via_templates_route:     # exactly what the Templates dialog fetches
        text = run_js(browser, "const r = await fetch(args[0]); if (!r.ok) throw new Error(r.status); return await r.text();",
                      f"{server.url}/api/workflow_templates/ComfyUI-ReVersion/{name}.json")
    else:
        text = (REPO / "workflows" / f"{name}.json").read_text()
    return run_js(browser, LOAD, name, text)


def test_front_end_holds_and_queues_exactly_what_the_workflows_say(server, browser, object_info):
    for name in NAMES:
        wf = uw.load(REPO / "workflows" / f"{name}.json")
        got = load(browser, name, server.new_front_end, server)
        by_id = {str(n["id"]): n for n in got["nodes"]}         # (1.58 holds ids as strings)
        assert sorted(by_id) == sorted(str(n["id"]) for n in wf["nodes"]), name     # nothing dropped
        for node in wf["nodes"]:
            values = [v for _, v in by_id[str(node["id"])]["widgets"]]
            assert values == node["widgets_values"], (name, node["type"], by_id[node["id"]]["widgets"])
        # what Queue would send: the front end's own UI->API conversion equals ours, values exact
        sent = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in got["output"].items()}
        assert sent == uw.to_api(wf, object_info), name
        for node in sent.values():
            if node["class_type"] == "ReVersionTrainRelation":
                assert node["inputs"]["learning_rate"] in (2.5e-4, 6.25e-4)
        train = [n for n in got["nodes"] if n["type"] in ("ReVersionTrainRelation", "ReVersionToyWorldExemplars")]
        for n in train:                             # no "control after generate" on the training nodes
            assert not any("control" in w for w, _ in n["widgets"]), n


def test_screenshots_of_the_workflows(server, browser):
    IMAGES.mkdir(parents=True, exist_ok=True)
    tag = f"_{server.front_end}"
    for name in ("toyworld_demo", "sd15_train_relation"):
        load(browser, name, False, server)
        if server.new_front_end:                   # whole graph in view, no minimap
            run_js(browser, "await app.extensionManager.setting.set('Comfy.Minimap.Visible', false);"
                            "await app.extensionManager.command.execute('Comfy.Canvas.FitView'); return true;")
        time.sleep(1.5)
        path = IMAGES / f"ui_{name}{tag}.png"
        browser.save_screenshot(str(path))
        from PIL import Image
        with Image.open(path) as shot:     # the window, with a drawn graph (a blank canvas has a few colours)
            colours = len(shot.convert("RGB").getcolors(maxcolors=1 << 24))
            assert shot.size[0] >= 1600 and colours > 1000, (shot.size, colours, path)


def test_nodes_2_0_mode_keeps_small_floats(server, browser):
    if not server.new_front_end:
        pytest.skip("the 2024 front end has no Nodes 2.0 mode")
    run_js(browser, "await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); return true;")
    try:
        load(browser, "sd15_train_relation", False, server)
        time.sleep(3)
        shown = run_js(browser, """
          const el = document.querySelector('input[aria-label="learning_rate"]')            // 1.32
                  ?? document.querySelector('[data-widget-name="learning_rate"] input');    // 1.58
          if (!el) return null;
          el.focus(); el.dispatchEvent(new Event('focus'));
          await new Promise(r => setTimeout(r, 200));
          el.blur(); el.dispatchEvent(new Event('blur'));
          await new Promise(r => setTimeout(r, 300));
          const node = (app.graph._nodes ?? app.graph.nodes).find(n => n.type === 'ReVersionTrainRelation');
          return {text: el.value, value: node.widgets.find(w => w.name === 'learning_rate').value};
        """)
        browser.save_screenshot(str(IMAGES / f"ui_sd15_train_relation_nodes2_{server.front_end}.png"))
        assert shown is not None, "no learning_rate input in Nodes 2.0 mode"
        assert float(shown["text"]) == 2.5e-4                  # shown in full ("0.00025"), not "0"
        assert shown["value"] == 2.5e-4                        # focus + blur kept it (was: 1e-6)
    finally:
        run_js(browser, "await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); return true;")


STATUS_ELEMENT = """
  const n = (app.graph._nodes ?? app.graph.nodes).find(n => n.type === 'ReVersionTrainRelation');
  const w = n.widgets.find(w => w.name === 'reversion_status');
  const vue = document.querySelector('[data-widget-name="reversion_status"] textarea')
           ?? document.querySelector('textarea[aria-label="reversion_status"]');
  const el = args[0] ? vue : (w?.inputEl ?? w?.element);
  if (!w || !el) return {value: w?.value ?? null, found: false};
  const box = el.getBoundingClientRect();
  return {value: w.value, found: true, text: el.value, readOnly: el.readOnly || el.disabled,
          overflow: el.scrollHeight - el.clientHeight, wide: el.scrollWidth - el.clientWidth,
          height: box.height};
"""


def test_a_run_shows_one_progress_bar_and_the_whole_status(server, browser, object_info):
    """Train Relation with a preview every update: the progress the node's bar receives never
    goes backwards (a preview's sampler used to report on the same node), and the summary
    is shown whole, wrapped and read-only, in both modes where the front end has two."""
    wf = uw.load(REPO / "workflows" / "toyworld_demo.json")
    slots = [n for n, _ in uw.widget_slots(object_info["ReVersionTrainRelation"])]
    train = next(n for n in wf["nodes"] if n["type"] == "ReVersionTrainRelation")
    for key, value in (("steps", 2), ("batch_size", 1), ("name", f"browser_run_{server.front_end}"),
                       ("preview_every", 1), ("preview_steps", 3)):
        train["widgets_values"][slots.index(key)] = value
    for node in wf["nodes"]:                   # training only: mute the sampling branches
        if node["type"] == "SaveImage" and not node["widgets_values"][0].endswith("/loss_curve"):
            node["mode"] = 2
    run_js(browser, """
      const {api} = await import('/scripts/api.js');
      window.__progress = [];
      api.addEventListener('progress', (e) => window.__progress.push([String(e.detail.node), e.detail.value, e.detail.max]));
      await app.loadGraphData(JSON.parse(args[0])); await app.queuePrompt(0, 1); return true;""", json.dumps(wf))
    deadline = time.time() + 300
    status = None
    while time.time() < deadline and not (status and status["value"]):
        time.sleep(2)
        status = run_js(browser, STATUS_ELEMENT, False)
    assert status["value"].startswith(f"saved browser_run_{server.front_end}.safetensors "
                                      f"(embedding:browser_run_{server.front_end}): 2 updates")
    assert status["found"] and status["text"] == status["value"] and status["readOnly"]
    assert status["overflow"] <= 2 and status["wide"] <= 2, status          # the whole text in view
    progress = [(v, m) for node, v, m in run_js(browser, "return window.__progress;") if node == str(train["id"])]
    assert progress and {m for _, m in progress} == {2}, progress          # the sampler's 3 steps never shown
    assert [v for v, _ in progress] == sorted(v for v, _ in progress), progress
    browser.save_screenshot(str(IMAGES / f"ui_after_run_{server.front_end}.png"))
    if server.front_end == "1.58":                 # Nodes 2.0 (1.32 has it too; 1.58 is what users get now)
        run_js(browser, "await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); return true;")
        try:
            time.sleep(3)
            vue = run_js(browser, STATUS_ELEMENT, True)
            browser.save_screenshot(str(IMAGES / f"ui_after_run_nodes2_{server.front_end}.png"))
            assert vue["found"] and vue["text"] == status["value"] and vue["readOnly"], vue
            assert vue["overflow"] <= 2, vue
            # the node holding the loss/sample preview and the status covers no other node
            covered = run_js(browser, """
              const boxes = Array.from(document.querySelectorAll('[data-node-id]'))
                .map(e => [e.getAttribute('data-node-id'), e.getBoundingClientRect()]);
              const own = boxes.find(([id]) => id === args[0]);
              if (!own) return null;
              const [, a] = own;
              return {train: [a.top, a.bottom], hit: boxes.filter(([id, b]) => id !== args[0] && b.width > 0 &&
                b.left < a.right && b.right > a.left && b.top < a.bottom && b.bottom > a.top).map(([id]) => id)};
            """, str(train["id"]))
            assert covered is not None and covered["hit"] == [], covered
        finally:
            run_js(browser, "await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); return true;")


def test_new_nodes_start_wide_enough_for_titles_and_labels(browser, object_info):
    types = sorted(k for k in object_info if k.startswith("ReVersion"))
    sizes = run_js(browser, """
      const out = {};
      for (const type of args[0]) {
        const node = LiteGraph.createNode(type);
        out[type] = [node.size[0], node.title];
      }
      return out;""", types)
    assert sorted(sizes) == types
    for type_, (width, title) in sizes.items():
        assert width >= 340, (type_, width)            # was ~200 ("Toy World ...", "relation_f...")
        assert title == object_info[type_]["display_name"]
