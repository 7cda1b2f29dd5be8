#!/usr/bin/env bash
# Build the test cluster's binaries into a cache outside the repo and print the bin dir.
#
# Usage: build.sh [--with-node] [--print-bin-dir]
#   --with-node      also build kubelet and kube-proxy (or THPCHECK_BUILD_NODE=1); off by
#                    default so CI's cold build stays lean.
#   --print-bin-dir  print the bin dir for the current pins and exit without building.
#
# Idempotent: the bin dir is keyed by a hash of pins.env, go.mod, go.sum, this script and the
# Go version, so a binary found there was built from exactly these pins and nothing is rebuilt.
# GOMODCACHE and GOCACHE live under the same cache root (unless set) and are kept between runs.
# Only the bin dir path goes to stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=pins.env
source "$here/pins.env"

with_node="${THPCHECK_BUILD_NODE:-0}"
print_only=0
for arg in "$@"; do
  case "$arg" in
    --with-node) with_node=1 ;;
    --print-bin-dir) print_only=1 ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

export GOTOOLCHAIN=local
command -v go >/dev/null || { echo "build.sh: go not found on PATH (need Go >= 1.26)" >&2; exit 3; }

cache_root="${THPCHECK_CACHE:-$HOME/.cache/thp-checker}"
key="$(cat "$here/pins.env" "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" <(go version) |
  sha256sum | cut -c1-16)"
key_dir="$cache_root/k8s/$key"
bin="$key_dir/bin"
if [[ "$print_only" == 1 ]]; then echo "$bin"; exit 0; fi

export GOMODCACHE="${GOMODCACHE:-$cache_root/go/mod}"
export GOCACHE="${GOCACHE:-$cache_root/go/build}"
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

core=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm)
node=(kubelet kube-proxy)
wanted=("${core[@]}")
[[ "$with_node" == 1 ]] && wanted+=("${node[@]}")

stages="$key_dir/share/kwok-stages.yaml"

missing() {
  # Why: the only freshness check needed is existence, because the dir is keyed by the pins.
  local b
  for b in "$@"; do [[ -x "$bin/$b" ]] || echo "$b"; done
  [[ -f "$stages" ]] || echo kwok-stages
}

mkdir -p "$key_dir"
exec 9>"$key_dir/.lock"
flock 9 # a second build.sh with the same pins waits here instead of racing
mapfile -t todo < <(missing "${wanted[@]}")
if [[ ${#todo[@]} -eq 0 ]]; then
  echo "build.sh: up to date ($key)" >&2
  echo "$bin"
  exit 0
fi
echo "build.sh: building ${todo[*]} into $bin" >&2

stage="$(mktemp -d "$key_dir/stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
tags="selinux,notest,grpcnotrace"

needs() {
  # Why: build only what is missing, so an opt-in kubelet does not rebuild the control plane.
  local b
  for b in "$@"; do [[ " ${todo[*]} " == *" $b "* ]] && return 0; done
  return 1
}

k8s_ldflags() {
  # Why: without these /version reports v0.0.0-master, which breaks Helm's kubeVersion checks.
  local v="$K8S_VERSION" minor date p out="-s -w"
  minor="$(cut -d. -f2 <<<"${v#v}")"
  date="$(cd "$here" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    out+=" -X $p.gitTreeState=clean -X $p.gitCommit= -X $p.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  echo "$out"
}

build_k8s() {
  local ld pkgs=() b
  ld="$(k8s_ldflags)"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy; do
    needs "$b" && pkgs+=("k8s.io/kubernetes/cmd/$b")
  done
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    # Upstream builds these static (KUBE_STATIC_LIBRARIES in hack/lib/golang.sh).
    (cd "$here" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "$ld" -o "$stage/" "${pkgs[@]}")
  fi
  if needs etcd; then
    (cd "$here" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "-s -w" \
      -o "$stage/etcd" go.etcd.io/etcd/server/v3)
  fi
  if needs kubelet; then
    # Upstream builds kubelet with cgo at its default; gcc is on the machine.
    (cd "$here" && go build -trimpath -tags "$tags" -ldflags "$ld" -o "$stage/" \
      k8s.io/kubernetes/cmd/kubelet)
  fi
}

build_installed() {
  # Why: kwok and helm have no replace directives, so `go install pkg@version` pins them.
  local minor
  minor="$(cut -d. -f2 <<<"${K8S_VERSION#v}")"
  if needs kwok kwokctl; then
    GOBIN="$stage" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
      -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} \
      -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}" \
      "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  fi
  if needs helm; then
    # The k8sVersion pairs set Helm's default .Capabilities.KubeVersion (else v1.20.0).
    GOBIN="$stage" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
      -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
      -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
}

write_kwok_stages() {
  # Why: the kwok controller has no built-in stages (kwokctl normally writes them); take the
  # pinned release's own fast node/pod stages from the module cache instead of copying them
  # into this repo.
  local dir f
  dir="$(cd "$stage" && GOFLAGS=-modcacherw go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  mkdir -p "$(dirname "$stages")"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    cat "$dir/kustomize/stage/$f"
  done >"$stage/kwok-stages.yaml"
  mv -f "$stage/kwok-stages.yaml" "$stages"
}

build_k8s
build_installed
needs kwok-stages && write_kwok_stages
mkdir -p "$bin"
for b in "${todo[@]}"; do
  [[ "$b" == kwok-stages ]] && continue
  [[ -x "$stage/$b" ]] || { echo "build.sh: $b was not built" >&2; exit 1; }
  mv -f "$stage/$b" "$bin/$b" # same filesystem: atomic, so a half-built binary is never seen
done
echo "build.sh: done ($key)" >&2
echo "$bin"
