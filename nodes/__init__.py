"""Thin V1 node classes: unpack inputs, call `reversion` (the method) and `reversion_comfy`
(the host side), pack outputs. V1 classes load in every ComfyUI version."""
from . import exemplar_nodes, relation_nodes, toyworld_nodes, train_nodes

_MODULES = (exemplar_nodes, train_nodes, relation_nodes, toyworld_nodes)

NODE_CLASS_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
