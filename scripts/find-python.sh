#!/bin/sh
# Prints the first Python interpreter this project supports (3.11, 3.12 or 3.13: the versions
# TensorFlow 2.21 publishes wheels for), trying $PYTHON first, then python3, python3.13,
# python3.12 and python3.11. Says what to install when there is none.
supported() {
  "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null
}
seen=""
for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
  command -v "$candidate" >/dev/null 2>&1 || continue
  if supported "$candidate"; then
    command -v "$candidate"
    exit 0
  fi
  seen="$seen $candidate ($("$candidate" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'))"
done
cat >&2 <<MESSAGE
mnist-serving needs Python 3.11, 3.12 or 3.13 (TensorFlow 2.21 publishes wheels for those only).
Found:${seen:- no python3 at all}.
Install one (Debian/Ubuntu: apt-get install python3.12-venv; or: uv python install 3.12), or
name it: make PYTHON=/path/to/python3.12 run
MESSAGE
exit 1
