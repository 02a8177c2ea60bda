#!/usr/bin/env bash
# Build the virtual environment that runs RoboVLMs' own code for generate.py.
#   tools/robovlms_reference/setup.sh ROBOVLMS_CHECKOUT VENV_DIR [kosmos|paligemma]
# ROBOVLMS_CHECKOUT: a clone of RoboVLMs' public repository at the commit in generate.py
# (ROBOVLMS_COMMIT); nothing of it is copied into robovlm_ros.
# kosmos (default): RoboVLMs' pins, transformers 4.37.2, and its patched modeling_kosmos2.py copied into
#   transformers as RoboVLMs' main.py and eval wrapper do before they build a KosMos policy.
# paligemma: transformers 4.44.0, the version RoboVLMs' README names for PaliGemma.
# torch is the CPU wheel this project pins (2.13.0); RoboVLMs pins 2.3.1 (a CUDA build). omegaconf: RoboVLMs'
# calvin_dataset imports it at module level, and the discrete cases use that module's prompt wrapping.
set -euo pipefail
src=$(cd "$1" && pwd); venv=$2; family=${3:-kosmos}
want=$(sed -n 's/^ROBOVLMS_COMMIT = "\(.*\)"/\1/p' "$(dirname "$0")/generate.py")
have=$(git -C "$src" rev-parse HEAD)
[ "$have" = "$want" ] || { echo "RoboVLMs checkout is at $have, generate.py was written for $want" >&2; exit 1; }
case $family in
  kosmos) tf=4.37.2 ;;
  paligemma) tf=4.44.0 ;;  # + accelerate: RoboVLMs loads PaliGemma with device_map="cpu"
  *) echo "family must be kosmos or paligemma" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 "transformers==$tf" einops einops_exts "numpy<2" safetensors pillow accelerate omegaconf
# torchvision's transforms only (generate.py skips its compiled operators, which need CUDA torch)
"$venv/bin/pip" install -q --no-deps torchvision==0.28.0
if [ "$family" = kosmos ]; then
  tf_dir=$("$venv/bin/python" -c "import transformers, os; print(os.path.dirname(transformers.__file__))")
  cp "$src/tools/modeling_kosmos2.py" "$tf_dir/models/kosmos2/modeling_kosmos2.py"
fi
echo "ready: $venv/bin/python $(dirname "$0")/generate.py --robovlms $src --out DIR"
