#!/usr/bin/env bash
# Checks the deployment files under deploy/ with their own tools
# (make check-deploy; scripts/test.sh runs it with the lint steps):
#   promtool check rules, promtool test rules   deploy/prometheus
#   promtool check rules on the dashboard's     deploy/grafana (each query as a
#     queries                                   recording rule: PromQL syntax)
#   systemd-analyze verify, and security        deploy/systemd, with ExecStart
#     (exposure at most 2.0)                    pointing at a fresh build
#   kubectl kustomize                           deploy/kubernetes (skipped
#                                               without kubectl)
#   go test ./deploy/                           every YAML and JSON file parsed,
#                                               metric names, probes, sandbox
# The build is the Dockerfile's (CGO_ENABLED=0); the image itself is not built.
# Installs what is missing: promtool from Debian's prometheus package,
# extracted into ~/.cache/reconcile (installing the package would set up a
# Prometheus server), and systemd and jq with apt-get (as root).
# Any warning fails the check: systemd-analyze verify exits 0 on unknown keys.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -d /usr/local/go/bin ]]; then
    PATH=/usr/local/go/bin:$PATH
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { printf '\n=== %s\n' "$*"; }

failed=()

# apt_get runs apt-get, updating the package lists once when it fails (a
# fresh machine has none).
apt_get() {
    apt-get -q "$@" </dev/null || { apt-get update -q </dev/null && apt-get -q "$@" </dev/null; }
}

install_missing() {
    local missing=() cmd pkg
    for cmd in "$@"; do
        pkg=${cmd#*:}
        command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "check-deploy.sh: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt_get install -y --no-install-recommends "${missing[@]}"
    fi
}

promtool_bin() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
        return
    fi
    local cache=${XDG_CACHE_HOME:-$HOME/.cache}/reconcile
    if [[ ! -x $cache/promtool ]]; then
        echo "check-deploy.sh: extracting promtool from Debian's prometheus package into $cache" >&2
        mkdir -p "$tmp/deb" "$cache"
        (cd "$tmp/deb" && apt_get download -o APT::Sandbox::User=root prometheus >&2)
        dpkg-deb -x "$tmp"/deb/prometheus_*.deb "$tmp/deb/root"
        install -m 0755 "$tmp/deb/root/usr/bin/promtool" "$cache/promtool"
    fi
    echo "$cache/promtool"
}

install_missing systemd-analyze:systemd jq:jq
promtool=$(promtool_bin)
"$promtool" --version | head -1

step "promtool check rules, test rules (deploy/prometheus)"
(
    cd deploy/prometheus
    "$promtool" check rules reconcile-rules.yaml
    "$promtool" test rules reconcile-rules_test.yaml reconcile-rescan-rules_test.yaml
) || failed+=(promtool)

step "promtool check rules on the dashboard's queries (deploy/grafana)"
# Grafana's variables become what they stand for, so that promtool parses
# each query.
jq '{groups: [{name: "dashboard", rules: ([.. | objects | select(has("expr")) | .expr
        | gsub("\\$__rate_interval"; "5m") | gsub("\\$(job|instance)"; ".+")]
        | to_entries | map({record: "dashboard:query\(.key)", expr: .value}))}]}' \
    deploy/grafana/reconcile-dashboard.json >"$tmp/dashboard-queries.yaml"
"$promtool" check rules "$tmp/dashboard-queries.yaml" || failed+=("dashboard queries")

step "systemd-analyze verify, security (deploy/systemd)"
CGO_ENABLED=0 go build -o "$tmp/reconcile" ./cmd/reconcile
mkdir "$tmp/units"
cp deploy/systemd/*.service deploy/systemd/*.timer "$tmp/units/"
# verify checks that ExecStart's binary exists.
sed -i "s|/usr/local/bin/reconcile|$tmp/reconcile|" "$tmp"/units/*.service
if ! out=$(systemd-analyze verify "$tmp"/units/* 2>&1) || [[ -n $out ]]; then
    echo "$out"
    failed+=("systemd-analyze verify")
fi
for service in "$tmp"/units/*.service; do
    systemd-analyze security --offline=true --threshold=20 --no-pager "$service" | tail -1 ||
        failed+=("systemd-analyze security $(basename "$service")")
done

step "kubectl kustomize (deploy/kubernetes)"
if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/kubernetes >"$tmp/kubernetes.yaml" && echo "ok: $(grep -c '^kind:' "$tmp/kubernetes.yaml") objects" ||
        failed+=("kubectl kustomize")
else
    echo "check-deploy.sh: no kubectl, skipped (go test ./deploy/ still parses the manifests)"
fi

step "go test ./deploy/"
go test -count=1 ./deploy/ || failed+=("go test ./deploy/")

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "check-deploy.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "check-deploy.sh: all deployment files check out"
