#!/usr/bin/env bash
# Build examples/cpp/psp_infer against the ONNX Runtime inside the Python environment.
#
# No Debian bookworm package or PyPI wheel ships ONNX Runtime's C/C++ headers, so they come
# from Debian trixie's libonnxruntime-dev (1.21, older than the wheel's library: the C API
# accepts older headers, never newer), downloaded with a private apt configuration and
# unpacked into the build folder; nlohmann-json the same way. Nothing is installed into the
# system and no third-party file enters the repository.
#
# usage: examples/cpp/build.sh PYTHON BUILD_DIR
set -euo pipefail
python=${1:?python interpreter}
out=$(realpath -m "${2:?build directory}")
here=$(cd "$(dirname "$0")" && pwd)
deps="$out/deps"
apt_root="$out/apt"
mkdir -p "$deps" "$apt_root/lists/partial" "$apt_root/archives/partial" "$apt_root/sources"

if [ ! -f "$deps/usr/include/onnxruntime/onnxruntime_cxx_api.h" ] || [ ! -f "$deps/usr/include/nlohmann/json.hpp" ]; then
  cat > "$apt_root/sources/trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_root/sources"
            -o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache::Archives=$apt_root/archives"
            -o APT::Architecture=amd64 -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" -qq update
  (cd "$apt_root/archives" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev nlohmann-json3-dev)
  for deb in "$apt_root"/archives/*.deb; do dpkg-deb -x "$deb" "$deps"; done
fi

library=$("$python" -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.1*")))[-1])')
ln -sf "$library" "$out/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$out/libonnxruntime.so"

g++ -std=c++17 -O2 -Wall -Wextra \
    -isystem "$deps/usr/include/onnxruntime" -isystem "$deps/usr/include" \
    "$here/psp_infer.cpp" -L"$out" -lonnxruntime -Wl,-rpath,'$ORIGIN' -o "$out/psp_infer"
echo "built $out/psp_infer (ONNX Runtime $("$python" -c 'import onnxruntime; print(onnxruntime.__version__)'), headers 1.21)"
