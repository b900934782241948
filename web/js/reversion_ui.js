// ComfyUI-ReVersion front-end helpers (the 2024 front end, 1.32.x and 1.58.x, both modes).
//  - Text a node returns in `ui.text` (Save Relation's "saved ...", Train Relation's summary) is
//    shown on the node in full: a wrapped, read-only, non-serialised multiline text widget
//    (a one-line text widget cut it off, and in Nodes 2.0 it was an editable box).
//  - FLOAT widgets of this pack show every decimal their step allows. The "Nodes 2.0" number
//    input (PrimeVue InputNumber) otherwise shows at most 3 decimals and writes the rounded
//    text back on blur (a learning rate of 0.00025 became 0, then the minimum).
//  - Nodes start wide enough for their titles.
import { app } from "../../../scripts/app.js";   // served at /extensions/<pack>/js/
import { ComfyWidgets } from "../../../scripts/widgets.js";

const STATUS = "reversion_status";
const MIN_WIDTH = 340;
const LINE_PX = 16;

function statusWidget(node) {
  let widget = node.widgets?.find((w) => w.name === STATUS);
  if (widget) return widget;
  widget = ComfyWidgets.STRING(node, STATUS, ["STRING", { multiline: true }], app).widget;
  widget.serialize = false;            // never part of widgets_values or the prompt
  widget.label = "status";
  widget.options = { ...(widget.options ?? {}), read_only: true, serialize: false };   // Nodes 2.0: read-only
  const el = widget.inputEl ?? widget.element;                                           // classic: the textarea
  if (el) {
    el.readOnly = true;
    el.style.opacity = "0.85";
  }
  return widget;
}

function showText(node, text) {
  const widget = statusWidget(node);
  widget.value = text;
  const el = widget.inputEl ?? widget.element;
  if (el) {
    el.value = text;
    // tall enough for the whole text at the node's width (about 7 px per character)
    const width = Math.max(node.size?.[0] ?? MIN_WIDTH, MIN_WIDTH) - 30;
    const lines = text.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil((line.length * 7) / width)), 0);
    const height = lines * LINE_PX + 12;
    widget.options.getMinHeight = () => height;
    widget.options.rows = lines;                 // Nodes 2.0: the textarea's own height
    widget.computeSize = (w) => [w, height];
    el.style.minHeight = `${height}px`;
  }
  // grow to fit the new widget, never shrink (a preview image may use the space below)
  const needed = node.computeSize?.() ?? node.size;
  node.setSize?.([Math.max(node.size[0], MIN_WIDTH, needed[0]), Math.max(node.size[1], needed[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "ReVersion.ui",
  setup() {
    window.ReVersionUI = { loaded: true };   // lets the browser test wait for this extension
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("ReVersion")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text != null) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
      return r;
    };
  },
  nodeCreated(node) {
    const type = node.comfyClass ?? node.type ?? "";
    if (!type.startsWith("ReVersion")) return;
    for (const w of node.widgets ?? []) {
      const p = w.options?.precision;
      if (w.type === "number" && typeof p === "number" && p > 0) {
        w.options.minFractionDigits = 0;
        w.options.maxFractionDigits = Math.min(p, 20);
      }
    }
    if (node.size && node.size[0] < MIN_WIDTH) node.size[0] = MIN_WIDTH;
  },
});
