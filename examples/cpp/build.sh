#!/usr/bin/env bash
# Build examples/cpp/psp_infer against the ONNX Runtime inside the Python environment.
#
# What it needs (examples/cpp/README.md):
#   - g++ with C++17, and a Python environment with the onnxruntime wheel: the program links the
#     wheel's libonnxruntime.so.1, nothing else is linked;
#   - headers only: ONNX Runtime's C/C++ API, nlohmann-json, stb_image and stb_image_write. The
#     onnxruntime wheel ships no headers, nor does any PyPI package, and Debian bookworm has no
#     libonnxruntime-dev: they come from Debian trixie's libonnxruntime-dev (1.21, older than the
#     wheel's library: the C API accepts older headers, never newer), with nlohmann-json3-dev and
#     libstb-dev from the same place.
# Headers already on this machine are used as they are, without a network: ONNXRUNTIME_INCLUDE,
# NLOHMANN_INCLUDE and STB_INCLUDE name folders that hold onnxruntime_cxx_api.h, nlohmann/json.hpp
# and stb_image.h + stb_image_write.h; else /usr/include (apt-get install libonnxruntime-dev
# nlohmann-json3-dev libstb-dev on trixie or later); else what an earlier run fetched into
# BUILD_DIR/deps. Only what is still missing is fetched: `apt-get download` of those Debian packages
# with a private apt configuration (the Debian archive is the one host reached), unpacked into
# BUILD_DIR/deps. Nothing is installed into the system and no third-party file enters the repository.
#
# usage: examples/cpp/build.sh PYTHON BUILD_DIR
set -euo pipefail
python=${1:?python interpreter}
out=$(realpath -m "${2:?build directory}")
here=$(cd "$(dirname "$0")" && pwd)
deps="$out/deps"
mkdir -p "$out"

# first folder (of "$@") holding every file named in $files, relative to it
find_headers() {
  local dir file
  for dir in "$@"; do
    [ -n "$dir" ] || continue
    for file in $files; do [ -f "$dir/$file" ] || continue 2; done
    echo "$dir"
    return 0
  done
  return 1
}

missing=()
files="onnxruntime_cxx_api.h onnxruntime_c_api.h"
ort_inc=$(find_headers "${ONNXRUNTIME_INCLUDE:-}" /usr/include/onnxruntime "$deps/usr/include/onnxruntime") ||
  missing+=(libonnxruntime-dev)
files="nlohmann/json.hpp"
json_inc=$(find_headers "${NLOHMANN_INCLUDE:-}" /usr/include "$deps/usr/include") || missing+=(nlohmann-json3-dev)
files="stb_image.h stb_image_write.h"
stb_inc=$(find_headers "${STB_INCLUDE:-}" /usr/include/stb "$deps/usr/include/stb") || missing+=(libstb-dev)

if [ ${#missing[@]} -gt 0 ]; then
  for tool in apt-get dpkg-deb; do
    command -v "$tool" > /dev/null || {
      echo "build.sh: headers missing (${missing[*]}) and no $tool to fetch them: see examples/cpp/README.md" >&2
      exit 1
    }
  done
  echo "fetching headers: ${missing[*]} (Debian trixie, into $deps)"
  apt_root="$out/apt"
  mkdir -p "$deps" "$apt_root/lists/partial" "$apt_root/archives/partial" "$apt_root/sources"
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
  (cd "$apt_root/archives" && apt-get "${apt_opts[@]}" -qq download "${missing[@]}")
  for package in "${missing[@]}"; do dpkg-deb -x "$apt_root/archives/${package}"_*.deb "$deps"; done
  files="onnxruntime_cxx_api.h onnxruntime_c_api.h"
  ort_inc=${ort_inc:-$(find_headers "$deps/usr/include/onnxruntime")}
  files="nlohmann/json.hpp"
  json_inc=${json_inc:-$(find_headers "$deps/usr/include")}
  files="stb_image.h stb_image_write.h"
  stb_inc=${stb_inc:-$(find_headers "$deps/usr/include/stb")}
fi

library=$("$python" -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.1*")))[-1])')
wheel=$("$python" -c 'import onnxruntime; print(onnxruntime.__version__)')
headers=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$ort_inc/onnxruntime_c_api.h")
if [ -z "$headers" ] || [ "$headers" -gt "$(echo "$wheel" | cut -d. -f2)" ]; then
  echo "build.sh: $ort_inc has ONNX Runtime API ${headers:-?}, newer than the library's ($wheel): use headers of 1.$(echo "$wheel" | cut -d. -f2) or older" >&2
  exit 1
fi
ln -sf "$library" "$out/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$out/libonnxruntime.so"

g++ -std=c++17 -O2 -Wall -Wextra \
    -isystem "$ort_inc" -isystem "$json_inc" -isystem "$stb_inc" \
    "$here/psp_infer.cpp" -L"$out" -lonnxruntime -Wl,-rpath,'$ORIGIN' -o "$out/psp_infer"
echo "built $out/psp_infer (ONNX Runtime $wheel, headers of API $headers from $ort_inc)"
