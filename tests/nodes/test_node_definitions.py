"""The node definitions as ComfyUI and its front ends read them (nodes/): eight V1 nodes
with short tooltips on every input, no seed the window would randomise, float widgets that
keep exact values in both front ends, Markdown-safe descriptions and help pages."""
from __future__ import annotations

import math
import re

import pytest

from conftest import PACK_NODES
from devtools.pack import REPO

LEARNING_RATES = [2.5e-4, 6.25e-4, 3.125e-5, 1.25e-4, 1e-6, 2e-3, 1e-2]
MAX_TOOLTIP = 250          # a tooltip is a hint; the help page (web/docs) holds the details


def pack_nodes(host):
    return {k: v for k, v in host.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("ReVersion")}


def widget_inputs(cls):
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            yield name, entry[0], (entry[1] if len(entry) > 1 else {})


def js_round(v: float, ndigits: int) -> float:
    """Number(x.toFixed(n)) for the values used here (half away from zero on the decimal)."""
    return float(f"{v:.{ndigits}f}")


def new_frontend_value(v: float, step: float) -> float:
    """What front end 1.32.x stores for a FLOAT widget set to v (useFloatWidget + onFloatValueChange)."""
    precision = max(0, -math.floor(math.log10(step)))
    rnd = 10.0 ** -precision
    return js_round(round(v / rnd) * rnd, precision) if precision else v


def old_frontend_value(v: float, step: float) -> float:
    """What the 2024 front end stores (widgets.js getNumberDefaults + FLOAT callback)."""
    precision = max(0, -math.floor(math.log10(step)))
    rnd = round(1e6 * 0.1 ** precision) / 1e6
    return round(v / rnd) * rnd if rnd else v


def test_every_node_is_a_v1_node_with_tooltips(host):
    ours = {k: v for k, v in host.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("ReVersion")}
    assert set(ours) == PACK_NODES
    for name, cls in ours.items():
        assert cls.CATEGORY.startswith("ReVersion") and cls.DESCRIPTION
        assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        for kind, section in cls.INPUT_TYPES().items():
            if kind == "hidden":           # filled in by the host (the prompt, the node id): no widget
                assert set(section.values()) <= {"PROMPT", "UNIQUE_ID"}, (name, section)
                continue
            for input_name, spec in section.items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
                assert len(spec[1]["tooltip"]) <= MAX_TOOLTIP, f"{name}.{input_name}: move details to web/docs"
        assert all(len(t) <= MAX_TOOLTIP for t in getattr(cls, "OUTPUT_TOOLTIPS", ()))


def test_no_widget_is_randomised_after_a_run(host):
    for node_id, cls in pack_nodes(host).items():
        for name, kind, opts in widget_inputs(cls):
            # both front ends add "control after generate: randomize" to an INT named seed/noise_seed
            assert name not in ("seed", "noise_seed"), (node_id, name)
            if kind == "INT" and "seed" in name:
                assert opts.get("control_after_generate") is False, (node_id, name)


def test_float_widgets_keep_the_values_workflows_hold(host):
    train = pack_nodes(host)["ReVersionTrainRelation"]
    floats = {name: opts for name, kind, opts in widget_inputs(train) if kind == "FLOAT"}
    for lr in LEARNING_RATES + [floats["learning_rate"]["min"]]:
        step = floats["learning_rate"]["step"]
        assert new_frontend_value(lr, step) == lr, lr
        assert old_frontend_value(lr, step) == pytest.approx(lr, rel=1e-12, abs=0), lr
    assert new_frontend_value(6.25e-4, 1e-5) != 6.25e-4         # the old step lost it (0.00062)
    for node_id, cls in pack_nodes(host).items():
        for name, kind, opts in widget_inputs(cls):
            if kind == "FLOAT":
                assert "round" not in opts, (node_id, name)     # a round option overrides the exact default
                assert new_frontend_value(opts["default"], opts["step"]) == opts["default"], (node_id, name)
                assert new_frontend_value(opts["min"], opts["step"]) == opts["min"], (node_id, name)
    for v in (0.01, 0.001, 1e-4):
        assert new_frontend_value(v, floats["weight_decay"]["step"]) == v
        assert new_frontend_value(v, floats["steering_weight"]["step"]) == v


def test_descriptions_read_the_same_as_markdown_and_as_plain_text(host):
    """The front end renders DESCRIPTION as Markdown in hover cards and shows it raw in the
    search list: no backticks (shown raw), no angle brackets (an HTML tag in Markdown), no
    unbreakable token long enough to overflow a card."""
    for node_id, cls in pack_nodes(host).items():
        text = cls.DESCRIPTION
        assert "`" not in text and "<" not in text and ">" not in text, (node_id, text)
        assert max(len(word) for word in text.split()) <= 30, (node_id, text)
    assert "placeholder (R in angle brackets)" in pack_nodes(host)["ReVersionRelationTextEncode"].DESCRIPTION


def test_help_pages_and_front_end_extension_are_served_from_web_directory(host):
    init = (REPO / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in init
    for node_id in pack_nodes(host):
        page = REPO / "web" / "docs" / f"{node_id}.md"
        assert page.is_file(), page                               # /extensions/<pack>/docs/<NodeClass>.md
        assert page.read_text().startswith("# "), page
    js = (REPO / "web" / "js" / "reversion_ui.js").read_text()
    assert "maxFractionDigits" in js and "onExecuted" in js


def test_display_names_are_short(host):
    for node_id, name in host.nodes.NODE_DISPLAY_NAME_MAPPINGS.items():
        if node_id.startswith("ReVersion"):
            assert len(name) <= 24, name
