"""ComfyUI's UI workflow format (what the front end saves and the Templates dialog opens),
built from a host's `/object_info` so that widget order and defaults follow the node
definitions; conversion to the API format (`/prompt`); and a checker.

UI format (version 0.4, read by the 2024 front end and by 1.x):
    {"last_node_id", "last_link_id", "nodes": [...], "links": [[id, from, from_slot, to, to_slot, type]],
     "groups": [{"title", "bounding": [x, y, w, h], ...}], "config": {}, "extra": {...}, "version": 0.4}
A node lists its link inputs (sockets), its outputs with the link ids leaving them, and
`widgets_values`: one value per widget input in definition order, plus the "control after
generate" value after an INT that gets one (front ends add it to INTs named seed/noise_seed
or with `control_after_generate`).
"""
from __future__ import annotations

import json
import math

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}   # front-end only
TITLE_HEIGHT = 30          # litegraph draws the title bar above node.pos
GROUP_TITLE = 34           # group title bar height used for layout (font 24)
# combos whose choices are files on the user's machine (empty on a test host)
FILE_COMBOS = {"ckpt_name", "relation_file", "vae_name", "lora_name", "image"}


# ----------------------------------------------------------------------- node definitions
def input_specs(info: dict) -> list[tuple[str, list]]:
    """[(name, [type, options])] in definition order (required, then optional)."""
    out = []
    for group in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(group) or {}).items():
            spec = list(spec) if isinstance(spec, (list, tuple)) else [spec]
            if len(spec) == 1:
                spec.append({})
            out.append((name, spec))
    return out


def choices(spec: list) -> list | None:
    """The choices of a combo input (V1: a list as the type; V3/new: "COMBO" + options)."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return list(spec[1].get("options", []))
    return None


def is_widget(spec: list) -> bool:
    opts = spec[1] or {}
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def has_control(name: str, spec: list) -> bool:
    """Whether the front end adds a 'control after generate' widget after this input."""
    if spec[0] != "INT":
        return False
    flag = (spec[1] or {}).get("control_after_generate")
    return bool(flag) if flag is not None else name in ("seed", "noise_seed")


def widget_slots(info: dict) -> list[tuple[str, list | None]]:
    """[(input name, spec)] per widgets_values entry; (name + ":control", None) for control values."""
    slots = []
    for name, spec in input_specs(info):
        if is_widget(spec):
            slots.append((name, spec))
            if has_control(name, spec):
                slots.append((name + ":control", None))
    return slots


def link_inputs(info: dict) -> list[tuple[str, str]]:
    return [(name, spec[0]) for name, spec in input_specs(info) if not is_widget(spec)]


def default_value(spec: list):
    opts = spec[1] or {}
    if "default" in opts:
        return opts["default"]
    options = choices(spec)
    if options is not None:
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec[0]]


# ------------------------------------------------------------------------------- builder
class UIGraph:
    """Build a UI-format workflow node by node, checked against `/object_info` as it goes."""

    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []
        self._next_link = 1

    def node(self, class_type: str, pos, size, /, title: str | None = None, node_id: int | None = None,
             **values) -> dict:
        """Add a node; `values`: widget values by input name (the rest get their defaults)."""
        if class_type not in self.info:
            raise KeyError(f"node type {class_type!r} is not in this host's /object_info")
        info = self.info[class_type]
        widgets = []
        for name, spec in widget_slots(info):
            if spec is None:
                widgets.append(values.pop(name, "fixed"))
            else:
                widgets.append(values.pop(name, default_value(spec)))
        if values:
            raise KeyError(f"{class_type} has no widget input(s) {sorted(values)}")
        node = {
            "id": node_id if node_id is not None else max((n["id"] for n in self.nodes), default=0) + 1,
            "type": class_type, "pos": [float(pos[0]), float(pos[1])], "size": [float(size[0]), float(size[1])],
            "flags": {}, "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in link_inputs(info)],
            "outputs": [{"name": (info.get("output_name") or info["output"])[i], "type": kind, "links": [],
                         "slot_index": i} for i, kind in enumerate(info.get("output", []))],
            "properties": {"Node name for S&R": class_type},
            "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def note(self, text: str, pos, size, title: str = "Read me first") -> dict:
        node = {"id": max((n["id"] for n in self.nodes), default=0) + 1, "type": "Note", "title": title,
                "pos": [float(pos[0]), float(pos[1])], "size": [float(size[0]), float(size[1])], "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text], "color": "#432", "bgcolor": "#653"}
        self.nodes.append(node)
        return node

    def link(self, src: dict, output, dst: dict, input_name: str) -> int:
        slot = output if isinstance(output, int) else [o["name"] for o in src["outputs"]].index(output)
        kind = src["outputs"][slot]["type"]
        target = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == input_name)
        expected = dst["inputs"][target]["type"]
        if expected not in (kind, "*") and kind != "*":
            raise TypeError(f"{src['type']}.{src['outputs'][slot]['name']} ({kind}) -> "
                            f"{dst['type']}.{input_name} ({expected})")
        link_id = self._next_link
        self._next_link += 1
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"][target]["link"] = link_id
        self.links.append([link_id, src["id"], slot, dst["id"], target, kind])
        return link_id

    def group(self, title: str, nodes: list[dict], color: str = "#3f789e", pad: float = 20) -> dict:
        x0 = min(n["pos"][0] for n in nodes) - pad
        y0 = min(n["pos"][1] for n in nodes) - TITLE_HEIGHT - pad - GROUP_TITLE
        x1 = max(n["pos"][0] + n["size"][0] for n in nodes) + pad
        y1 = max(n["pos"][1] + n["size"][1] for n in nodes) + pad
        group = {"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                 "color": color, "font_size": 24, "flags": {}}
        self.groups.append(group)
        return group

    def to_json(self) -> dict:
        return {"last_node_id": max((n["id"] for n in self.nodes), default=0),
                "last_link_id": self._next_link - 1, "nodes": sorted(self.nodes, key=lambda n: n["id"]),
                "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.6, "offset": [60.0, 60.0]}}, "version": 0.4}


# ------------------------------------------------------------------------- conversion
def widget_values_by_name(node: dict, info: dict) -> dict:
    values = node.get("widgets_values") or []
    if isinstance(values, dict):             # some front ends save {name: value}
        return dict(values)
    return {name: value for (name, spec), value in zip(widget_slots(info), values) if spec is not None}


def to_api(workflow: dict, object_info: dict) -> dict:
    """UI format -> API format ({id: {"class_type", "inputs"}}), as the front end queues it
    (virtual nodes, muted (mode 2) and bypassed (mode 4) nodes left out)."""
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        inputs = widget_values_by_name(node, info)
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, slot, *_ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        order = [name for name, _ in input_specs(info)]
        api[str(node["id"])] = {"class_type": node["type"],
                                "inputs": {k: inputs[k] for k in sorted(inputs, key=lambda k: order.index(k)
                                                                        if k in order else len(order))}}
    return api


# ------------------------------------------------------------------------------ checks
def _range_problem(name: str, spec: list, value) -> str | None:
    kind, opts = spec[0], spec[1] or {}
    options = choices(spec)
    if options is not None:
        if not isinstance(value, str):
            return f"{name}: {value!r} is not a choice"
        if name not in FILE_COMBOS and value not in options:
            return f"{name}: {value!r} not one of {options[:8]}"
        return None
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}: {value!r} is not an INT"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"{name}: {value!r} is not a FLOAT"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a BOOLEAN"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a STRING"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}: {value} < min {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}: {value} > max {opts['max']}"
    return None


def check(workflow: dict, object_info: dict) -> list[str]:
    """Problems a front end or /prompt would hit: unknown node types, links whose ends do not
    match (ids, slots, types), widget values of the wrong count, type, range or order."""
    problems = []
    if workflow.get("version") is None:
        problems.append("no 'version': the front end refuses the file")
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    if len(nodes) != len(workflow.get("nodes", [])):
        problems.append("duplicate node ids")
    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in VIRTUAL_NODES:
            continue
        if node["type"] not in object_info:
            problems.append(f"{where}: unknown node type")
            continue
        info = object_info[node["type"]]
        slots = widget_slots(info)
        values = node.get("widgets_values") or []
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widget values for {len(slots)} widgets "
                            f"{[name for name, _ in slots]}")
        for (name, spec), value in zip(slots, values):
            if spec is None:
                if value not in ("fixed", "increment", "decrement", "randomize"):
                    problems.append(f"{where}: {name} {value!r} is not a control value")
            else:
                problem = _range_problem(name, spec, value)
                if problem:
                    problems.append(f"{where}: {problem}")
        expected = link_inputs(info)
        names = [inp["name"] for inp in node.get("inputs", [])]
        for name, kind in expected:
            if name not in names and not (info.get("input", {}).get("optional") or {}).get(name):
                problems.append(f"{where}: required input {name} has no socket")
        for inp in node.get("inputs", []):
            spec = dict(input_specs(info)).get(inp["name"])
            if spec is None:
                problems.append(f"{where}: no input named {inp['name']}")
            elif inp.get("link") is None and inp["name"] in (info["input"].get("required") or {}) \
                    and not inp.get("widget"):
                problems.append(f"{where}: required input {inp['name']} is not connected")
        if len(node.get("outputs", [])) != len(info.get("output", [])):
            problems.append(f"{where}: {len(node.get('outputs', []))} outputs, host has {len(info.get('output', []))}")
    for link in workflow.get("links", []):
        link_id, src_id, src_slot, dst_id, dst_slot, kind = link
        src, dst = nodes.get(src_id), nodes.get(dst_id)
        if src is None or dst is None:
            problems.append(f"link {link_id}: missing node")
            continue
        if src["type"] in object_info:
            outputs = object_info[src["type"]].get("output", [])
            if src_slot >= len(outputs) or outputs[src_slot] != kind:
                problems.append(f"link {link_id}: {src['type']} output {src_slot} is not {kind}")
            if link_id not in (src["outputs"][src_slot].get("links") or []):
                problems.append(f"link {link_id}: not listed on {src['type']} output {src_slot}")
        if dst_slot >= len(dst.get("inputs", [])) or dst["inputs"][dst_slot].get("link") != link_id:
            problems.append(f"link {link_id}: not the link of {dst['type']} input {dst_slot}")
            continue
        name = dst["inputs"][dst_slot]["name"]
        if dst["type"] in object_info:
            spec = dict(input_specs(object_info[dst["type"]])).get(name)
            if spec is not None and spec[0] not in (kind, "*") and kind != "*":
                problems.append(f"link {link_id}: {kind} into {dst['type']}.{name} ({spec[0]})")
    return problems


def overlaps(workflow: dict, margin: float = 0) -> list[tuple[int, int]]:
    """Pairs of node ids whose boxes (title bar included) overlap."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[1] < b[3] + margin and b[1] < a[3] + margin and a[2] < b[4] + margin and b[2] < a[4] + margin:
                out.append((a[0], b[0]))
    return out


def _boxes_overlap(a, b, margin=0.0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def layout_problems(workflow: dict, char_width: float = 13.5) -> list[str]:
    """Readability: nodes do not overlap; groups do not overlap and their titles (font 24,
    ~13 px a character) fit; every node but the notes sits inside exactly one group."""
    problems = [f"nodes {a} and {b} overlap" for a, b in overlaps(workflow)]
    groups = [(g["title"], (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                            g["bounding"][1] + g["bounding"][3])) for g in workflow.get("groups", [])]
    for i, (title, box) in enumerate(groups):
        if len(title) * char_width > box[2] - box[0] - 10:
            problems.append(f"group title {title!r} is wider than its group")
        for other, obox in groups[i + 1:]:
            if _boxes_overlap(box, obox):
                problems.append(f"groups {title!r} and {other!r} overlap")
    for n in workflow["nodes"]:
        if n["type"] in ("Note", "MarkdownNote"):
            continue
        nbox = (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        inside = [t for t, b in groups if b[0] <= nbox[0] and b[1] <= nbox[1] and nbox[2] <= b[2] and nbox[3] <= b[3]]
        if len(inside) != 1:
            problems.append(f"node {n['id']} ({n['type']}) is in {len(inside)} groups")
    return problems


def load(path) -> dict:
    with open(path) as f:
        return json.load(f)
