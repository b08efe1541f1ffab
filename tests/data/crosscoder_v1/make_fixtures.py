"""Writes the format-version-1 fixtures in this folder. Run once, from the repository root, with the code of
commit 890286a (before the variants became plug-ins): `git stash; git checkout 890286a; python tests/data/crosscoder_v1/make_fixtures.py`."""
import torch
from safetensors.torch import save_file
from featalign.crosscoder import Crosscoder, CrosscoderConfig
out = "tests/data/crosscoder_v1"
g = torch.Generator().manual_seed(0)
x = torch.randn(5, 2, 1, 4, generator=g)
expect = {"x": x}
for v in ("l1", "batchtopk", "jumprelu"):
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl"), hooks=("blocks.0.hook_resid_post",), d_model=4,
                                     n_latents=6, variant=v, k=2, n_shared=1 if v == "l1" else 0,
                                     jumprelu_init_threshold=0.05, seed=3))
    with torch.no_grad():
        cc.b_enc.normal_(0, 0.1, generator=g); cc.b_dec.normal_(0, 0.1, generator=g)
        cc.W_enc.mul_(5.0)
        cc.norm_scale.copy_(torch.tensor([[1.5], [0.7]]))
        if v == "batchtopk":
            cc.threshold.fill_(0.01)
        cc.tokens_since_fired.copy_(torch.arange(6))
    cc.save(f"{out}/{v}")
    expect[f"{v}_f"] = cc.encode(x)
    expect[f"{v}_xhat"] = cc(x)
    print(v, (expect[f"{v}_f"] > 0).float().mean())
save_file(expect, f"{out}/expected.safetensors")
import shutil
from featalign.crosscoder import CrosscoderConfig, TrainerConfig, InMemoryActivations, Trainer
out = "tests/data/crosscoder_v1/run_batchtopk"
shutil.rmtree(out, ignore_errors=True)
x = torch.randn(256, 2, 1, 4, generator=torch.Generator().manual_seed(5))
cc = CrosscoderConfig(models=("base", "rl"), hooks=("h",), d_model=4, n_latents=8, variant="batchtopk", k=2,
                      aux_k=4, dead_tokens=64)
tc = TrainerConfig(steps=8, batch_size=32, warmup_steps=2, checkpoint_every=4, log_every=2)
class Stop(Exception): pass
def on_step(s):
    if s == 4: raise Stop
try:
    Trainer(cc, tc, InMemoryActivations(x, 32, models=cc.models, hooks=cc.hooks), out, on_step=on_step, progress=False).train()
except Stop:
    pass
# the uninterrupted run's result, for the resume test
full = Trainer(cc, tc, InMemoryActivations(x, 32, models=cc.models, hooks=cc.hooks), "/tmp/v1full", progress=False).train()
from safetensors.torch import save_file
save_file({k: v.contiguous() for k, v in full.state_dict().items()}, f"{out}/../run_batchtopk_final.safetensors")
