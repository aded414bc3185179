"""etmoe_torch: a PyTorch twin of etmoe's training step (doc/validate-your-kernel.md).

Modules: safetensors (checkpoint and dump files), config (the configuration text), routers (the
routing rules as tables), model (the transformer), optim (AdamW, Muon, schedule), dump (a dump
`etmoe compare` reads), step (one optimizer step with the router-state update), shard (token
shards). Command line: python3 -m etmoe_torch --help."""
