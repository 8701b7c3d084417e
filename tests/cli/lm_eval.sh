#!/usr/bin/env bash
# lm-evaluation-harness itself (local-completions, as people evaluate vLLM) against `oar serve`: a local
# multiple-choice task (loglikelihood requests: echo + logprobs + max_tokens) and a generate_until task, both
# defined by YAML + JSON files in tests/fixtures/lm_eval. tests/reference/lm_eval_check.py then holds lm-eval's
# loglikelihoods, accuracy and generations against the NumPy reference forward pass of the same model.
# lm-eval and its dependencies come from PyPI, all pinned (tests/reference/lm_eval_requirements.txt; no torch),
# into a venv kept in the build tree; skipped (77) only when PyPI cannot be reached.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
REQ="$SRC/tests/reference/lm_eval_requirements.txt"
# One venv for every build tree (release, ASan), like .venv-peft; one creator at a time.
VENV="${OAR_LM_EVAL_VENV:-$SRC/.venv-lm-eval}"
PY="$VENV/bin/python"
mkdir -p "$VENV"
[ -f "$VENV/.gitignore" ] || printf '*\n' > "$VENV/.gitignore"
exec 9>"$VENV/.lock"
flock 9
if ! cmp -s "$REQ" "$VENV/requirements.installed" 2>/dev/null; then
  find "$VENV" -mindepth 1 -maxdepth 1 ! -name .gitignore ! -name .lock -exec rm -rf {} +
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  if ! "$PY" -m pip install -q --disable-pip-version-check -r "$REQ" > pip.log 2>&1; then
    if ! "$PY" -m pip index versions lm-eval --disable-pip-version-check >/dev/null 2>&1; then
      echo "SKIP: pip cannot reach PyPI, so lm-evaluation-harness cannot be installed"
      exit 77
    fi
    cat pip.log
    die "pip install -r $REQ failed although PyPI is reachable"
  fi
  cp "$REQ" "$VENV/requirements.installed"
fi
flock -u 9

M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
start_server serve --model_name_or_path "$M" --served_model_name tiny

rm -rf tasks out && mkdir -p tasks
for f in oar_mc oar_gen; do sed "s|@DATA@|$SRC/tests/fixtures/lm_eval|" "$SRC/tests/fixtures/lm_eval/$f.yaml" > "tasks/$f.yaml"; done
# Offline: the data and the tokenizer are local files.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$WORK/hf_home" TOKENIZERS_PARALLELISM=false
"$VENV/bin/lm_eval" --model local-completions \
  --model_args "model=tiny,base_url=$URL/v1/completions,tokenizer_backend=huggingface,tokenizer=$M,num_concurrent=4,max_retries=1,timeout=60" \
  --tasks oar_mc,oar_gen --include_path tasks --output_path out --log_samples --batch_size 1 \
  > lm_eval.log 2>&1 || { tail -40 lm_eval.log; tail -5 serve.err; die "lm_eval failed"; }
grep -A8 '| *Tasks' lm_eval.log || true
"$PY" "$SRC/tests/reference/lm_eval_check.py" "$M" out || die "lm-eval's results differ from the reference"
stop_server serve
