#!/usr/bin/env bash
# Run on the development machine (it needs PyPI) before a GPU call: fills .gpu/ (ignored by git)
# with the pure-Python wheels scripts/gpu_check.sh needs and the GPU image lacks (diffusers,
# open_clip_torch, lpips, tyro, ... at the versions installed here, where the tests pass), in
# .gpu/whl/, to travel with carry [".gpu"].
# The image already has torch, torchvision, numpy, scipy, safetensors, huggingface_hub, pytest.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .gpu/whl
exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"

names=(diffusers importlib_metadata open_clip_torch ftfy wcwidth timm lpips tyro
	docstring_parser typeguard typing_extensions)
pins=()
for name in "${names[@]}"; do
	pins+=("$name==$($PY -c "import importlib.metadata as m; print(m.version('$name'))")")
done
echo "wheels: ${pins[*]}"
rm -f .gpu/whl/*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 -d .gpu/whl "${pins[@]}"
du -sh .gpu
