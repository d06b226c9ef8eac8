#!/bin/sh
# The third-party inference servers the backend tests talk to, each in its own virtual environment
# (their pins clash with ours and with each other): DIR/<name>/ for every tests/servers/<name>.txt,
# a pip requirements file. Re-run only when the requirements file changed.
set -eu
dir=${1:-.servers}
python=${PYTHON:-python3}
here=$(dirname "$0")
mkdir -p "$dir"
for req in "$here"/*.txt; do
  [ -f "$req" ] || continue
  name=$(basename "$req" .txt)
  stamp="$dir/$name/.installed"
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    continue
  fi
  echo "==> installing the $name server into $dir/$name"
  rm -rf "${dir:?}/$name"
  "$python" -m venv "$dir/$name"
  "$dir/$name/bin/pip" install --quiet --progress-bar off --upgrade pip
  "$dir/$name/bin/pip" install --quiet --progress-bar off -r "$req"
  cp "$req" "$stamp"
done
