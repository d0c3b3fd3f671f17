#!/usr/bin/env bash
# Install Label Studio into its OWN venv (.venv-labelstudio), used only by the tests that run the
# export/import round trip against a real server. It is kept out of the product's .venv because it
# pins Django and ~100 other packages that autoannotator does not need. Idempotent: skips when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VERSION=${LABEL_STUDIO_VERSION:-1.23.2}
VENV=.venv-labelstudio
if [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" -c "import label_studio" 2>/dev/null; then
  echo "labelstudio_env.sh: $VENV already has label-studio" >&2
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
echo "labelstudio_env.sh: installing label-studio==$VERSION into $VENV (about 4 minutes, once)..." >&2
"$VENV/bin/python" -m pip install -q "label-studio==$VERSION"
"$VENV/bin/python" -c "import label_studio" 
echo "labelstudio_env.sh: label-studio $VERSION ready in $VENV" >&2
