# icf-utils: the visit pipeline as file targets in the store.
#
#   make STUDY=x VISIT=y INPUT=dir catalog    all four steps for one visit
#   make STUDY=x catalog                      every visit of study x that has an archive
#   make help                                 all targets
#
# Variables (set on the command line, e.g. make STORE=/data/store ...):
#   STORE      root directory of the store            (default: the current directory)
#   STUDY      study ID                               (required for store targets)
#   VISIT      visit ID; empty: every visit of STUDY with an archive in the store
#   INPUT      the visit's DICOM directory            (needed only to build an archive)
#   STORE_URL  URL at which users reach the store's root, for clone URLs
#              (default: the file:// URL of STORE)
#   VENV       virtual environment with the pinned requirements
#              (default: .venv beside this Makefile; made on first use)
#   PYTHON     the Python that runs the tools         (default: $(VENV)/bin/python;
#              set PYTHON=python3 VENV_READY= where the requirements are installed,
#              as in the container)
#
# Every store target is a real file; make's timestamps drive reruns:
#   archive  <visit>_dicom.tar                    built once from INPUT, never rebuilt
#   metadata <visit>_metadata_{tarball,dicoms}.json   <- archive
#   dataset  <visit>_XDLRA--{refs,repo-export}    <- metadata
#   catalog  catalog/visits/<visit>.json          <- metadata + dataset

ICF := $(patsubst %/,%,$(dir $(realpath $(lastword $(MAKEFILE_LIST)))))
STORE ?= $(CURDIR)
STUDY ?=
VISIT ?=
INPUT ?=
STORE_URL ?=
VENV ?= $(ICF)/.venv
PYTHON ?= $(VENV)/bin/python
VENV_READY ?= $(VENV)/.requirements-installed

STUDY_DIR := $(STORE)/$(STUDY)
VISITS := $(if $(strip $(VISIT)),$(VISIT),$(patsubst $(STUDY_DIR)/%_dicom.tar,%,$(wildcard $(STUDY_DIR)/*_dicom.tar)))
# a venv's bin first on PATH: git-annex and datalad-next's helpers live there
WITH_PATH = $(if $(findstring /,$(PYTHON)),PATH="$(abspath $(dir $(PYTHON))):$$PATH" )
RUN = $(WITH_PATH)$(PYTHON) $(ICF)/bin/
IDS = -o "$(STORE)" --id "$(STUDY)" "$*"
STORE_URL_OPTION = $(if $(STORE_URL),--store-url "$(STORE_URL)")

.DELETE_ON_ERROR:
.SUFFIXES:
.PHONY: help archive metadata dataset catalog verify demo test bench docs venv

STORE_GOALS := archive metadata dataset catalog verify
ifneq ($(filter $(STORE_GOALS),$(MAKECMDGOALS)),)
  ifeq ($(strip $(STUDY)),)
    $(error set STUDY=<study ID> (and VISIT=<visit ID>, or none for every visit))
  endif
  ifeq ($(strip $(VISITS)),)
    $(error no visit: set VISIT=<visit ID>, or build an archive in $(STUDY_DIR) first)
  endif
endif

help:
	@sed -n 's/^## //p' $(lastword $(MAKEFILE_LIST))

## Targets (STUDY required; VISIT, or every visit of STUDY that has an archive):
##   archive    step 1 from INPUT: <store>/<study>/<visit>_dicom.tar and .md5sum
archive: $(VISITS:%=$(STUDY_DIR)/%_dicom.tar)
##   metadata   step 2: <visit>_metadata_tarball.json and <visit>_metadata_dicoms.json
metadata: $(foreach f,tarball dicoms,$(VISITS:%=$(STUDY_DIR)/%_metadata_$(f).json))
##   dataset    step 3: <visit>_XDLRA--refs and <visit>_XDLRA--repo-export
dataset: $(foreach f,refs repo-export,$(VISITS:%=$(STUDY_DIR)/%_XDLRA--$(f)))
##   catalog    step 4: the visit in <study>/catalog/ (runs every step still due)
catalog: $(VISITS:%=$(STUDY_DIR)/catalog/visits/%.json)
##   verify     re-hash archive, members and deposit keys against the metadata
verify: $(VISITS:%=verify-%)
verify-%: | $(VENV_READY)
	$(RUN)verify_visit $(IDS)
## Other targets:
##   demo       the whole pipeline on the bundled sample visit, into ./demo-store
##   test       the test suite (pytest)
##   bench      speed figures of every step on a replicated 5,460-file visit, with baselines
##   docs       the documentation (Sphinx, warnings as errors) in docs/_build/html
##   venv       create or refresh the virtual environment from requirements.txt
##   help       this list

$(STUDY_DIR)/%_dicom.tar: | $(VENV_READY)
	@test -n "$(INPUT)" || { echo "make: set INPUT=<DICOM directory> to build $@" >&2; exit 2; }
	$(RUN)make_studyvisit_archive $(IDS) "$(INPUT)"

$(STUDY_DIR)/%_metadata_tarball.json $(STUDY_DIR)/%_metadata_dicoms.json: \
    $(STUDY_DIR)/%_dicom.tar | $(VENV_READY)
	$(RUN)deposit_visit_metadata --force $(IDS)

$(STUDY_DIR)/%_XDLRA--refs $(STUDY_DIR)/%_XDLRA--repo-export: \
    $(STUDY_DIR)/%_metadata_tarball.json $(STUDY_DIR)/%_metadata_dicoms.json | $(VENV_READY)
	$(RUN)deposit_visit_dataset --force $(IDS) $(STORE_URL_OPTION)

$(STUDY_DIR)/catalog/visits/%.json: $(STUDY_DIR)/%_metadata_tarball.json \
    $(STUDY_DIR)/%_metadata_dicoms.json $(STUDY_DIR)/%_XDLRA--refs | $(VENV_READY)
	$(RUN)catalogify_studyvisit_from_meta $(IDS) $(STORE_URL_OPTION)

venv: $(VENV_READY)
$(VENV)/.requirements-installed: $(ICF)/requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

DEMO_STORE := $(CURDIR)/demo-store
demo: | $(VENV_READY)
	$(MAKE) --no-print-directory -f $(ICF)/Makefile STORE=$(DEMO_STORE) STUDY=demo VISIT=visit1 \
	  INPUT=$(ICF)/tests/data/sample-visit catalog
	@echo
	@echo "Made in $(DEMO_STORE)/demo:"
	@ls -l $(DEMO_STORE)/demo
	@echo
	@echo "View the catalog:  python3 -m http.server -d $(DEMO_STORE)/demo/catalog  (then open http://localhost:8000)"
	@echo "Clone the visit (from outside any git repository):"
	@echo "  cd /tmp && $(if $(findstring /,$(PYTHON)),PATH=$(abspath $(dir $(PYTHON))):\$$PATH )datalad clone 'datalad-annex::?type=external&externaltype=uncurl&url=file://$(DEMO_STORE)/demo/visit1_{{annex_key}}&encryption=none' visit1"

test: | $(VENV_READY)
	cd $(ICF) && $(WITH_PATH)$(PYTHON) -m pytest -ra tests

bench: | $(VENV_READY)
	cd $(ICF) && $(WITH_PATH)$(PYTHON) tests/bench.py

docs: | $(VENV_READY)
	$(WITH_PATH)$(PYTHON) -m sphinx -W --keep-going -q -b html $(ICF)/docs $(ICF)/docs/_build/html
	@echo "docs: $(ICF)/docs/_build/html/index.html"
