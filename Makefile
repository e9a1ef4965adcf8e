# icf-utils: the visit pipeline as file targets in the store.
#
#   make STUDY=x VISIT=y INPUT=dir catalog    all four steps for one visit
#   make STUDY=x catalog                      every visit of study x that has an archive
#   make help                                 all targets
#
# For development (on this checkout; none of them needs STUDY):
#   make test         ruff, mypy, then the whole test suite (CI runs it, then the two below)
#   make test-fast    the test suite without the tests marked slow (about a minute)
#   make lint         ruff and mypy only (their settings: pyproject.toml)
#   make test-container  build the image from singularity/icf.def as apptainer does (debootstrap,
#                     cached in /var/cache/icf-utils) and run two visits through it, checked
#                     against a host run (needs root; CI runs it after make test)
#   make test-hpc     a one-node SLURM started here runs singularity/slurm-visit-array.sh through
#                     that image (needs root; installs slurm-wlm and munge if missing)
#
# Variables (set on the command line, e.g. make STORE=/data/store ...):
#   STORE      root directory of the store            (default: the current directory)
#   STUDY      study ID                               (required for store targets)
#   VISIT      visit ID; empty: every visit of STUDY with an archive in the store
#              (several IDs separated by spaces; exactly one with INPUT)
#   INPUT      the visit's DICOM directory            (needed only to build an archive)
#   STORE_URL  URL at which users reach the store's root, for clone URLs
#              (default: the file:// URL of STORE)
#   VENV       virtual environment with the pinned requirements: the tools'
#              (requirements.txt) and those of tests, docs and lint
#              (requirements-dev.txt) (default: .venv beside this Makefile;
#              made on first use, refreshed when either file changes)
#   PYTHON     the Python that runs the tools         (default: $(VENV)/bin/python;
#              set PYTHON=python3 VENV_READY= where the requirements are installed,
#              as in the container)
#   DOCS_OUT   where `make docs` writes the HTML     (default: docs/_build/html
#              beside this Makefile)
# Values are taken literally: make never expands them (a '$' stays a '$', so
# '$(shell ...)' is just text) and no shell parses them; they reach the tools
# through the environment (ICF_STORE, ICF_STUDY, ICF_VISIT, ICF_INPUT,
# ICF_STORE_URL, ICF_PYTHON). STUDY and each VISIT must be an ID: letters,
# digits, '.', '_' and '-', not starting with '.' or '-'. STORE, VENV and
# VENV_READY name make targets, so they may not contain whitespace or any of
#   % : ; | * ? [ ] \   nor start with ~
# (make refuses such a value before anything runs, naming the character;
# whitespace includes tab, newline, carriage return, vertical tab, form feed).
# INPUT and STORE_URL may hold anything (the tools check STORE_URL); note that
# make drops leading whitespace of a command-line value.
#
# Every store target is a real file; make's timestamps drive reruns:
#   archive  <visit>_dicom.tar                    built once from INPUT, never rebuilt
#   metadata <visit>_metadata_{tarball,dicoms}.json   <- archive
#   dataset  <visit>_XDLRA--{refs,repo-export}    <- metadata
#   catalog  catalog/visits/<visit>.json          <- metadata + dataset
# Store files are precious: make never deletes them, on an error or an
# interrupt (the tools write each of them under a temporary name and rename
# it when complete, so there is never a partial one to remove).

# --- characters, IDs, literal values ----------------------------------------

empty :=
space := $(empty) $(empty)
tab := $(empty)	$(empty)
define newline


endef

# Characters a make target name cannot carry (tested with GNU make 4.3): c.X
# is the character, d.X how an error names it. Make splits words at every
# whitespace character (also carriage return, vertical tab, form feed), reads
# % as a pattern, : ; | as rule syntax, * ? [ ] as a glob, \ as an escape,
# and a leading ~ as a home directory.
TARGET_UNSAFE := space tab newline percent colon semicolon pipe star question lbracket rbracket \
  backslash
c.space := $(space)
c.tab := $(tab)
c.newline := $(newline)
c.percent := %
c.colon := :
c.semicolon := ;
c.pipe := |
c.star := *
c.question := ?
c.lbracket := [
c.rbracket := ]
c.backslash := $(strip \ )
d.space := a space
d.tab := a tab
d.newline := a newline
$(foreach c,$(filter-out space tab newline,$(TARGET_UNSAFE)),$(eval d.$c := '$$(c.$c)'))

# $(call unsafe_char,TEXT): how to name the first character of TEXT that a
# target name cannot carry (empty: none)
unsafe_char = $(or $(d.$(firstword $(foreach c,$(TARGET_UNSAFE),$(if $(findstring $(c.$c),$1),$c)))),\
  $(if $(filter-out 1,$(words x$1x)),whitespace),$(if $(filter ~%,$1),'~' at its start))
# $(call check_target_chars,VARIABLE,VALUE): stop if VALUE cannot be in a target name
check_target_chars = $(if $(call unsafe_char,$2),$(error $1 may not contain \
  $(strip $(call unsafe_char,$2)) (make cannot have it in a file name): '$2'))

ID_CHARS := a b c d e f g h i j k l m n o p q r s t u v w x y z \
  A B C D E F G H I J K L M N O P Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9 . _ -
_drop_chars = $(if $2,$(call _drop_chars,$(subst $(firstword $2),,$1),$(wordlist 2,$(words $2),$2)),$1)
# $(call not_id,TEXT): non-empty unless TEXT is an ID as in icf.store.ID_PATTERN,
# [A-Za-z0-9_][A-Za-z0-9._-]*
not_id = $(or $(if $1,,empty),$(if $(filter-out 1,$(words x$1x)),whitespace),\
  $(if $(call _drop_chars,$1,$(ID_CHARS)),other characters),$(filter .% -%,$1))
ID_RULE := letters, digits, '.', '_' and '-', not starting with '.' or '-'

# $(call literal,VARIABLE,DEFAULT): VARIABLE's value exactly as given on the
# command line or in the environment (never expanded), else DEFAULT
literal = $(if $(filter undefined default,$(origin $1)),$2,$(value $1))

USER_VARIABLES := STORE STUDY VISIT INPUT STORE_URL VENV PYTHON VENV_READY DOCS_OUT
# make would expand a command-line value to put it into the recipes'
# environment (running any $(shell ...) in it): never export them
$(foreach v,$(USER_VARIABLES),$(if $(filter command line override,$(origin $v)),$(eval unexport $v)))

# --- this checkout ------------------------------------------------------------

ICF_MAKEFILE := $(realpath $(lastword $(MAKEFILE_LIST)))
ICF := $(patsubst %/,%,$(dir $(ICF_MAKEFILE)))
ifeq ($(ICF_MAKEFILE),)
  $(error cannot find this Makefile's own path (make cannot handle whitespace in it): $(MAKEFILE_LIST))
endif
$(call check_target_chars,this Makefile's directory,$(ICF))
override ICF_HOME := $(ICF)
override ICF_VENV := $(call literal,VENV,$(ICF)/.venv)
override ICF_PYTHON := $(call literal,PYTHON,$(ICF_VENV)/bin/python)
VENV_READY_FILE := $(call literal,VENV_READY,$(ICF_VENV)/.requirements-installed)
$(call check_target_chars,VENV,$(ICF_VENV))
$(call check_target_chars,VENV_READY,$(VENV_READY_FILE))
override ICF_DOCS_OUT := $(call literal,DOCS_OUT,$(ICF)/docs/_build/html)
export ICF_HOME ICF_VENV ICF_PYTHON ICF_MAKEFILE ICF_DOCS_OUT

# --- the store --------------------------------------------------------------------

override ICF_STORE := $(call literal,STORE,$(CURDIR))
override ICF_STUDY := $(call literal,STUDY,)
override ICF_VISITS := $(call literal,VISIT,)
override ICF_INPUT := $(call literal,INPUT,)
override ICF_STORE_URL := $(call literal,STORE_URL,)
export ICF_STORE ICF_STUDY ICF_INPUT ICF_STORE_URL

OTHER_GOALS := help demo test test-fast lint bench docs venv screenshots test-container test-hpc
ifneq ($(filter-out $(OTHER_GOALS),$(or $(MAKECMDGOALS),help)),)
  # a store target (or a file): check every value before any recipe runs
  ifeq ($(ICF_STORE),)
    $(error STORE is empty: set STORE=<store directory> or leave it out for the current directory)
  endif
  $(call check_target_chars,STORE,$(ICF_STORE))
  ifeq ($(ICF_STUDY),)
    $(error set STUDY=<study ID> (and VISIT=<visit ID>, or none for every visit))
  endif
  ifneq ($(call not_id,$(ICF_STUDY)),)
    $(error STUDY is not a study ID ($(ID_RULE)): '$(ICF_STUDY)')
  endif
  BAD_VISITS := $(strip $(foreach v,$(ICF_VISITS),$(if $(call not_id,$v),$v)))
  ifneq ($(BAD_VISITS),)
    $(error VISIT is not a visit ID ($(ID_RULE); several separated by spaces): \
      '$(ICF_VISITS)' (at '$(firstword $(BAD_VISITS))'))
  endif
  ifneq ($(ICF_INPUT),)
    ifneq ($(words $(ICF_VISITS)),1)
      $(error INPUT is one visit's DICOM directory: set VISIT=<one visit ID> (VISIT is '$(ICF_VISITS)'))
    endif
  endif
  STUDY_DIR := $(ICF_STORE)/$(ICF_STUDY)
  ifneq ($(strip $(ICF_VISITS)),)
    VISITS := $(strip $(ICF_VISITS))
  else
    # every <visit>_dicom.tar of the study; other names are warned about and skipped
    FOUND := $(wildcard $(STUDY_DIR)/*_dicom.tar)
    VISITS := $(strip $(foreach f,$(FOUND),$(if $(call not_id,$(patsubst $(STUDY_DIR)/%_dicom.tar,%,$f)),,\
      $(if $(wildcard $f),$(patsubst $(STUDY_DIR)/%_dicom.tar,%,$f)))))
    SKIPPED := $(filter-out $(VISITS:%=$(STUDY_DIR)/%_dicom.tar),$(FOUND))
    ifneq ($(SKIPPED),)
      $(warning $(STUDY_DIR): skipped, not <visit ID>_dicom.tar ($(ID_RULE)): \
        '$(patsubst $(STUDY_DIR)/%,%,$(subst $(space)$(STUDY_DIR)/,' ',$(SKIPPED)))')
    endif
  endif
  ifeq ($(VISITS),)
    $(error no visit: set VISIT=<visit ID>, or build an archive in $(STUDY_DIR) first)
  endif
else
  # help, demo, test, test-fast, lint, bench, docs, venv: the store's rules stay unused
  STUDY_DIR := $(ICF)/.no-store/study
  VISITS :=
endif

# --- running the tools ------------------------------------------------------------

# `$(RUN_TOOL) <script> <args>` prints the tool's command line as it runs
# (words quoted where a shell would need it; make -s: not printed), then
# execs it with ICF_PYTHON, whose directory goes first on PATH (git-annex and
# datalad-next's helpers live there). Recipes give values as "$$ICF_..."
# only, so the shell takes each as one word and never parses it.
ifeq ($(findstring s,$(firstword -$(MAKEFLAGS))),)
  SHOW_LINE := printf '%s\n' "$${line\# }";
endif
# SET_PATH: ICF_PYTHON made absolute (if a path), its directory first on PATH
SET_PATH := d=; case $$ICF_PYTHON in */*) d=$${ICF_PYTHON%/*}; case $$d in /*) ;; *) d=$$PWD/$$d;; esac; \
  d=$${d:-/}; ICF_PYTHON=$$d/$${ICF_PYTHON\#\#*/}; PATH=$$d:$$PATH; export PATH;; esac;
RUN_TOOL = @q="'"; add() { \
    case $$1 in '' | *[!A-Za-z0-9_./:=@%+,-]*) ;; *) line="$$line $$1"; return;; esac; \
    s=$$1; w=; while :; do case $$s in \
      *"$$q"*) w="$$w$${s%%"$$q"*}$$q\\$$q$$q"; s=$${s\#*"$$q"};; *) w="$$w$$s"; break;; esac; done; \
    line="$$line $$q$$w$$q"; }; \
  run_tool() { \
    tool=$$1; shift; set -- "$$ICF_PYTHON" "$$ICF_HOME/bin/$$tool" "$$@"; \
    line=; for a; do add "$$a"; done; $(SHOW_LINE) $(SET_PATH) exec "$$@"; }; \
  run_tool
IDS = --store-dir="$$ICF_STORE" --id "$$ICF_STUDY" "$$ICF_VISIT"
STORE_URL_OPTION = $${ICF_STORE_URL:+--store-url="$$ICF_STORE_URL"}

.DELETE_ON_ERROR:
.SUFFIXES:
.PHONY: help archive metadata dataset catalog verify report demo test test-fast lint bench docs venv screenshots \
  test-container test-hpc

# Every store file, whichever way it is asked for: never deleted by make
# (.DELETE_ON_ERROR and interrupts spare precious files; GNU make 4.3 matches
# these patterns against the full target name, as written in the rules).
STORE_FILES := %_dicom.tar %_dicom.tar.md5sum %_metadata_tarball.json %_metadata_dicoms.json \
  %_XDLRA--refs %_XDLRA--repo-export catalog/visits/%.json
.PRECIOUS: $(STORE_FILES:%=$(STUDY_DIR)/%)

help:
	@sed -n 's/^## //p' "$$ICF_MAKEFILE"

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
verify-%: override export ICF_VISIT = $*
verify-%: | $(VENV_READY_FILE)
	$(RUN_TOOL) verify_visit $(IDS) $(STORE_URL_OPTION)
##   report     a table of the study's visits: DICOMs, series, images, size, findings
report: | $(VENV_READY_FILE)
	$(RUN_TOOL) report_study --store-dir="$$ICF_STORE" --id "$$ICF_STUDY"
## Other targets:
##   demo       the whole pipeline on the bundled sample visit, into ./demo-store
##   test       ruff, mypy, then the whole test suite (pytest); fails if any of them fails
##   test-fast  the test suite without the tests marked slow (pytest -m 'not slow'), about a minute
##   lint       ruff (lib, bin, tests, docs) and mypy (lib, bin); settings in pyproject.toml
##   test-container
##              build the container image from singularity/icf.def as apptainer does (debootstrap;
##              cached in /var/cache/icf-utils, or ICF_CONTAINER_CACHE) and run two visits through it
##              as a cluster user would; they must match a run on the host (needs root)
##   test-hpc   start a one-node SLURM here (slurm-wlm, munge; installed if missing) and run the
##              array job of singularity/slurm-visit-array.sh through that image (needs root)
##   bench      speed figures of every step on a replicated 5,460-file visit, with baselines
##   docs       the documentation (Sphinx, warnings as errors) in docs/_build/html (or DOCS_OUT)
##   screenshots
##              docs/images/study.png and visit.png: the sample visit's catalog in headless Chromium
##   venv       create or refresh the virtual environment from requirements-dev.txt
##              (which includes requirements.txt)
##   help       this list

# the visit, for each store rule: the stem, through the environment
$(STORE_FILES:%=$(STUDY_DIR)/%): override export ICF_VISIT = $*

$(STUDY_DIR)/%_dicom.tar: | $(VENV_READY_FILE)
	@test -n "$$ICF_INPUT" || { echo "make: set INPUT=<DICOM directory> to build $$ICF_STORE/$$ICF_STUDY/$${ICF_VISIT}_dicom.tar" >&2; exit 2; }
	$(RUN_TOOL) make_studyvisit_archive $(IDS) -- "$$ICF_INPUT"

$(STUDY_DIR)/%_metadata_tarball.json $(STUDY_DIR)/%_metadata_dicoms.json: \
    $(STUDY_DIR)/%_dicom.tar | $(VENV_READY_FILE)
	$(RUN_TOOL) deposit_visit_metadata --force $(IDS)

$(STUDY_DIR)/%_XDLRA--refs $(STUDY_DIR)/%_XDLRA--repo-export: \
    $(STUDY_DIR)/%_metadata_tarball.json $(STUDY_DIR)/%_metadata_dicoms.json | $(VENV_READY_FILE)
	$(RUN_TOOL) deposit_visit_dataset --force $(IDS) $(STORE_URL_OPTION)

$(STUDY_DIR)/catalog/visits/%.json: $(STUDY_DIR)/%_metadata_tarball.json \
    $(STUDY_DIR)/%_metadata_dicoms.json $(STUDY_DIR)/%_XDLRA--refs | $(VENV_READY_FILE)
	$(RUN_TOOL) catalogify_studyvisit_from_meta $(IDS) $(STORE_URL_OPTION)

venv: $(VENV_READY_FILE)
# the tools' requirements and those of tests, docs and lint (which include the
# former); this checkout's tarslice remote, editable (lib/ is what runs); and
# the wheels from which tests/test_tarslice.py installs it, offline, into a
# fresh venv as a researcher would (pinned by the same files)
$(ICF_VENV)/.requirements-installed: $(ICF)/requirements.txt $(ICF)/requirements-dev.txt $(ICF)/pyproject.toml
	test -x "$$ICF_VENV/bin/python" || python3 -m venv "$$ICF_VENV"
	"$$ICF_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$$ICF_HOME/requirements-dev.txt"
	"$$ICF_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	  -e "$$ICF_HOME"
	"$$ICF_VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check -w "$$ICF_VENV/wheelhouse" \
	  -c "$$ICF_HOME/requirements-dev.txt" datalad-next git-annex setuptools
	touch "$$ICF_VENV/.requirements-installed"

override ICF_DEMO_STORE := $(CURDIR)/demo-store
export ICF_DEMO_STORE
demo: | $(VENV_READY_FILE)
	$(MAKE) --no-print-directory -f "$$ICF_MAKEFILE" STORE="$$ICF_DEMO_STORE" STUDY=demo VISIT=visit1 \
	  INPUT="$$ICF_HOME/tests/data/sample-visit" catalog
	@echo
	@echo "Made in $$ICF_DEMO_STORE/demo:"
	@ls -l "$$ICF_DEMO_STORE/demo"
	@echo
	@echo "View the catalog:  python3 -m http.server -d '$$ICF_DEMO_STORE/demo/catalog'  (then open http://localhost:8000)"
	@echo "Clone the visit (from outside any git repository):"
	@$(SET_PATH) url=$$("$$ICF_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' \
	  "$$ICF_DEMO_STORE/demo/catalog/visits/visit1.json") && \
	  echo "  cd /tmp && $${d:+PATH=$$d:\$$PATH }datalad clone '$$url' visit1"

# `$(CHECKS) <command>; <command>; ...` runs each `python -m <command>` from
# the checkout's root (where pyproject.toml has the settings), every one even
# after one failed (CI sees all of them); it fails if any failed, naming those.
# ruff covers lib, bin (its Python scripts), tests and docs; mypy lib and bin.
CHECKS = @$(SET_PATH) cd "$$ICF_HOME" || exit 2; failed=; \
  check() { echo "$$*"; "$$ICF_PYTHON" -m "$$@" || failed="$$failed $$1"; }; \
  checked() { test -z "$$failed" || { echo "make $@: failed:$$failed" >&2; exit 1; }; };
LINT_CHECKS := check ruff check --quiet --output-format=concise .; check mypy

test: | $(VENV_READY_FILE)
	$(CHECKS) $(LINT_CHECKS); check pytest -ra tests; checked

test-fast: | $(VENV_READY_FILE)
	$(SET_PATH) cd "$$ICF_HOME" && "$$ICF_PYTHON" -m pytest -ra -m "not slow" tests

lint: | $(VENV_READY_FILE)
	$(CHECKS) $(LINT_CHECKS); checked

# the container and SLURM tests (tests/container/): the host run they compare
# with uses this checkout's venv; root is needed, else they say SKIPPED
test-container: | $(VENV_READY_FILE)
	cd "$$ICF_HOME" && tests/container/test-container.sh

test-hpc: | $(VENV_READY_FILE)
	cd "$$ICF_HOME" && tests/container/test-hpc.sh

bench: | $(VENV_READY_FILE)
	$(SET_PATH) cd "$$ICF_HOME" && "$$ICF_PYTHON" tests/bench.py

screenshots: | $(VENV_READY_FILE)
	$(SET_PATH) cd "$$ICF_HOME" && ICF_SCREENSHOTS="$$ICF_HOME/docs/images" "$$ICF_PYTHON" -m pytest -q \
	  -p no:cacheprovider tests/test_catalog_browser.py::test_screenshots

docs: | $(VENV_READY_FILE)
	$(SET_PATH) "$$ICF_PYTHON" -m sphinx -W --keep-going -q -b html "$$ICF_HOME/docs" "$$ICF_DOCS_OUT"
	@echo "docs: $$ICF_DOCS_OUT/index.html"
