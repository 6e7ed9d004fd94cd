# Two entry points: `make course` (set up, fetch the starter data, run every notebook into
# build/executed/, print the gap summary) and `make test` (set up, run the test suite).
# MIRROR=DIR_OR_URL fetches data from a mirror instead of the internet.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MIRROR ?= $(I0T_DATA_MIRROR)
MIRROR_FLAG := $(if $(MIRROR),--mirror $(MIRROR),)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data course test notebooks clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/activate
	# Install torch first: the pinned versions come from the local wheel cache on the
	# course machines; elsewhere set TORCH_PINS= to keep whatever torch pip picks.
	$(if $(TORCH_PINS),$(BIN)/pip install --quiet $(TORCH_PINS))
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null

data: setup
	$(BIN)/python data_download.py get starter liang2022-all flickr8k-text $(MIRROR_FLAG)

notebooks: data
	export I0T_DATA_MIRROR=$(MIRROR); for notebook in notebooks/[0-9]*.ipynb; do \
		echo "running $$notebook"; \
		$(BIN)/jupyter nbconvert --to notebook --execute --output-dir build/executed \
			--ExecutePreprocessor.timeout=1200 "$$notebook" || exit 1; \
	done

course: notebooks
	$(BIN)/python -m i0t_helpers gap --pack starter --post

test: data
	I0T_DATA_MIRROR=$(MIRROR) $(BIN)/python -m pytest -p no:cacheprovider tests --nbval notebooks --nbval-sanitize-with notebooks/nbval_sanitize.cfg

clean:
	rm -rf $(VENV) data
