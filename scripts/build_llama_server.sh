#!/usr/bin/env bash
# Build llama.cpp's native `llama-server` from the llama.cpp sources inside the llama-cpp-python
# sdist on PyPI (the only registry reachable here), into a cache directory ignored by git.
#
#   scripts/build_llama_server.sh            # -> .cache/llama-server/bin/llama-server
#   LLAMA_SERVER_DIR=/somewhere scripts/build_llama_server.sh
#
# Idempotent: does nothing when the binary is already built from the pinned version. About
# 8 minutes on 2 cores; runs under `nice` and CMAKE_BUILD_PARALLEL_LEVEL (default 2). Needs cmake,
# a C++17 compiler and pip; no network beyond PyPI (the web UI is neither downloaded nor built,
# HTTPS support is off). The tests (tests/test_backend_openai.py) and bench/sampling_speed.py look
# for the binary at $LLAMA_SERVER_BIN, else $LLAMA_SERVER_DIR/bin/llama-server, else
# .cache/llama-server/bin/llama-server.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${LLAMA_SERVER_DIR:-$ROOT/.cache/llama-server}"
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
PIP="${PIP:-}"
if [[ -z "$PIP" ]]; then
    if [[ -x "$ROOT/.venv/bin/pip" ]]; then PIP="$ROOT/.venv/bin/pip"; else PIP="python3 -m pip"; fi
fi

BIN="$DIR/bin/llama-server"
STAMP="$DIR/bin/.built-from"
if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "llama-cpp-python==$VERSION" ]]; then
    echo "llama-server already built from llama-cpp-python==$VERSION: $BIN"
    exit 0
fi

for tool in cmake c++; do
    command -v "$tool" >/dev/null || { echo "build_llama_server.sh: '$tool' is required (apt-get install cmake g++)" >&2; exit 1; }
done

mkdir -p "$DIR/src" "$DIR/bin"
SDIST="$DIR/src/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    echo "downloading the llama-cpp-python==$VERSION sdist from PyPI ..."
    # Without build isolation pip skips setting up scikit-build-core just to read the metadata;
    # where that fails (scikit-build-core not installed) the isolated download is the fallback.
    $PIP download --quiet --no-binary :all: --no-deps --no-build-isolation "llama-cpp-python==$VERSION" -d "$DIR/src" >/dev/null 2>&1 \
        || $PIP download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$DIR/src"
fi
SRC="$DIR/src/llama_cpp_python-$VERSION"
if [[ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]]; then
    tar -xzf "$SDIST" -C "$DIR/src"
fi

GENERATOR=()
if command -v ninja >/dev/null; then GENERATOR=(-G Ninja); fi
BUILD="$DIR/build-$VERSION"
start=$(date +%s)
nice -n 10 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$DIR/cmake-configure.log" 2>&1 \
    || { tail -40 "$DIR/cmake-configure.log" >&2; exit 1; }
CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" nice -n 10 cmake --build "$BUILD" --target llama-server -j "$JOBS" >"$DIR/cmake-build.log" 2>&1 \
    || { tail -40 "$DIR/cmake-build.log" >&2; exit 1; }
cp "$BUILD/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "llama-cpp-python==$VERSION" >"$STAMP"
"$BIN" --version 2>&1 | head -2 || true
echo "built $BIN in $(( $(date +%s) - start )) s"
