#!/usr/bin/env bash
# make test-hpc: singularity/slurm-visit-array.sh on a real SLURM. Starts a
# single-node cluster on 127.0.0.1 (munged, slurmctld, slurmd from Debian's
# slurm-wlm and munge, installed with apt-get if missing; configuration,
# state, spool, logs and keys in a temporary directory), and submits the
# array job with the container runtime of make test-container
# (ICF_SINGULARITY=tests/container/icf-run, ICF_IMAGE=the image that
# tests/container/build-image.sh builds or finds cached). The visit list
# holds a visit twice, on adjacent lines so that the two tasks run at once,
# another visit, and a broken one (its input holds a FIFO, which step 1
# refuses). Checks, from the scheduler's own record (jobcomp/filetxt):
# the broken visit fails its task only (FAILED, non-zero exit), the others
# COMPLETE (both tasks of the twice-listed visit: they take turns on its
# lock in the submit directory, and one of them archives it); the visit listed twice has one
# intact archive (its .md5sum matches); the study
# catalog lists every good visit. Then it repairs the broken input and
# reruns the failed tasks as docs/admin.rst says (failed task IDs from
# `scontrol show job`, then sbatch --array=<those IDs>), checks that they
# COMPLETE and the catalog lists all visits, and runs `make verify` for the
# study in the container and on the host. It stops every daemon it started
# and removes its directory on exit, also on failure or interrupt.
#
# Settings (environment): those of build-image.sh (ICF_CONTAINER_CACHE,
# ICF_DEBIAN_MIRROR) and ICF_RUN_UID/ICF_RUN_GID (see icf_run.py).
# Needs root and mount namespaces; without them it prints "SKIPPED: <reason>"
# and exits 0, or fails under CI=true (a skipped test must not pass CI).
set -euo pipefail
name=test-hpc
root_for="to run slurmctld, slurmd and munged, and the container runtime"
# shellcheck source=tests/container/common.sh source-path=SCRIPTDIR/../..
. "$(dirname -- "$0")/common.sh"

missing=()
for command in munged slurmctld slurmd sbatch scontrol; do
  command -v "$command" >/dev/null || missing+=("$command")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing slurm-wlm and munge (apt-get; missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  # no service may start from the packages' scripts: this script starts its
  # own daemons (an existing policy-rc.d is left as it is)
  policy=
  trap '[ -z "$policy" ] || rm -f -- "$policy"' EXIT
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# test-hpc: no service starts while packages are installed\nexit 101\n' > "$policy"
    chmod 755 "$policy"
  fi
  status=0
  { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq slurm-wlm munge >/dev/null; } || status=$?
  [ -z "$policy" ] || rm -f -- "$policy"
  policy=
  trap - EXIT
  [ "$status" -eq 0 ] || fail "apt-get install slurm-wlm munge failed (exit $status)"
fi

step "the image (tests/container/build-image.sh)"
image=$("$here/build-image.sh")

tmp=$(mktemp -d /tmp/icf-test-hpc.XXXXXX)
chmod 755 "$tmp"
pids=()
ok=
cleanup() {
  local status=$?
  set +e
  trap - ERR
  if [ -S "$tmp/munge/socket" ] && [ -n "${SLURM_CONF:-}" ]; then
    # jobs first (their processes are not the daemons' children), bounded
    scancel --quiet --full "--user=root" 2>/dev/null
    for _ in $(seq 30); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  if [ -z "$ok" ]; then
    for log in "$tmp"/slurmctld.log "$tmp"/slurmd.log "$tmp"/munge/log; do
      [ -f "$log" ] && { echo "--- last lines of $log"; tail -n 15 "$log"; }
    done >&2
  fi
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  # anything else still working in our directory (a job step slurmd left)
  local proc
  for proc in /proc/[0-9]*; do
    case ${proc#/proc/} in "$$" | "$BASHPID") continue ;; esac
    case $(readlink "$proc/cwd" 2>/dev/null) in
      "$tmp" | "$tmp"/*)
        echo "test-hpc: stopping leftover process ${proc#/proc/}: $(tr '\0' ' ' < "$proc/cmdline")" >&2
        kill -KILL "${proc#/proc/}" 2>/dev/null ;;
    esac
  done
  rm -rf -- "$tmp"
  [ -n "$ok" ] || echo "test-hpc: FAILED (exit $status)" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "test-hpc: line $LINENO exited $?" >&2' ERR

# --- munge and slurm, on this host only ---------------------------------------------------
mkdir -m 700 "$tmp/munge"
mkdir "$tmp/state" "$tmp/spool" "$tmp/submit"
dd if=/dev/urandom of="$tmp/munge/key" bs=1024 count=1 status=none
chmod 400 "$tmp/munge/key"
munged --foreground --force --key-file="$tmp/munge/key" --socket="$tmp/munge/socket" \
  --pid-file="$tmp/munge/pid" --log-file="$tmp/munge/log" --seed-file="$tmp/munge/seed" \
  >>"$tmp/daemons.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$tmp/munge/socket" ] && break; sleep 0.1; done
munge -n -S "$tmp/munge/socket" | unmunge -S "$tmp/munge/socket" >/dev/null || fail "munged does not answer"

node=$(hostname -s)
read -r ctld_port slurmd_port < <("$python" -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
memory=$(slurmd -C | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p')
cpus=$(nproc)
export SLURM_CONF=$tmp/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=icftest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/socket
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
PlugStackConfig=$tmp/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$tmp/jobcomp.txt
MinJobAge=86400
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=icf Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
: > "$tmp/plugstack.conf"
step "starting munged, slurmctld and slurmd ($node, 127.0.0.1:$ctld_port)"
slurmctld -D -i -f "$SLURM_CONF" >>"$tmp/daemons.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >>"$tmp/daemons.out" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
  [ "$(sinfo -h -n "$node" -o %T 2>/dev/null)" = idle ] && break
  sleep 0.5
done
[ "$(sinfo -h -n "$node" -o %T)" = idle ] || fail "the node did not come up: $(sinfo -h -o '%T %E' 2>&1)"

# --- the array job ---------------------------------------------------------------------------
store=$tmp/store
mkdir "$store"
chown "${ICF_RUN_UID:-65534}:${ICF_RUN_GID:-${ICF_RUN_UID:-65534}}" "$store"
submit=$tmp/submit
sample=$repo/tests/data/sample-visit
ln -s "$sample" "$submit/sample-visit"
mkdir "$submit/broken-input"
cp "$sample"/run1-a/MR.*47586 "$submit/broken-input/"
mkfifo "$submit/broken-input/scanner-pipe"
cat > "$submit/visits.txt" <<EOF
# STUDY VISIT INPUT-DIR
s v1 $sample

  s v1 sample-visit
s v2 $repo/tests/data/vendors/siemens
s v3 broken-input
EOF
tasks=$(grep -cv '^[[:space:]]*\(#\|$\)' "$submit/visits.txt")

# what sbatch passes on to the tasks: no HOME, no git identity
submit_env=(env -i "PATH=$PATH" "SLURM_CONF=$SLURM_CONF" "ICF_STORE=$store" "ICF_IMAGE=$image"
  "ICF_SINGULARITY=$here/icf-run")
[ -z "${ICF_RUN_UID:-}" ] || submit_env+=("ICF_RUN_UID=$ICF_RUN_UID")
[ -z "${ICF_RUN_GID:-}" ] || submit_env+=("ICF_RUN_GID=$ICF_RUN_GID")

# wait_for JOBID: until no task of the job is pending or running (bounded)
wait_for() {
  local deadline=$((SECONDS + 900))
  while [ -n "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "job $1 still running after 900 s: $(squeue -h -j "$1" 2>&1)"
    sleep 2
  done
}
# states JOBID: "<task> <state> <exit code>" per task, from the scheduler's jobcomp log
states() { "$python" "$here/compare.py" jobs "$tmp/jobcomp.txt" "$1"; }
state_of() { states "$1" | awk -v t="$2" '$1 == t { print $2, $3 }'; }
# catalog_lists VISIT...: the study catalog has a record for exactly these visits
catalog_lists() { "$python" "$here/compare.py" catalog "$store/s" "$@"; }

step "sbatch --array=1-$tasks singularity/slurm-visit-array.sh visits.txt"
job=$(cd "$submit" && "${submit_env[@]}" sbatch --parsable "--array=1-$tasks" \
  "$repo/singularity/slurm-visit-array.sh" visits.txt)
job=${job%%;*}
wait_for "$job"
step "job $job done; the scheduler's record (task state exit):"
states "$job" | sed 's/^/  /'
[ "$(states "$job" | wc -l)" -eq "$tasks" ] || fail "the jobcomp log has not every task of $job"

# last_lines JOBID TASK: the end of the task's log, for a failure message
last_lines() { tail -n 4 "$submit/icf-visit-$1_$2.log" 2>&1; }
[ "$(state_of "$job" 3)" = "COMPLETED 0" ] || fail "task 3 (v2): $(state_of "$job" 3); its log ends:
$(last_lines "$job" 3)"
outcome=$(state_of "$job" 4)
case $outcome in
  "FAILED 0" | "") fail "task 4 (the broken visit) did not fail: '$outcome'" ;;
  "FAILED "*) ;;
  *) fail "task 4 (the broken visit) did not fail: '$outcome'" ;;
esac
log4=$submit/icf-visit-${job}_4.log
grep -q "cannot archive faithfully" "$log4" || fail "task 4's log does not say why: $(tail -n 5 "$log4")"
grep -q "scanner-pipe" "$log4" || fail "task 4's log does not name the FIFO"
[ ! -e "$store/s/v3_dicom.tar" ] || fail "the broken visit left an archive"
# the visit listed twice: both tasks complete, taking turns on the visit's
# lock; one of them did the work, the other found it done
for task in 1 2; do
  outcome=$(state_of "$job" "$task")
  [ "$outcome" = "COMPLETED 0" ] || fail "task $task (v1, listed twice): '$outcome'; its log ends:
$(last_lines "$job" "$task")"
done
archived=$(grep -l "make_studyvisit_archive: archived" "$submit/icf-visit-${job}_1.log" \
  "$submit/icf-visit-${job}_2.log" | wc -l)
[ "$archived" -eq 1 ] || fail "v1 was archived by $archived tasks, not by one"
(cd "$store/s" && md5sum --check --quiet v1_dicom.tar.md5sum) || fail "v1's archive does not match its .md5sum"
catalog_lists v1 v2

# --- rerun the failed tasks, as docs/admin.rst says ----------------------------------------------
rm -- "$submit/broken-input/scanner-pipe"
# the admin guide's command for a cluster without an accounting database
# (this one has none: sacct needs slurmdbd; sacct --completion of SLURM
# 22.05 does not read array tasks from the completion log)
failed=$(scontrol -o show job "$job" | grep -E ' JobState=(FAILED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|CANCELLED) ' |
  grep -o 'ArrayTaskId=[0-9]*' | cut -d= -f2 | sort -n | paste -sd, -)
expected=$(states "$job" | awk '$2 != "COMPLETED" { print $1 }' | paste -sd, -)
[ "$failed" = "$expected" ] || fail "scontrol names failed tasks '$failed', the jobcomp log '$expected'"
step "rerunning the failed tasks: sbatch --array=$failed singularity/slurm-visit-array.sh visits.txt"
rerun=$(cd "$submit" && "${submit_env[@]}" sbatch --parsable "--array=$failed" \
  "$repo/singularity/slurm-visit-array.sh" visits.txt)
rerun=${rerun%%;*}
wait_for "$rerun"
states "$rerun" | sed 's/^/  /'
if states "$rerun" | awk '$2 != "COMPLETED" || $3 != 0 { bad = 1 } END { exit !bad }'; then
  fail "a rerun task did not complete: $(states "$rerun" | tr '\n' ' ')"
fi
[ "$(states "$rerun" | wc -l)" -eq "$(tr ',' '\n' <<<"$failed" | wc -l)" ] || fail "not every rerun task is recorded"
catalog_lists v1 v2 v3

step "make verify for the study, in the container and on the host"
(cd "$tmp" && env -i "PATH=$PATH" ${ICF_RUN_UID:+"ICF_RUN_UID=$ICF_RUN_UID"} ${ICF_RUN_GID:+"ICF_RUN_GID=$ICF_RUN_GID"} \
  timeout 600 "$here/icf-run" run --bind "$store:$store" "$image" make "STORE=$store" STUDY=s verify)
(cd "$tmp" && timeout 600 make -s -f "$repo/Makefile" "STORE=$store" STUDY=s verify)

ok=1
step "passed (total $((SECONDS - start)) s)"
