# What the tests/cli scripts share; each sources it first (`source "$SRC/tests/cli/lib/common.sh"`). It is not a
# test itself: ctest registers only tests/cli/*.sh. Enters $WORK, defines die, and stops every server it started
# when the script exits, however it exits.
mkdir -p "$WORK"; cd "$WORK"
die() { echo "FAIL: $*"; exit 1; }

OAR_SERVER_PIDS=()
stop_all_servers() { for p in "${OAR_SERVER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap stop_all_servers EXIT

# start_server NAME ARGS...: runs `oar serve ARGS --host 127.0.0.1 --port 0` (a port the OS picks), output in
# NAME.out and NAME.err; returns once it listens, with URL (http://127.0.0.1:PORT) and SERVER_PID set. Fails the
# test if the server exits first or does not listen within 60 s. Environment variables pass through as usual.
start_server() {
  local name="$1"; shift
  "$OAR" serve "$@" --host 127.0.0.1 --port 0 >"$name.out" 2>"$name.err" &
  SERVER_PID=$!
  OAR_SERVER_PIDS+=("$SERVER_PID")
  URL=""
  for _ in $(seq 1 600); do
    URL=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$name.out" 2>/dev/null | sed 's/listening on //' || true)
    [ -n "$URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$name.err"; die "oar serve ($name) exited before listening"; }
    sleep 0.1
  done
  die "oar serve ($name) did not start listening in 60 s"
}

# stop_server NAME: SIGTERM to the server last started; it must drain and exit 0.
stop_server() {
  kill -TERM "$SERVER_PID"
  local rc=0
  wait "$SERVER_PID" || rc=$?
  [ "$rc" = 0 ] || { tail -5 "$1.err"; die "oar serve ($1) exited $rc after SIGTERM"; }
}

# pip_venv VENV CHECK_MODULE PACKAGE==VERSION...: a venv at VENV holding the pinned packages (created once; kept
# while PACKAGE's installed version matches). Skips the test (exit 77) only when PyPI cannot be reached; any
# other install failure fails it.
pip_venv() {
  local venv="$1" module="$2"; shift 2
  local pin="$1" py="$venv/bin/python"
  "$py" -c "import $module, sys; sys.exit($module.__version__ != '${pin#*==}')" 2>/dev/null && return 0
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  if ! "$py" -m pip install -q --disable-pip-version-check "$@" > "$venv.pip.log" 2>&1; then
    if ! "$py" -m pip index versions "${pin%%==*}" --disable-pip-version-check >/dev/null 2>&1; then
      echo "SKIP: pip cannot reach PyPI, so ${pin%%==*} cannot be installed"
      exit 77
    fi
    cat "$venv.pip.log"
    die "pip install $* failed although PyPI is reachable"
  fi
}

# reference_venv SCRIPT [VENV]: sets PY to the python of the venv that tests/reference/SCRIPT creates (in VENV, or
# its default). Skips the test (exit 77) when the script says PyPI is unreachable; any other failure fails it.
reference_venv() {
  local script="$SRC/tests/reference/$1" rc=0
  PY=$(bash "$script" ${2:+"$2"} | tail -n1) || rc=$?
  if [ $rc -eq 77 ]; then echo "SKIP: PyPI is unreachable and the venv of $1 does not exist yet"; exit 77; fi
  [ $rc -eq 0 ] || die "could not create the venv (tests/reference/$1 exit $rc)"
}

# write_digit_sft DIR SEED TRAIN_N [DEV_N]: the "largest of these digits" fine-tuning task as PaddleNLP's src/tgt
# JSON lines, DIR/train.json (and DIR/dev.json when DEV_N is given).
write_digit_sft() {
  python3 - "$@" <<'PY'
import json, os, random, sys
out, seed, counts = sys.argv[1], int(sys.argv[2]), [("train", int(sys.argv[3]))]
if len(sys.argv) > 4: counts.append(("dev", int(sys.argv[4])))
r = random.Random(seed)
os.makedirs(out, exist_ok=True)
for name, n in counts:
    with open(os.path.join(out, name + ".json"), "w") as f:
        for _ in range(n):
            d = [r.randint(0, 9) for _ in range(r.randint(3, 6))]
            f.write(json.dumps({"src": "largest of " + " ".join(map(str, d)), "tgt": str(max(d))}) + "\n")
PY
}

# same_losses ONE.jsonl TWO.jsonl STEPS TOL WHAT [MIN_DROP]: both metrics.jsonl files log STEPS training losses that
# agree within TOL relative (and, with MIN_DROP, the second run's loss falls by at least that much); prints WHAT.
same_losses() {
  python3 - "$@" <<'PY'
import json, sys
one_path, two_path, steps, tol, what = sys.argv[1:6]
min_drop = float(sys.argv[6]) if len(sys.argv) > 6 else None
def losses(path):
    return [e["loss"] for e in map(json.loads, open(path)) if e["event"] == "train"]
one, two = losses(one_path), losses(two_path)
assert len(one) == len(two) == int(steps), (len(one), len(two))
worst = max(abs(a - b) / abs(a) for a, b in zip(one, two))
assert worst <= float(tol), worst
if min_drop is not None:
    assert two[-1] < two[0] - min_drop, two  # and it learns
print(f"ok: {what} (max relative difference {worst:.2g})")
PY
}

# make_word_corpus MODEL PREFIX: 300 lines of words from license texts tokenized by MODEL's tokenizer into
# PREFIX.bin/.idx (oar preprocess), a pretraining corpus small enough for tests.
make_word_corpus() {
  python3 - <<'PY'
import json, random
r = random.Random(3)
words = "the a license software copy work program source code free terms any you may of to and".split()
with open("corpus.jsonl", "w") as f:
    for i in range(300):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(r.randint(8, 30)))}) + "\n")
PY
  mkdir -p "$(dirname "$2")"
  "$OAR" preprocess --model_name_or_path "$1" --input_path corpus.jsonl --output_prefix "$2" --append_eos >/dev/null
}

# make_calibration_data DIR COUNT: DIR/train.json of COUNT src/tgt lines (a phrase and its words reversed), the
# PTQ tests' calibration data.
make_calibration_data() {
  mkdir -p "$1"
  python3 - "$1/train.json" "$2" <<'PY'
import json, sys
words = "the cat sat on a mat while the dog ran past every house in the quiet town".split()
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        src = " ".join(words[(i + j) % len(words)] for j in range(6 + i % 5))
        f.write(json.dumps({"src": src, "tgt": " ".join(reversed(src.split()))}) + "\n")
PY
}
