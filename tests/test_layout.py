"""The house rules (docs/design.md, "The house"), read from the source files: the product is
imported package-relatively and never imports the lab or the tools; nothing outside the
product imports the pack's packages by their bare names (a second copy, and `nodes` is
ComfyUI's); the method never imports ComfyUI; no product file grows past ~400 lines, and no
other Python file past 450."""
from __future__ import annotations

import re

from devtools.pack import REPO

PRODUCT = ["__init__.py", "nodes", "reversion", "reversion_comfy", "toyworld"]
# the pack's packages that outside the product may only be reached as comfyui_reversion.<name>
# (`nodes` is not among them: outside the product, `import nodes` is ComfyUI's module)
PACK_PACKAGES = ("reversion", "reversion_comfy", "toyworld")
OUTSIDE = ["devtools", "lab", "bench", "tests"]
HOST_MODULES = ("comfy", "folder_paths", "nodes", "comfy_extras", "server", "execution")


def python_files(*roots):
    for root in roots:
        path = REPO / root
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def imports(path):
    """(line number, module) of every import statement's absolute module."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = re.match(r"\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", line)
        if m:
            yield number, m.group(1) or m.group(2)


def test_the_product_imports_itself_package_relatively_and_never_the_lab_or_the_tools():
    problems = []
    for path in python_files(*PRODUCT):
        for number, module in imports(path):
            top = module.split(".")[0]
            if top in (*PACK_PACKAGES, "devtools", "lab", "bench", "tests", "comfyui_reversion"):
                problems.append(f"{path.relative_to(REPO)}:{number}: import {module}")
        assert "sys.path" not in path.read_text(), path
    assert problems == []


def test_the_method_never_imports_comfyui():
    for path in python_files("reversion"):
        for number, module in imports(path):
            assert module.split(".")[0] not in HOST_MODULES, f"{path.relative_to(REPO)}:{number}: {module}"


def test_outside_the_product_the_pack_is_only_comfyui_reversion():
    problems = []
    for path in python_files(*OUTSIDE):
        for number, module in imports(path):
            if module.split(".")[0] in PACK_PACKAGES:
                problems.append(f"{path.relative_to(REPO)}:{number}: import {module}")
    assert problems == []


def test_only_the_tools_touch_sys_path():
    touching = [str(p.relative_to(REPO)) for p in python_files(*PRODUCT, *OUTSIDE)
                if re.search(r"sys\.path\.(insert|append)|sys\.path\[", p.read_text()) and p.name != "test_layout.py"]
    assert touching == ["devtools/host.py"]


def test_no_product_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in python_files(*PRODUCT)
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_tool_lab_bench_or_test_file_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in python_files(*OUTSIDE)
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
