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
    # Chance on this task is 1/K (the label is one of K symbols); 4 standard deviations of
    # a guesser's accuracy over n examples bound what luck gives.
    n, K = 300, demo.TASK["K"]
    chance = 1 / K
    luck = chance + 4 * np.sqrt(chance * (1 - chance) / n)
    assert attn_acc >= 0.9 and attn_acc > luck               # it solves the task
    assert plain_acc <= luck                                 # the Elman RNN cannot
    assert attn_acc - plain_acc >= 0.5                       # attention is what makes it
    # the last step attends to the marked token far more than a uniform look-back would
    share = float(out.stdout.split("on the marked token:")[1].split()[0])
    assert share >= 10 / demo.TASK["T"]
    # and the printed numbers are the library's: recompute them in this process
    x, labels, _, _ = demo.make_recall_task(n, 11)
    model, W, b, _ = demo.load_classifier("recall_attention")
    assert demo.evaluate(model, W, b, x, labels)[0] == pytest.approx(attn_acc, abs=1e-3)
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


def test_plot_attention_accepts_the_compact_layout():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    model = fs.SelfAttentionRNN.random(3, 4, window=3, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 3))
    st = model.init_state(1)
    model.forward(x[None, :2], state=st)                       # the stream is at position 2
    comp = model.forward(x[None, 2:], state=st, return_attention="window", backend="numpy")
    dense, first = demo.compact_to_dense(comp.attention[0], comp.attention_positions[0])
    assert first == 0 and dense.shape == (6, 8)                # positions 0 .. 7
    ref = model.forward(x, return_attention=True).attention[2:]
    assert np.allclose(dense, ref, atol=1e-6)
    fig = fs.plot_attention(comp.attention[0], positions=comp.attention_positions[0])
    img = fig.axes[0].images[0]
    assert img.get_array().shape == (6, 8)
    with pytest.raises(ValueError, match="shape of attention"):
        fs.plot_attention(comp.attention[0], positions=comp.attention_positions[0, :2])
