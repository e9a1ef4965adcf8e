#!/bin/bash
# One visit per task of a SLURM array job, through the icf-utils container.
#
#   sbatch --array=1-N singularity/slurm-visit-array.sh VISIT-LIST
#
# VISIT-LIST has one visit per line: STUDY VISIT INPUT-DIR (INPUT-DIR is the
# rest of the line, relative to the directory sbatch ran in; blank lines and
# lines starting with # are skipped). STUDY and VISIT must be IDs (letters,
# digits, '.', '_' and '-', not starting with '.' or '-'): a task whose line
# has another fails before running anything. INPUT-DIR is taken literally,
# whatever characters it holds (but ',' and ':', which a bind cannot hold).
# Task i (1-based) runs the i-th visit,
# so N is the number of visits:
#   grep -cv '^[[:space:]]*\(#\|$\)' VISIT-LIST
# Each task runs `make ... catalog` for its visit in the container: all steps
# still due (archive, metadata, dataset deposit, catalog). Tasks of the same
# study update one catalog; the tools serialise that with an flock on
# <store>/<study>/.catalog.lock, and tasks of the same visit take turns on
# .icf-visit-<study>-<visit>.lock in the directory sbatch ran in, so any
# number of tasks may run at once (on a network file system, flock must work
# across nodes: NFSv4 and Lustre mounted with -o flock do; check yours).
#
# Settings (environment variables; sbatch passes the submitting shell's on):
#   ICF_STORE        the store's root directory      (default: the directory sbatch ran in)
#   ICF_IMAGE        the container image             (default: icf.sif in that directory)
#   ICF_STORE_URL    URL at which users reach the store, for clone URLs
#                    (default: the tools' file:// URL of the store)
#   ICF_TARGET       make target                     (default: catalog)
#   ICF_SINGULARITY  the container runtime command   (default: singularity;
#                    apptainer works the same; make test-hpc uses
#                    tests/container/icf-run, which runs an image directory)
# The store (read-write) and the visit's input directory (read-only) are
# bound into the container at their own paths; nothing else from the host
# is needed. Make's output goes
# to the job's log; a failed visit fails its task only.
#
#SBATCH --job-name=icf-visit
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=12:00:00
#SBATCH --output=icf-visit-%A_%a.log

set -euo pipefail

fail() { echo "slurm-visit-array: $*" >&2; exit 2; }

[ $# -eq 1 ] || fail "usage: sbatch --array=1-N $0 VISIT-LIST"
list=$1
task=${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array=1-N}
case "$task" in '' | *[!0-9]* | 0) fail "array task IDs start at 1, not $task" ;; esac
[ -r "$list" ] || fail "cannot read the visit list $list"
submit_dir=${SLURM_SUBMIT_DIR:-$PWD}
store=$(realpath -e -- "${ICF_STORE:-$submit_dir}") || fail "no store directory: ${ICF_STORE:-$submit_dir}"
image=${ICF_IMAGE:-$submit_dir/icf.sif}
target=${ICF_TARGET:-catalog}
runtime=${ICF_SINGULARITY:-singularity}

line=$(grep -v '^[[:space:]]*\(#\|$\)' -- "$list" | sed -n "${task}p" || true)
[ -n "$line" ] || fail "$list has no visit number $task"
read -r study visit input <<<"$line"
[ -n "$input" ] || fail "visit $task of $list is not 'STUDY VISIT INPUT-DIR': $line"
# the IDs as the tools and the Makefile require them (icf.store.ID_PATTERN;
# the characters spelled out: a range such as A-Z may match more in a locale)
id_chars=abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-
check_id() {
  case $2 in
    '' | [.-]* | *[!$id_chars]*)
      fail "visit $task of $list: invalid $1 ID '$2' (letters, digits, '.', '_' and '-', not starting with '.' or '-')" ;;
  esac
}
check_id study "$study"
check_id visit "$visit"
input=$(realpath -e -- "$input") || fail "no input directory for $study $visit: $input"
case "$store$input" in
  *,* | *:*) fail "a bound path cannot contain ',' or ':': $store, $input" ;;
esac

echo "task $task: study $study visit $visit from $input into $store (make $target)"
# Each value is one argument VAR=value, never parsed by a shell; the Makefile
# reads it literally ($(value VAR)) and passes it to the tools through the
# environment, so a name such as `Study $(x) 2024` stays text. It refuses a
# STORE that make cannot have in a file name, naming the character.
# Tasks of the same visit submitted from one directory (a visit listed
# twice, a rerun submitted while the first still runs) take turns on
# .icf-visit-<study>-<visit>.lock there (an flock that flock itself holds
# until the container ends; nothing is made in the store before make has
# checked it): the later task then finds every step up to date and
# completes without redoing anything.
lock=$submit_dir/.icf-visit-$study-$visit.lock
exec flock --close -- "$lock" "$runtime" run --bind "$store:$store,$input:$input:ro" "$image" make \
  "STORE=$store" "STUDY=$study" "VISIT=$visit" "INPUT=$input" \
  ${ICF_STORE_URL:+"STORE_URL=$ICF_STORE_URL"} "$target"
