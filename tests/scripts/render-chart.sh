#!/usr/bin/env bash
# tests/scripts/render-chart.sh - regenerates the committed renders of the Helm chart:
# charts/headroom/rendered/<name>.yaml from charts/headroom/ci/<name>-values.yaml, with the test
# bed's helm (tests/scripts/install-k8s.sh builds it). The test `chart` fails when they differ.
#
#   bash tests/scripts/render-chart.sh           # rewrite the renders
#   bash tests/scripts/render-chart.sh --check   # exit 1 and show the diff when one is stale
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"
check=false
case "${1:-}" in
--check) check=true ;;
"") ;;
*)
    echo "render-chart.sh: unknown argument '$1' (expected --check)" >&2
    exit 64
    ;;
esac
bash "$here/install-k8s.sh" >/dev/null
helm="$HEADROOM_HELM_HOME/bin/helm"
chart="$HEADROOM_ROOT/charts/headroom"
stale=0
for values in "$chart"/ci/*-values.yaml; do
    name="$(basename "$values" -values.yaml)"
    out="$chart/rendered/$name.yaml"
    # The same command as tests/it/chart.rs runs.
    rendered="$("$helm" template headroom "$chart" --namespace headroom --values "$values")"
    if $check; then
        if ! diff -u "$out" - <<<"$rendered"; then
            stale=1
        fi
    else
        printf '%s\n' "$rendered" >"$out"
        echo "wrote ${out#"$HEADROOM_ROOT"/}"
    fi
done
exit "$stale"
