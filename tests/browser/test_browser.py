"""The workflows in a real browser: Debian's headless Chromium opens ComfyUI's own front end
(1.32.9 from comfyui-frontend-package on the 0.3.75 host; the 2024 host's bundled web/),
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


def front_end_root():
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    return Path(comfyui_frontend_package.__file__).parent / "static"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from devtools import headless, host
    with headless.ComfyServer(host.comfyui_path(), tmp_path_factory.mktemp("server"),
                              front_end_root=front_end_root()) as s:
        s.new_front_end = "--front-end-root" in " ".join(s.command())
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
        by_id = {n["id"]: n for n in got["nodes"]}
        assert sorted(by_id) == sorted(n["id"] for n in wf["nodes"]), name     # nothing dropped
        for node in wf["nodes"]:
            values = [v for _, v in by_id[node["id"]]["widgets"]]
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
    tag = "" if server.new_front_end else "_2024"
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
          const el = document.querySelector('input[aria-label="learning_rate"]');
          if (!el) return null;
          el.focus(); el.dispatchEvent(new Event('focus'));
          await new Promise(r => setTimeout(r, 200));
          el.blur(); el.dispatchEvent(new Event('blur'));
          await new Promise(r => setTimeout(r, 300));
          const node = (app.graph._nodes ?? app.graph.nodes).find(n => n.type === 'ReVersionTrainRelation');
          return {text: el.value, value: node.widgets.find(w => w.name === 'learning_rate').value};
        """)
        browser.save_screenshot(str(IMAGES / "ui_sd15_train_relation_nodes2.png"))
        assert shown is not None, "no learning_rate input in Nodes 2.0 mode"
        assert shown["text"] == "0.00025"                      # shown in full, not "0"
        assert shown["value"] == 2.5e-4                        # focus + blur kept it (was: 1e-6)
    finally:
        run_js(browser, "await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); return true;")


def test_status_text_appears_on_the_node_after_a_run(server, browser, object_info):
    wf = uw.load(REPO / "workflows" / "toyworld_demo.json")
    slots = [n for n, _ in uw.widget_slots(object_info["ReVersionTrainRelation"])]
    train = next(n for n in wf["nodes"] if n["type"] == "ReVersionTrainRelation")
    train["widgets_values"][slots.index("steps")] = 1
    train["widgets_values"][slots.index("batch_size")] = 1
    train["widgets_values"][slots.index("name")] = "browser_run"
    for node in wf["nodes"]:                   # training only: mute the sampling branches
        if node["type"] == "SaveImage" and not node["widgets_values"][0].endswith("/loss_curve"):
            node["mode"] = 2
    run_js(browser, "await app.loadGraphData(JSON.parse(args[0])); await app.queuePrompt(0, 1); return true;",
           json.dumps(wf))
    deadline = time.time() + 300
    status = None
    while time.time() < deadline and not status:
        time.sleep(2)
        status = run_js(browser, """
          const n = (app.graph._nodes ?? app.graph.nodes).find(n => n.type === 'ReVersionTrainRelation');
          return n.widgets.find(w => w.name === 'reversion_status')?.value ?? null;""")
    assert status and status.startswith("saved browser_run.safetensors (embedding:browser_run): 1 updates")
    browser.save_screenshot(str(IMAGES / ("ui_after_run.png" if server.new_front_end else "ui_after_run_2024.png")))


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
