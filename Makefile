PYTHON ?= python

.PHONY: install test test-loaded test-slow test-cuda test-lerobot gpu-checks

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[ros,test]'

test:
	$(PYTHON) -m pytest

# the default suite next to one busy loop per core (a shared, loaded CI runner)
test-loaded:
	.ci/under-load $(PYTHON) -m pytest

test-slow:
	$(PYTHON) -m pytest -m slow

# on a machine with a CUDA GPU (skipped elsewhere)
test-cuda:
	$(PYTHON) -m pytest test/test_cuda.py -m cuda

# every GPU figure of issue 15 in one run (tools/gpu-checks; results under $OUT or ./gpu-checks)
gpu-checks:
	PYTHON=$(PYTHON) tools/gpu-checks

# our datasets checked by LeRobot 0.4.4 itself, in an environment of its own (built once, see tools/lerobot-venv)
LEROBOT_VENV ?= .lerobot-venv
SHARED ?= ../shared
test-lerobot:
	tools/lerobot-venv $(LEROBOT_VENV) $(SHARED)
	ROBOVLM_LEROBOT_PYTHON=$(abspath $(LEROBOT_VENV))/run-python $(PYTHON) -m pytest -m lerobot
