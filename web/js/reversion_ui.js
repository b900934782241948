// ComfyUI-ReVersion front-end helpers (work in the 2024 front end and in 1.32.x, both modes).
//  - Text a node returns in `ui.text` (Save Relation's "saved ...", Train Relation's summary) is
//    shown on the node in a read-only, non-serialised widget.
//  - FLOAT widgets of this pack show every decimal their step allows. The "Nodes 2.0" number
//    input (PrimeVue InputNumber) otherwise shows at most 3 decimals and writes the rounded
//    text back on blur (a learning rate of 0.00025 became 0, then the minimum).
//  - Nodes start wide enough for their titles.
import { app } from "../../../scripts/app.js";   // served at /extensions/<pack>/js/

const STATUS = "reversion_status";
const MIN_WIDTH = 340;

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === STATUS);
  if (!widget) {
    widget = node.addWidget("text", STATUS, "", () => {}, { serialize: false });
    widget.serialize = false;          // never part of widgets_values or the prompt
    widget.label = "status";
  }
  widget.value = text;
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
