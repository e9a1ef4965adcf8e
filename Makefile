# icf-utils: the visit pipeline as file targets in the store.
#
#   make STUDY=x VISIT=y INPUT=dir archive    step 1: <store>/x/y_dicom.tar (+ .md5sum)
#   make STUDY=x VISIT=y metadata             step 2: the two JSON files
#   make help                                 everything else
#
# Variables (set on the command line, e.g. make STORE=/data/store ...):
#   STORE      root directory of the store            (default: the current directory)
#   STUDY      study ID                               (required for store targets)
#   VISIT      visit ID                               (required for store targets)
#   INPUT      the visit's DICOM directory            (required to build an archive)
#   VENV       virtual environment with the pinned requirements
#              (default: .venv beside this Makefile; made on first use)
#   PYTHON     the Python that runs the tools         (default: $(VENV)/bin/python)
#
# Make's timestamps drive reruns: a target is rebuilt when a prerequisite is
# newer. An archive is never rebuilt once it exists (it is the record).

ICF := $(patsubst %/,%,$(dir $(realpath $(lastword $(MAKEFILE_LIST)))))
STORE ?= $(CURDIR)
STUDY ?=
VISIT ?=
INPUT ?=
VENV ?= $(ICF)/.venv
PYTHON ?= $(VENV)/bin/python

STUDY_DIR := $(STORE)/$(STUDY)
VENV_READY := $(VENV)/.requirements-installed
# the venv's bin first: git-annex and datalad-next's helpers live there
RUN = PATH="$(dir $(PYTHON)):$$PATH" $(PYTHON) $(ICF)/bin/

.DELETE_ON_ERROR:
.SUFFIXES:
.PHONY: help archive metadata demo test bench venv

STORE_GOALS := archive metadata
ifneq ($(filter $(STORE_GOALS),$(MAKECMDGOALS)),)
  ifeq ($(strip $(STUDY)),)
    $(error set STUDY=<study ID> and VISIT=<visit ID>)
  endif
  ifeq ($(strip $(VISIT)),)
    $(error set STUDY=<study ID> and VISIT=<visit ID>)
  endif
endif

help:
	@sed -n 's/^## //p' $(lastword $(MAKEFILE_LIST))

## Targets:
##   archive    step 1 for STUDY/VISIT from INPUT: <store>/<study>/<visit>_dicom.tar
archive: $(STUDY_DIR)/$(VISIT)_dicom.tar
##   metadata   step 2: <visit>_metadata_tarball.json, <visit>_metadata_dicoms.json
metadata: $(STUDY_DIR)/$(VISIT)_metadata_dicoms.json
##   demo       the pipeline on the bundled sample visit, into ./demo-store
##   test       the test suite (pytest)
##   bench      speed figures on a replicated 5,000-file visit, beside GNU tar
##   venv       create or refresh the virtual environment from requirements.txt
##   help       this list

$(STUDY_DIR)/%_dicom.tar: | $(VENV_READY)
	@test -n "$(INPUT)" || { echo "make: set INPUT=<dicom dir> to build $@" >&2; exit 2; }
	$(RUN)make_studyvisit_archive -o "$(STORE)" --id "$(STUDY)" "$*" "$(INPUT)"

$(STUDY_DIR)/%_metadata_tarball.json $(STUDY_DIR)/%_metadata_dicoms.json: $(STUDY_DIR)/%_dicom.tar | $(VENV_READY)
	$(RUN)deposit_visit_metadata --force -o "$(STORE)" --id "$(STUDY)" "$*"

venv: $(VENV_READY)
$(VENV_READY): $(ICF)/requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

DEMO_STORE := $(CURDIR)/demo-store
demo: | $(VENV_READY)
	$(MAKE) --no-print-directory -f $(ICF)/Makefile STORE=$(DEMO_STORE) STUDY=demo VISIT=visit1 \
	  INPUT=$(ICF)/tests/data/sample-visit metadata
	@echo; echo "Made in $(DEMO_STORE)/demo:"; ls -l $(DEMO_STORE)/demo

test: | $(VENV_READY)
	cd $(ICF) && PATH="$(dir $(PYTHON)):$$PATH" $(PYTHON) -m pytest -ra tests

bench: | $(VENV_READY)
	cd $(ICF) && PATH="$(dir $(PYTHON)):$$PATH" $(PYTHON) tests/bench.py
