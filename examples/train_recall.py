"""Train the recall models in PyTorch and export them for fastsarnn.

    python examples/train_recall.py [--steps 600] [--out fastsarnn/data]

Trains two models of the same size the same way on the synthetic task of
``fastsarnn.demo`` (name the marked token, ~30 steps back):
the self-attention RNN (score "kq"), and the same model with window=1, where c_t = h_t makes
it a plain Elman RNN. Each gets a linear readout on its last context. Both are exported with
``fastsarnn.demo.save_classifier`` (a few KB each) and checked with fastsarnn's kernels.
"""

import argparse
import os
import time

import torch

import fastsarnn as fs
from fastsarnn.demo import TASK, evaluate, make_recall_task, save_classifier
from fastsarnn.torch import SelfAttentionRNN

HIDDEN, ATTN = 32, 16


def train(window, steps, seed, batch=64, lr=2e-2, log_every=100):
    torch.manual_seed(seed)
    D = TASK["K"] + 1
    module = SelfAttentionRNN(D, HIDDEN, score="kq", attention_size=ATTN, window=window)
    readout = torch.nn.Linear(HIDDEN, TASK["K"])
    opt = torch.optim.Adam(list(module.parameters()) + list(readout.parameters()), lr=lr)
    for step in range(steps):
        x, y, _, _ = make_recall_task(batch, seed=seed * 100_000 + step)
        _, c = module(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(readout(c[:, -1]), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"  window={window} step {step:4d} loss {loss.item():.3f}", flush=True)
    return module, readout


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(fs.__file__), "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    x, y, _, _ = make_recall_task(2000, seed=987654)          # held-out check
    for name, window in (("recall_attention", None), ("recall_plain", 1)):
        t0 = time.time()
        module, readout = train(window, args.steps, args.seed)
        model = module.to_fastsarnn()
        W = readout.weight.detach().numpy()
        b = readout.bias.detach().numpy()
        acc, _ = evaluate(model, W, b, x, y)
        path = os.path.join(args.out, f"{name}.npz")
        save_classifier(path, model, W, b, {"steps": args.steps, "seed": args.seed,
                                            "heldout_accuracy": acc})
        print(f"{name}: held-out accuracy {acc:.3f} (fastsarnn backend "
              f"{fs.get_backend()}), {time.time() - t0:.0f} s, wrote {path} "
              f"({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
