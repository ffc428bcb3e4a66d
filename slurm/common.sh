# Sourced by the job scripts in slurm/: runs one training step of the job, forwards SLURM's
# warning signal to it, and requeues the job when tsimcne-dist stopped to be resumed.
#
# The job scripts ask SLURM for SIGUSR1 some minutes before the time limit
# (--signal=B:USR1@SECONDS, sent to this batch shell). The trap passes it to the launcher
# (srun and mpirun both forward USR1 to every rank); each rank finishes its step, rank 0 writes
# a checkpoint, and all exit with 75. The job is then requeued, and the same command resumes
# from that checkpoint, on whatever number of nodes the requeued job gets (the global batch is
# the config's). SIGTERM (scancel, preemption) is handled the same way.

# Exit code of tsimcne-dist after a requested stop with its checkpoint written.
readonly TSIMCNE_STOPPED=75

# run_preemptible COMMAND...: runs COMMAND, forwarding USR1/TERM; requeues when the run stopped
# on request: exit code 75, or $OUT/STOPPED written (mpirun can report 1 for ranks' 75).
run_preemptible() {
  echo "tsimcne job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: $*"
  local rc attempt err
  err=$(mktemp)
  # srun can fail to start the tasks and still exit 0: seen when a requeued job restarts on the
  # node where its previous step is still being cleaned up ("task 0 launch failed"). Nothing ran
  # then, so the launch is tried again.
  for attempt in 1 2 3; do
    launch_and_wait "$err" "$@"
    [ "$rc" -eq 0 ] && sleep 1  # the copy of standard error may trail the launcher's exit
    [ "$rc" -eq 0 ] && grep -qE "launch failed|aborted before step completely launched" "$err" || break
    echo "the launcher could not start every task (attempt $attempt of 3); trying again in 10 s"
    rc=1
    sleep 10
  done
  rm -f "$err"
  if { [ "$rc" -eq "$TSIMCNE_STOPPED" ] || [ -f "$OUT/STOPPED" ]; } && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "stopped with a checkpoint: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  if [ "$rc" -ne 0 ]; then
    # One line that says what to do, under whatever the launcher printed about a lost rank.
    local newest
    newest=$(find "$OUT/checkpoints" -maxdepth 1 -name 'step-*' 2>/dev/null | sort | tail -1)
    echo "tsimcne-dist exited with $rc (a rank failed, or its node died); the newest checkpoint is ${newest:-none}: submit the job again to resume from it"
  else
    echo "tsimcne-dist exited with 0"
  fi
  exit "$rc"
}

# launch_and_wait ERRFILE COMMAND...: runs COMMAND (its standard error also copied to ERRFILE)
# until it ends, forwarding USR1/TERM to it; sets rc to its exit code.
launch_and_wait() {
  local err=$1; shift
  rm -f "$OUT/STOPPED" "$OUT/STALLED"
  : >"$err"
  "$@" 2> >(tee -a "$err" >&2) &
  local pid=$!
  # A rank that gave up waiting for the others (stall_timeout_s) leaves OUT/STALLED. The
  # launcher normally ends the step within seconds then; srun has been seen to wait on for the
  # step daemon of a node that died, and is ended here after a minute.
  (
    while kill -0 "$pid" 2>/dev/null; do
      if [ -f "$OUT/STALLED" ]; then
        sleep "${STALL_GRACE_S:-60}"
        kill -0 "$pid" 2>/dev/null || exit 0
        echo "the launcher did not end the step within ${STALL_GRACE_S:-60} s of a rank giving up: ending it"
        kill -KILL "$pid"
        exit 0
      fi
      sleep 2
    done
  ) &
  local watcher=$!
  trap 'echo "signal received: asking the ranks to checkpoint and stop"; kill -USR1 "$pid" 2>/dev/null' USR1 TERM
  # `wait` returns early when a trapped signal arrives; wait again until the step has ended.
  while true; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - USR1 TERM
  kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
  return 0
}

# `-x NAME` for every NCCL_* variable set here (the network interface, InfiniBand adapters).
nccl_exports() {
  local v
  for v in $(compgen -e); do [[ $v == NCCL_* ]] && printf -- '-x %s ' "$v"; done
  return 0
}

# The launcher of one rank per task: srun with PMIx, or mpirun inside the allocation.
launcher() {
  case "${LAUNCHER:-srun}" in
    # The task count from the job as it is now: a job requeued onto another size keeps its
    # submission's SLURM_NTASKS in the environment, which srun would otherwise use.
    srun) echo srun --mpi="${SRUN_MPI:-pmix}" --kill-on-bad-exit=1 \
      --ntasks="$(scontrol show job "$SLURM_JOB_ID" | grep -o 'NumTasks=[0-9]*' | cut -d= -f2)" ;;
    mpirun)
      local root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
      # mpirun passes on only what -x names to ranks it starts on other hosts (srun and SLURM's
      # mpirun inside an allocation pass on everything): the thread count and NCCL's settings.
      echo mpirun --bind-to none "${root[@]}" -x OMP_NUM_THREADS $(nccl_exports) ;;
    *) echo "LAUNCHER must be srun or mpirun, not $LAUNCHER" >&2; exit 2 ;;
  esac
}

# train_job DEVICE: the job's one step, tsimcne-dist train on $CONFIG, $DATA and $OUT (the job
# script's variables) plus any --set flags in $SETS, with the allocation's cores per rank.
train_job() {
  export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # shellcheck disable=SC2046,SC2086  # the launcher's words and $SETS split on purpose
  run_preemptible $(launcher) "${BIN:-target/release/tsimcne-dist}" train \
    --config "$CONFIG" --data "$DATA" --out "$OUT" \
    --set device="$1" --set threads="$OMP_NUM_THREADS" ${SETS:-}
}
