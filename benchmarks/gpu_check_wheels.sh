#!/bin/sh
# The wheels benchmarks/gpu_check.py installs on a GPU machine whose Python (3.12, x86-64) has torch, torchvision,
# pandas, pyarrow, numpy, scipy, pytest, pyyaml and psutil but none of these. Run here, where pip reaches PyPI;
# they land in .whl/ (ignored by git) and travel with the checkout. Only foolbox and what its import needs: Ray and
# Optuna are not among them (the check takes the Ray-free path: part (c) as plain processes, the Ray CUDA test
# skips); pydantic neither (part (b) reads the sweeps' train settings with pyyaml); requests neither (foolbox's
# model zoo, unused: pixelreg_core/attacks/common.py stands in for it). The size is printed at the end.
#
#     sh benchmarks/gpu_check_wheels.sh [PYTHON]        (default python3)
set -eu
PY=${1:-python3}
cd "$(dirname "$0")/.."
mkdir -p .whl
# foolbox and what it imports (GitPython for its model zoo; eagerpy). One version of each: two stop the install.
WHEELS="foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.1.45 gitdb==4.0.12 smmap==5.0.2"
for w in $WHEELS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
done
ls -l .whl
du -ch .whl/*.whl | tail -1
