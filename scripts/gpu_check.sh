#!/usr/bin/env bash
# Every GPU check in one call, then one table (docs/performance.md):
#   train256  ov3 bench train, ov3-B/2 recipe at 256 px (all losses, LPIPS on), eager vs fast
#   train128  the same at 128 px (no LPIPS)
#   anchor    scripts/anchor_bench.py: the same pieces without our code, same card
#   encode    ov3 bench encode at 256 px against the released recipe
#   pytest    pytest -m gpu (tests/gpu: bf16 step, compiled / channels_last VAE, fused AdamW)
#   gen       ov3 bench generation: DiT-DH-XL training step (MFU) and sampling, eager vs fast
#   vlm       ov3 bench vlm: LLaVA stage-2 step (7B-shaped LM, 2 layers) tokens/s + MFU, tower images/s
#   demo      ov3 demo --preset demo_gpu (sized for 5 minutes): its report and wall time
# Each part has its own time limit, cut further so the whole stays within BUDGET_S (default
# 480 s); a part that fails or times out is reported and the rest still run, and a cut-off
# part keeps what it wrote (the demo's metrics.jsonl goes to logs.txt either way).
# Everything lands in $OUT (a new temporary folder when unset): status.tsv, logs.txt and the
# JSON / XML / Markdown the parts write (9 files). Then scripts/gpu_table.py prints the table.
#
# usage: bash scripts/gpu_check.sh
# env:   OUT, BUDGET_S, PARTS="train256 train128 anchor encode pytest gen demo" (a subset reruns),
#        PYTHON (default python3), BENCH_ARGS (extra arguments for both `ov3 bench train` runs,
#        e.g. "--steps 5").
# Packages the GPU image lacks travel as wheels in .gpu/whl (scripts/gpu_prepare.sh).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LOGDIR=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
BUDGET_S=${BUDGET_S:-480}
PARTS=${PARTS:-"train256 train128 anchor encode pytest gen vlm demo"}
BENCH_ARGS=${BENCH_ARGS:-}
DEADLINE=$(($(date +%s) + BUDGET_S))
STATUS="$OUT/status.tsv"
: >"$STATUS"
: >"$OUT/logs.txt"

wanted() { [[ " $PARTS " == *" $1 "* ]]; }

# run_part NAME LIMIT_S RESERVE_S CMD...: CMD under a limit of min(LIMIT_S, time left - RESERVE_S)
# (RESERVE_S keeps time for the parts after it); output to logs.txt, a status row to status.tsv.
run_part() {
	local name=$1 limit=$2 reserve=$3
	shift 3
	wanted "$name" || return 0
	local left=$((DEADLINE - $(date +%s) - reserve))
	((left < limit)) && limit=$left
	if ((limit < 15)); then
		printf '%s\tskipped\t0\t0\n' "$name" >>"$STATUS"
		echo "== $name: skipped, no time left in BUDGET_S=$BUDGET_S"
		return 0
	fi
	echo "== $name (limit ${limit} s): $*"
	local start=$(date +%s)
	timeout --kill-after=10 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
	local rc=$?
	printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" "$limit" >>"$STATUS"
	{
		echo "===== $name: rc $rc: $*"
		cat "$LOGDIR/$name.log"
	} >>"$OUT/logs.txt"
	echo "   rc $rc after $(($(date +%s) - start)) s; last lines:"
	tail -n 4 "$LOGDIR/$name.log" | cut -c1-200 | sed 's/^/   | /'
}

if compgen -G ".gpu/whl/*.whl" >/dev/null; then
	echo "== installing $(ls .gpu/whl/*.whl | wc -l) carried wheels into /tmp/ov3-site"
	$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target /tmp/ov3-site .gpu/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/ov3-site"
fi

echo "== preflight"
timeout 120 "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/logs.txt"
import importlib
import torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
      torch.cuda.get_device_name() if cuda else "NO CUDA DEVICE")
for name in ("openvision3", "diffusers", "lpips", "tyro", "open_clip", "timm", "safetensors"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '')}")
    except Exception as err:  # noqa: BLE001 - report every missing piece, then go on
        print(f"  {name} MISSING: {err!r}")
EOF

OV3=("$PY" -m openvision3.cli)
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
run_part train256 100 320 "${OV3[@]}" bench train --preset ov3_b2 --resolution 256 \
	--out "$OUT/bench_train_256.json" $BENCH_ARGS
# shellcheck disable=SC2086
run_part train128 80 310 "${OV3[@]}" bench train --preset ov3_b2 --resolution 128 \
	--out "$OUT/bench_train_128.json" $BENCH_ARGS
run_part anchor 60 305 "$PY" scripts/anchor_bench.py
run_part encode 40 305 "${OV3[@]}" bench encode --preset ov3-B/2 --resolution 256 \
	--batch-size 32 --output "$OUT/bench_encode_256.json"
run_part pytest 60 300 "$PY" -m pytest -m gpu -q tests/gpu --junitxml="$OUT/pytest_gpu.xml"
run_part gen 60 240 "${OV3[@]}" bench generation --steps 5 --warmup 2 \
	--out "$OUT/bench_generation.json"
run_part vlm 40 200 "${OV3[@]}" bench vlm --steps 5 --warmup 2 --out "$OUT/bench_vlm.json"
DEMO_DIR=$(mktemp -d)
run_part demo 300 0 "${OV3[@]}" demo --preset demo_gpu --run-dir "$DEMO_DIR"
if wanted demo; then
	[[ -f "$DEMO_DIR/report.md" ]] && cp "$DEMO_DIR/report.md" "$OUT/demo_report.md"
	{
		echo "===== demo: metrics.jsonl"
		cat "$DEMO_DIR/metrics.jsonl" 2>/dev/null
	} >>"$OUT/logs.txt"
fi

echo
"$PY" scripts/gpu_table.py "$OUT"
echo "files in $OUT"
