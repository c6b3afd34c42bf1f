"""The shipped recall models, `fastsarnn demo` and plot_attention."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastsarnn as fs
from fastsarnn import demo


def test_shipped_models_are_small_and_load():
    for name in ("recall_attention", "recall_plain"):
        path = os.path.join(demo.DATA_DIR, f"{name}.npz")
        assert os.path.getsize(path) < 200_000
        model, W, b, cfg = demo.load_classifier(name)
        assert W.shape == (demo.TASK["K"], model.hidden_size) and b.shape == (demo.TASK["K"],)
    assert demo.load_classifier("recall_plain")[0].window == 1     # c_t = h_t: Elman RNN
    assert demo.load_classifier("recall_attention")[0].window is None


def test_task_labels_are_the_marked_tokens():
    x, y, marker, tokens = demo.make_recall_task(50, seed=3)
    assert x.shape == (50, demo.TASK["T"], demo.TASK["K"] + 1)
    assert np.all(x[:, :, -1].sum(1) == 1) and np.all(x[np.arange(50), marker, -1] == 1)
    assert np.array_equal(y, tokens[np.arange(50), marker])


def test_demo_reports_accuracy_and_attention(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "attention.png"
    out = subprocess.run([sys.executable, "-m", "fastsarnn", "demo", "--n", "300", "--seed",
                          "11", "--plot", str(png)], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = {ln.split("accuracy:")[0].strip(): float(ln.split("accuracy:")[1].split()[0])
             for ln in out.stdout.splitlines() if "accuracy:" in ln}
    attn_acc = lines["self-attention RNN"]
    plain_acc = lines["plain RNN (window=1)"]
    assert attn_acc >= 0.9 > 0.25           # well above chance (1/K)
    assert plain_acc <= 0.6
    share = float(out.stdout.split("on the marked token:")[1].split()[0])
    assert share >= 0.5
    assert "^ marked token" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_attention_returns_a_figure():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    model = fs.SelfAttentionRNN.random(3, 4, seed=0)
    att = model.forward(np.random.default_rng(0).standard_normal((6, 3)),
                        return_attention=True).attention
    fig = fs.plot_attention(att, tokens=list("abcdef"))
    assert fig.axes and fig.axes[0].get_xlabel() == "attended position"
    with pytest.raises(ValueError, match="2-D"):
        fs.plot_attention(att[None])
