"""Run a real ComfyUI headless with this pack installed, and talk to it over HTTP.

Used by `make demo` and the server tests. Everything the server writes (outputs, temp,
embeddings, user data) goes under one work folder; the ComfyUI checkout is not touched.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .pack import REPO

PACK_NAME = "ComfyUI-ReVersion"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`with ComfyServer(comfy_path, workdir) as server: server.run(workflow)`"""

    def __init__(self, comfy_path: Path, workdir: Path, python: str = sys.executable, cpu: bool = True,
                 front_end_root: Path | None = None):
        """`front_end_root`: serve this built front end (newer hosts; e.g. the static folder of
        the comfyui-frontend-package wheel) instead of none; older hosts serve their own web/."""
        self.comfy_path, self.workdir, self.python, self.cpu = Path(comfy_path), Path(workdir), python, cpu
        self.front_end_root = front_end_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.process = None
        for sub in ("output", "temp", "input", "embeddings", "custom_nodes", "user", "frontend"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.output, self.embeddings, self.log_path = self.workdir / "output", self.workdir / "embeddings", self.workdir / "server.log"

    # -------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        pack = self.workdir / "custom_nodes" / PACK_NAME
        if not pack.exists():
            pack.symlink_to(REPO, target_is_directory=True)
        config = self.workdir / "extra_model_paths.yaml"
        config.write_text(f"reversion_test:\n  base_path: {self.workdir}\n  embeddings: embeddings\n"
                          f"  custom_nodes: custom_nodes\n")
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--output-directory", str(self.output), "--temp-directory", str(self.workdir / "temp"),
               "--input-directory", str(self.workdir / "input"), "--extra-model-paths-config", str(config)]
        if self.cpu:
            cmd.append("--cpu")
        args_source = (self.comfy_path / "comfy" / "cli_args.py").read_text()
        if "--front-end-root" in args_source:     # newer hosts: no web front-end package needed headless
            cmd += ["--front-end-root", str(self.front_end_root or self.workdir / "frontend")]
        if "--user-directory" in args_source:
            cmd += ["--user-directory", str(self.workdir / "user")]
        return cmd

    def start(self, timeout: float = 120) -> "ComfyServer":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "REVERSION_EMBEDDINGS_DIR": str(self.embeddings)}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), cwd=self.comfy_path, stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up:\n{self.log_text()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------- HTTP
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, data: dict | None = None):
        req = urllib.request.Request(self.url + path, data=json.dumps(data or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')[:3000]}") from e

    def queue(self, workflow: dict) -> str:
        """POST an API-format workflow; returns the prompt id."""
        return self.post("/prompt", {"prompt": workflow, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """History entry of a finished prompt (success, error or interrupted)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_text()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s")

    def run(self, workflow: dict, timeout: float = 600) -> dict:
        entry = self.wait(self.queue(workflow), timeout)
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(f"workflow failed: {json.dumps(entry['status'], indent=1)[:4000]}")
        return entry

    def running(self) -> bool:
        return bool(self.get("/queue")["queue_running"])

    def image_paths(self, entry: dict) -> dict[str, list[Path]]:
        """node id -> files of the images that node saved."""
        out = {}
        for node_id, result in entry.get("outputs", {}).items():
            files = [self.output / img.get("subfolder", "") / img["filename"]
                     for img in result.get("images", []) if img.get("type") == "output"]
            if files:
                out[node_id] = files
        return out
