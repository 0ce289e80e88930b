#!/usr/bin/env bash
# Install everything the local spamops stack needs, on a fresh Debian machine or
# an already prepared one (each step is skipped when its result is there):
#   apt packages (Java 17+, Maven, Redis, kcat, Node/npm, curl, libpython3.11, spamd,
#   libmilter-dev and a C compiler for pymilter, Postfix for the milter's end-to-end test,
#   chromium for the headless-browser test of the Evidently UI),
#   uv, the workspace's .venv, Kafka's jars and Triton's own virtual env.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bootstrap: %s\n' "$*"; }
has() { command -v "$1" >/dev/null 2>&1; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if has sudo; then SUDO="sudo"; else
        say "not root and no sudo: apt packages can only be checked, not installed"
    fi
fi

java_major() {
    # "openjdk version "17.0.15" ..." -> 17 ; "1.8.0_x" -> 8
    local version
    version=$(java -version 2>&1 | sed -n -E 's/.*version "([0-9._]+).*/\1/p' | head -n1)
    if [[ $version == 1.* ]]; then version=${version#1.}; fi
    echo "${version%%.*}"
}

missing=()
if ! has java || [[ $(java_major) -lt 17 ]]; then missing+=(openjdk-17-jre-headless); fi
has mvn || missing+=(maven)
has redis-server || missing+=(redis-server)
has kcat || missing+=(kcat)
has npm || missing+=(nodejs npm)
has curl || missing+=(curl)
# SpamAssassin's spamd/spamc: the comparison in benchmarks/stream_throughput.py.
[[ -x /usr/sbin/spamd ]] || missing+=(spamd)
has spamc || missing+=(spamc)
# Headless Chromium: tests/integration/test_drift_ui.py opens the Evidently UI in it.
has chromium || missing+=(chromium)
# Triton's Python-backend stub links against the shared libpython3.11.
libs=$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)
[[ $libs == *libpython3.11.so.1.0* ]] || missing+=(libpython3.11)
# The milter's pymilter is built from source against libmilter (uv sync below), and its
# end-to-end test runs a private Postfix instance (the system one stays unconfigured).
[[ -f /usr/include/libmilter/mfapi.h ]] || missing+=(libmilter-dev)
has gcc || missing+=(gcc libc6-dev)
[[ -x /usr/sbin/postfix ]] || missing+=(postfix)
if ! has uv && ! python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi

if ((${#missing[@]})); then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [[ " ${missing[*]} " == *" postfix "* ]]; then
        # No system mail configuration (and no system Postfix started): tests run their own.
        echo "postfix postfix/main_mailer_type select No configuration" |
            $SUDO debconf-set-selections
    fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" redis-server "* ]]; then
        # The package starts a system Redis on 6379, the port `spamops up` wants:
        # the stack runs its own, so stop the one we just installed.
        if has systemctl && systemctl is-active --quiet redis-server 2>/dev/null; then
            say "stopping and disabling the system redis-server service"
            $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
        elif has service && service redis-server status >/dev/null 2>&1; then
            say "stopping the system redis-server service"
            $SUDO service redis-server stop >/dev/null 2>&1 || true
        fi
    fi
else
    say "apt packages: all present"
fi

export PATH="$HOME/.local/bin:$PATH"
if ! has uv; then
    say "pip install uv"
    # Debian marks its Python as externally managed (PEP 668): fall back to the override.
    python3 -m pip install -q uv 2>/dev/null ||
        python3 -m pip install -q --break-system-packages uv
fi

say "uv sync --all-packages --frozen"
uv sync -q --all-packages --frozen

say "installing Kafka's jars and Triton's env (python -m spamops_cli.stack install)"
.venv/bin/python -m spamops_cli.stack install

say "done"
