# Both targets build .venv on first use. torch is pinned in the same pip call as everything else:
# on a machine with a local CPU wheel pip takes it; elsewhere PyPI's default (CUDA on Linux) build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

.PHONY: run test venv bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) -e '.[test]'
	# Only for its CLIP BPE file (the offline test model's tokenizer); its torchvision deps are not needed.
	$(PY) -m pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/easel run

test: $(STAMP)
	$(PY) -m pytest -q
	# The Discord end-to-end suite once more, its jobs run by two `easel worker` processes through Redis.
	EASEL_TEST_WORKERS=1 $(PY) -m pytest -q tests/test_discord_e2e.py

bench: $(STAMP)
	$(PY) bench/engine_overhead.py
	$(PY) bench/queue.py
	$(PY) bench/prompt_encoding.py
	$(PY) bench/discord_ack.py
	$(PY) bench/discord_ack.py --burst
	$(PY) bench/lora.py
	$(PY) bench/hires.py
	$(PY) bench/workers.py
	$(PY) bench/community.py
	$(PY) bench/scheduler_scale.py
	$(PY) bench/cli_startup.py
	$(PY) bench/gpu.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache
