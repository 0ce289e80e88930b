#!/usr/bin/env bash
# Checks of the deploy files with real tools (issue 8), run by `make deploy-check`:
#   - the generated files are current (python -m deploy.generate --check)
#   - kustomize build of each overlay            (kustomize, built from the Go module proxy)
#   - docker compose config                      (the compose CLI plugin, built from the Go module proxy)
#   - tofu fmt -check of terraform/              (OpenTofu, built from the Go module proxy)
#   - checkov over Dockerfiles, compose, the built manifests and Terraform (PyPI)
# Tools are built once per machine, idempotently, into ~/.cache/spamops/deploy-tools (pinned
# versions; SPAMOPS_DEPLOY_TOOLS overrides): outside the clone, so a fresh clone reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="${SPAMOPS_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/spamops/deploy-tools}"
BIN="$TOOLS/bin"
mkdir -p "$BIN"

KUSTOMIZE_VERSION=v5.8.1
COMPOSE_VERSION=v2.40.3
TOFU_VERSION=v1.10.6
CHECKOV_VERSION=3.3.30

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

log() { printf '[deploy-check] %s\n' "$*" >&2; }

# go_build <module@version> <package dir in the module> <binary>: builds from the module's
# own go.mod (its replace/exclude directives rule out `go install mod@version`).
go_build() {
  local mod=$1 pkg=$2 out=$3 stamp="$BIN/.$3.version" dir
  if [[ -x "$BIN/$out" && "$(cat "$stamp" 2>/dev/null)" == "$mod" ]]; then return; fi
  log "building $out from $mod"
  local start=$SECONDS
  dir=$(go mod download -json "$mod" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  (cd "$dir" && go build -trimpath -ldflags="-s -w" -o "$BIN/$out.tmp" "$pkg")
  mv "$BIN/$out.tmp" "$BIN/$out"
  echo "$mod" > "$stamp"
  log "built $out in $((SECONDS - start))s"
}

GO_TOOLCHAIN=go1.25.4

# A Go new enough for these modules: the machine's (>= 1.24), else the official toolchain
# from the Go module proxy (golang.org/toolchain), unpacked into the tools directory.
ensure_go() {
  if command -v go >/dev/null; then
    local minor
    minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
    if [[ $minor =~ ^[0-9]+$ ]] && ((minor >= 24)); then return; fi
  fi
  local root="$TOOLS/go-$GO_TOOLCHAIN"
  if [[ ! -x "$root/bin/go" ]]; then
    log "fetching the Go toolchain $GO_TOOLCHAIN from the Go module proxy"
    local zip="$TOOLS/go.zip" proxy="${GOPROXY:-https://proxy.golang.org}"
    proxy=${proxy%%,*}
    curl -fsSL -o "$zip" "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-amd64.zip"
    rm -rf "$TOOLS/go-unpack" && mkdir -p "$TOOLS/go-unpack"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$zip" "$TOOLS/go-unpack"
    mv "$TOOLS/go-unpack/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-amd64" "$root"
    chmod +x "$root"/bin/* "$root"/pkg/tool/*/* 2>/dev/null || true
    rm -rf "$zip" "$TOOLS/go-unpack"
  fi
  export PATH="$root/bin:$PATH" GOROOT="$root"
}

install_tools() {
  ensure_go
  go_build "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" . kustomize
  go_build "github.com/docker/compose/v2@$COMPOSE_VERSION" ./cmd docker-compose
  go_build "github.com/opentofu/opentofu@$TOFU_VERSION" ./cmd/tofu tofu
  if [[ "$(cat "$TOOLS/checkov/.version" 2>/dev/null)" != "$CHECKOV_VERSION" ]]; then
    log "installing checkov $CHECKOV_VERSION"
    local uv=uv
    command -v uv >/dev/null || uv="$HOME/.local/bin/uv"
    "$uv" venv -q --allow-existing --python 3.11 "$TOOLS/checkov"
    VIRTUAL_ENV="$TOOLS/checkov" "$uv" pip install -q "checkov==$CHECKOV_VERSION"
    echo "$CHECKOV_VERSION" > "$TOOLS/checkov/.version"
  fi
}

install_tools
BUILD="$TOOLS/build"
rm -rf "$BUILD" && mkdir -p "$BUILD/manifests"

log "generated files are current"
"$ROOT/.venv/bin/python" -m deploy.generate --check

for overlay in staging production; do
  log "kustomize build deploy/overlays/$overlay"
  "$BIN/kustomize" build "deploy/overlays/$overlay" > "$BUILD/manifests/$overlay.yaml"
done
log "kustomize build deploy/istio"
"$BIN/kustomize" build deploy/istio > "$BUILD/manifests/istio.yaml"

log "docker compose config"
compose_env=(POSTGRES_PASSWORD=check SPAMOPS_APPROVAL_SECRET=check 'SPAMOPS_APPROVERS=["alice"]')
env "${compose_env[@]}" "$BIN/docker-compose" -f docker-compose.yml config --quiet
# Unprotected approvals must not even get a configuration (issue 17).
for missing in SPAMOPS_APPROVAL_SECRET SPAMOPS_APPROVERS; do
  kept=()
  for assignment in "${compose_env[@]}"; do
    [[ $assignment == "$missing="* ]] || kept+=("$assignment")
  done
  if env -u "$missing" "${kept[@]}" "$BIN/docker-compose" -f docker-compose.yml config --quiet \
      2>/dev/null; then
    echo "docker-compose.yml accepted an unset $missing" >&2
    exit 1
  fi
done

log "tofu fmt -check terraform/"
"$BIN/tofu" fmt -check -recursive -diff terraform

log "checkov"
"$TOOLS/checkov/bin/checkov" --config-file deploy/checkov.yaml \
  -d "$BUILD/manifests" --framework kubernetes
"$TOOLS/checkov/bin/checkov" --config-file deploy/checkov.yaml \
  -d terraform --framework terraform
"$TOOLS/checkov/bin/checkov" --config-file deploy/checkov.yaml \
  --framework dockerfile -f services/trainer/Dockerfile -f services/registry-bridge/Dockerfile \
  -f services/inference/Dockerfile -f services/monitor/Dockerfile -f services/milter/Dockerfile \
  -f services/gateway/Dockerfile \
  -f deploy/docker/mlflow.Dockerfile -f deploy/docker/triton.Dockerfile
log "all deploy checks passed"
