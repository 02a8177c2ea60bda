PYTHON ?= python

.PHONY: install test test-slow test-cuda

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[ros,test]'

test:
	$(PYTHON) -m pytest

test-slow:
	$(PYTHON) -m pytest -m slow

# on a machine with a CUDA GPU (skipped elsewhere)
test-cuda:
	$(PYTHON) -m pytest -m cuda
