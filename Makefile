# ComfyUI-ReVersion. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --constraint constraints.txt
# Test hosts: the two bundled ComfyUI copies, or your own checkout via COMFYUI_PATH.
HOSTS  := $(or $(COMFYUI_PATH),.hosts/comfyui-new .hosts/comfyui-old)

.PHONY: setup test test-new test-old demo toy-model toy-gate bench clean

setup: $(VENV)/.ready .hosts/.ready

$(VENV)/.ready: requirements.txt requirements-host.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -r requirements-host.txt -r requirements.txt -r requirements-dev.txt
	touch $@

.hosts/.ready: scripts/install_hosts.py $(VENV)/.ready
	$(PY) scripts/install_hosts.py
	touch $@

# The whole suite once per host: ComfyUI 0.3.75, then ComfyUI 2024-03 (or COMFYUI_PATH).
test: setup
	@set -e; start=$$(date +%s); \
	for host in $(HOSTS); do \
	  echo "=== tests on $$host ==="; \
	  COMFYUI_PATH=$$host $(PY) -m pytest -q tests; \
	done; \
	echo "=== suite wall time: $$(( $$(date +%s) - start )) s on both hosts ==="

test-new: setup
	COMFYUI_PATH=.hosts/comfyui-new $(PY) -m pytest -q tests

test-old: setup
	COMFYUI_PATH=.hosts/comfyui-old $(PY) -m pytest -q tests

# Headless ComfyUI runs workflows/toyworld_demo.json; writes demo_output/grid.png + report.json
demo: setup
	$(PY) scripts/demo.py

# Re-train the committed toy-world model from scratch (resumable; see BENCHMARKS.md for its time)
toy-model: setup
	$(PY) scripts/train_toy_model.py

# The toy model's quality gate on every held-out prompt, 2 seeds each; writes bench/results/toy_gate.json
toy-gate: setup
	$(PY) scripts/eval_toy_model.py --per-prompt 2 --json bench/results/toy_gate.json

bench: setup
	$(PY) bench/bench_train_step.py

clean:
	rm -rf $(VENV) .hosts demo_output
