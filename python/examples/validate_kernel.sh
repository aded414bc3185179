#!/bin/sh
# validate_kernel.sh ETMOE PYTHON DIR: doc/validate-your-kernel.md's steps, end to end, in DIR.
# test_torch.sh runs it so that the guide cannot rot.
set -eu
etmoe=$1 py=$2 dir=$3
here=$(cd "$(dirname "$0")" && pwd)
cd "$dir"
# 1. data and a small trained MoE model (expert-threshold routing, thresholds in force)
PYTHONPATH=$here/.. "$py" -m etmoe_torch shard tokens_000.bin --tokens 4097 --vocab 256
"$etmoe" train demo vocab_size=256 seq_len=64 n_layer=2 d_model=64 n_head=4 n_kv_head=2 \
    ffn_hidden=128 n_routed=8 expert_hidden=64 batch_size=8 max_steps=4 et_warmup_steps=2 \
    train_data='tokens_*.bin' val_data= out_dir=run --quiet
# 2. the reference: one training forward+backward by etmoe
"$etmoe" dump run/latest.safetensors --data 'tokens_*.bin' --out reference.dump
# 3. the same step through the twin with the kernel under test, and 4. the comparison
for device in cpu $("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "")'); do
    "$py" "$here/grouped_gemm.py" run/latest.safetensors reference.dump kernel-$device.dump --device $device
    "$etmoe" compare reference.dump kernel-$device.dump >compare-$device.txt || { cat compare-$device.txt; exit 1; }
    cat compare-$device.txt
done
# 5. a kernel with a bug must fail the same comparison
"$py" "$here/grouped_gemm.py" run/latest.safetensors reference.dump broken.dump --bug
if "$etmoe" compare reference.dump broken.dump >compare-broken.txt; then
    cat compare-broken.txt; echo "validate_kernel.sh: the broken kernel passed"; exit 1
fi
grep -E '^(grad.layers.1.moe.down|logits) ' compare-broken.txt
echo "validate_kernel.sh: the broken kernel fails the comparison, as it should"
