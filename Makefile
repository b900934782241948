# ComfyUI-ReVersion. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --constraint constraints.txt
# Test hosts: the two bundled ComfyUI copies, or your own checkout via COMFYUI_PATH.
HOSTS  := $(or $(COMFYUI_PATH),.hosts/comfyui-new .hosts/comfyui-old)

.PHONY: setup test test-new test-old test-browser workflows demo toy-model toy-model-tint toy-gate bench bench-scale bench-quality gpu-carry clean

setup: $(VENV)/.ready .hosts/.ready

$(VENV)/.ready: requirements.txt requirements-host.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -r requirements-host.txt -r requirements.txt -r requirements-dev.txt
	touch $@

.hosts/.ready: devtools/install_hosts.py $(VENV)/.ready
	$(PY) -m devtools.install_hosts
	touch $@

# The whole suite once per host: ComfyUI 0.3.75, then ComfyUI 2024-03 (or COMFYUI_PATH).
# Tools, the lab and the benchmarks run as modules from this folder (python -m devtools.demo).
test: setup
	@set -e; start=$$(date +%s); \
	for host in $(HOSTS); do \
	  echo "=== tests on $$host ==="; \
	  COMFYUI_PATH=$$host $(PY) -m pytest -q tests; \
	done; \
	echo "=== suite wall time: $$(( $$(date +%s) - start )) s on both hosts ==="
	$(MAKE) --no-print-directory test-browser

test-new: setup
	COMFYUI_PATH=.hosts/comfyui-new $(PY) -m pytest -q tests

test-old: setup
	COMFYUI_PATH=.hosts/comfyui-old $(PY) -m pytest -q tests

# The Templates workflows in ComfyUI's own front end, in Debian's headless Chromium
# (installed here if missing), on each front end the host can serve (0.3.75: 1.32.9 and 1.58.1);
# screenshots to runs/screenshots/. Once per host, like `make test`.
test-browser: setup
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)
	@set -e; for host in $(HOSTS); do \
	  echo "=== browser tests on $$host ==="; \
	  COMFYUI_PATH=$$host $(PY) -m pytest -q tests/browser; \
	done

# Regenerate workflows/*.json + thumbnails and workflows_api/ from a headless host's /object_info
workflows: setup
	$(PY) -m devtools.make_workflows

# Headless ComfyUI runs workflows_api/toyworld_demo.json; writes demo_output/grid.png + report.json
demo: setup
	$(PY) -m devtools.demo

# Re-train the committed toy-world model from scratch (resumable; ~1.4 h on 2 cores, lab/toy_model/NOTES.md):
# 6000 steps on the default mix, then 2500 steps that show "inside" 4x as often and weigh its
# inner object's pixels 10x (the inner shape word binds only then)
toy-model: setup
	$(PY) -m lab.toy_model.train --run-dir runs/toy_model --out runs/toy_model/base.safetensors
	$(PY) -m lab.toy_model.train --init-weights runs/toy_model/base.safetensors --steps 2500 \
		--relation-weight inside=6 --inner-weight 10 --run-dir runs/toy_model_inside --out toyworld/toyworld.safetensors

# Experiment: a tint variant of the toy model for the tinted-exemplar confound (not committed;
# ~15 min on 2 cores from the committed model): skies of grey, pink or mint, the tint named in
# half the captions. It does not follow its tint word yet (lab/tint/NOTES.md).
toy-model-tint: setup
	$(PY) -m lab.toy_model.train --init-weights toyworld/toyworld.safetensors --steps 1500 --backgrounds \
		--inner-weight 10 --run-dir runs/toy_model_tint --out runs/toy_model_tint/toyworld_tint.safetensors

# The toy model's quality gate on every held-out prompt, 2 seeds each; writes lab/toy_model/results/toy_gate.json
toy-gate: setup
	$(PY) -m lab.toy_model.gate --per-prompt 2 --json lab/toy_model/results/toy_gate.json

# ReVersion's ablations on the toy world (six relations x diverse and confounded exemplars x
# 3 seeds x 4 variants, 48 judged images each), then the steps curve and the caption-positives
# experiment, all into lab/quality/results/quality.json(l); then the README picture and the tables
# docs/results.md quotes. (The steering-weight sweep, not yet run on the committed model, is in
# lab/quality/NOTES.md.)
# Hours on 2 CPU cores; resumable (rerun to continue).
BENCH_QUALITY := $(PY) -m lab.quality.bench_quality --threads 2
bench-quality: setup
	$(BENCH_QUALITY) --steering-weights
	$(BENCH_QUALITY) --relations "on top of" --seeds 0 --exemplar-sets diverse --variants full --steering-weights --lr-curve 2.5e-4 6.25e-4
	$(BENCH_QUALITY) --exemplar-sets diverse --variants full --steering-weights --caption-positives
	$(PY) -m lab.quality.plot
	$(PY) -m lab.quality.tables

bench: setup
	$(PY) -m bench.bench_train_step

# Full-size SD1.5 (random weights) per memory mode vs the paper's procedure, CPU; writes
# bench/results/scale.json (~15 min on 1 core). GPU part: $(PY) -m bench.bench_scale gpu (bench/gpu_session.sh)
bench-scale: setup
	$(PY) -m bench.bench_scale cpu
	$(PY) -m bench.bench_scale estimate

# What a device run of bench/gpu_session.sh carries: wheels of the host dependencies the device
# image lacks (.whl), and ComfyUI 0.3.75 without the tokenizer data of models the benchmarks never
# build (.hosts/comfyui-gpu, 7 MB instead of 25: the repository and the carry must fit 64 MiB)
gpu-carry: setup
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform any -d .whl torchsde==0.2.6 trampoline==0.1.2
	rm -rf .hosts/comfyui-gpu && cp -r .hosts/comfyui-new .hosts/comfyui-gpu
	rm -rf .hosts/comfyui-gpu/comfy/text_encoders/*_tokenizer .hosts/comfyui-gpu/tests .hosts/comfyui-gpu/tests-unit

clean:
	rm -rf $(VENV) .hosts demo_output
