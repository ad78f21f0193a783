#!/usr/bin/env bash
# The edge runner on aarch64 (64-bit Raspberry Pi OS) under emulation, compared with x86.
#
#   benchmarks/edge_arm.sh MODEL.onnx|MODEL.tflite IMAGE_FOLDER [WORKDIR]
#
# 1. a Debian arm64 sysroot with Python 3.11 (from Debian's own arm64 packages, unpacked with
#    dpkg-deb -x: nothing is installed into this system),
# 2. aarch64 wheels of numpy, Pillow and the runtime (onnxruntime for .onnx, ai-edge-litert for .tflite) (pip download --platform manylinux2014_aarch64
#    --only-binary=:all:), unzipped into a site folder,
# 3. `python -m medlite.edge` run under qemu-aarch64-static (called directly with -L SYSROOT, so no
#    binfmt_misc registration is needed) and natively on x86 with the same files,
# 4. the two JSON reports compared: same classes, probabilities within 1e-5.
#
# Needs: qemu-user-static (apt-get install qemu-user-static), network access to the Debian archive
# and PyPI, and `dpkg --add-architecture arm64 && apt-get update` once (done here when missing).
# Not a CI test: it downloads ~60 MB and runs emulated Python (minutes).
#
# Measured in the medlite sandbox (Debian 12, qemu-user-static 7.2, no binfmt_misc):
#   .onnx  : onnxruntime 1.20.1 aarch64 gives the x86 (onnxruntime 1.32.0) classes on every image,
#            probabilities within 3e-7. onnxruntime 1.32.0 aarch64 segfaults on import under qemu.
#   .tflite: ai-edge-litert 2.3.0 aarch64 imports, but creating an Interpreter segfaults under
#            qemu 7.2 (with and without the default XNNPACK delegate): emulation, not the model,
#            is what fails there; run this part on a real Pi.
set -euo pipefail

MODEL=${1:?usage: edge_arm.sh MODEL.onnx IMAGE_FOLDER [WORKDIR]}
IMAGES=${2:?usage: edge_arm.sh MODEL.onnx IMAGE_FOLDER [WORKDIR]}
WORK=${3:-${TMPDIR:-/tmp}/medlite-edge-arm}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY_X86=${PYTHON:-python3}
NUMPY=${NUMPY_VERSION:-2.4.6}
# onnxruntime 1.32.0's aarch64 wheel segfaults on import under Debian 12's qemu 7.2 user mode
# (uncaught target signal 11, before any medlite code runs); 1.20.1 imports and runs. On a real
# Raspberry Pi 1.32.0 is the one to use: set ORT_VERSION=1.32.0.
ORT=${ORT_VERSION:-1.20.1}
LITERT=${LITERT_VERSION:-2.3.0}
PILLOW=${PILLOW_VERSION:-13.0.0}

QEMU=$(command -v qemu-aarch64-static || true)
if [ -z "$QEMU" ]; then
  echo "blocked: qemu-aarch64-static not found (apt-get install qemu-user-static)" >&2
  exit 3
fi
mkdir -p "$WORK/debs" "$WORK/sysroot" "$WORK/site" "$WORK/wheels"

# -- 1. arm64 Python sysroot ---------------------------------------------------------------
if [ ! -x "$WORK/sysroot/usr/bin/python3.11" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  PKGS="libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libssl3 libuuid1 libmpdec3
        libreadline8 libtinfo6 libncursesw6 libsqlite3-0 libdb5.3 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2
        libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1
        libpython3.11-minimal libpython3.11-stdlib python3.11-minimal"
  (cd "$WORK/debs" && for p in $PKGS; do apt-get download -q "$p:arm64" >/dev/null 2>&1 || echo "warning: $p:arm64 not downloaded" >&2; done)
  for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/sysroot"; done
fi
ARMPY=("$QEMU" -L "$WORK/sysroot" "$WORK/sysroot/usr/bin/python3.11")
echo "arm64 python: $("${ARMPY[@]}" -c 'import platform, sys; print(sys.version.split()[0], platform.machine())')"

# -- 2. aarch64 wheels: numpy, Pillow and the model's runtime only ------------------------------
case "$MODEL" in
  *.tflite) RUNTIME_WHEEL="ai-edge-litert==$LITERT"; TAG=litert-$LITERT ;;
  *)        RUNTIME_WHEEL="onnxruntime==$ORT"; TAG=ort-$ORT ;;
esac
SITE="$WORK/site-$TAG"
if [ ! -f "$SITE/.done" ]; then
  rm -rf "$SITE" "$WORK/wheels-$TAG" && mkdir -p "$SITE"
  "$PY_X86" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_aarch64 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
    --python-version 3.11 --implementation cp -d "$WORK/wheels-$TAG" \
    "numpy==$NUMPY" "pillow==$PILLOW" "$RUNTIME_WHEEL"
  for whl in "$WORK/wheels-$TAG"/*.whl; do "$PY_X86" -m zipfile -e "$whl" "$SITE"; done
  touch "$SITE/.done"
fi

# -- 3. run the edge runner on both ------------------------------------------------------------
# The medlite sources are copied so the arm run sees exactly the x86 run's code.
rm -rf "$WORK/src" && cp -r "$REPO/src" "$WORK/src"
echo "x86_64 run..."
PYTHONPATH="$WORK/src" "$PY_X86" -m medlite.edge "$MODEL" "$IMAGES" --threads 1 --indent 0 > "$WORK/x86.json"
echo "aarch64 run (emulated, slow)..."
START=$(date +%s)
PYTHONPATH="$WORK/src:$SITE" PYTHONHOME="$WORK/sysroot/usr" "${ARMPY[@]}" -m medlite.edge "$MODEL" "$IMAGES" \
  --threads 1 --indent 0 > "$WORK/arm64.json"
echo "aarch64 run took $(( $(date +%s) - START )) s under emulation"

# -- 4. compare ---------------------------------------------------------------------------------
"$PY_X86" - "$WORK/x86.json" "$WORK/arm64.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ia = {r["path"]: r for r in a["images"]}
ib = {r["path"]: r for r in b["images"]}
assert ia.keys() == ib.keys(), "different image sets"
same = sum(ia[k]["class"] == ib[k]["class"] for k in ia)
diff = max(abs(ia[k]["probabilities"][c] - ib[k]["probabilities"][c]) for k in ia for c in ia[k]["probabilities"])
print(json.dumps({"images": len(ia), "same_class": same, "max_abs_prob_diff": diff,
                  "x86_runtime": a["runtime"], "arm64_runtime": b["runtime"],
                  "arm64_inference_ms_p50_emulated": b["summary"]["inference_ms_p50"],
                  "x86_inference_ms_p50": a["summary"]["inference_ms_p50"]}, indent=1))
sys.exit(0 if same == len(ia) and diff < 1e-5 else 1)
PY
