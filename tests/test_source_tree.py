"""Python started in a repository checkout imports the source tree: without the built C
extension it says so once, naming the fix; the installed package says nothing."""

import os
import shutil
import subprocess
import sys

import fastsarnn

CODE = ("import fastsarnn, fastsarnn.model, importlib; import fastsarnn.cli; "
        "print(fastsarnn.__file__); print(fastsarnn.get_backend())")


def make_checkout(root, with_extension):
    pkg = os.path.dirname(fastsarnn.__file__)
    ignore = ["__pycache__"] + ([] if with_extension else ["*.so", "*.pyd"])
    shutil.copytree(pkg, root / "fastsarnn", ignore=shutil.ignore_patterns(*ignore))
    (root / "pyproject.toml").write_text("[project]\nname = 'fastsarnn'\n")
    (root / "csrc").mkdir()
    return root


def run(cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-W", "default", "-c", CODE], capture_output=True,
                          text=True, timeout=120, cwd=str(cwd), env=env)


def test_unbuilt_checkout_warns_once_with_the_fix(tmp_path):
    root = make_checkout(tmp_path, with_extension=False)
    out = run(root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(root))       # the source tree won
    assert out.stderr.count("SourceTreeWarning") == 1, out.stderr
    assert "C extension was never built" in out.stderr and "pip install -e ." in out.stderr
    assert out.stdout.splitlines()[1] != "c"


def test_checkout_whose_build_failed_says_so(tmp_path):
    root = make_checkout(tmp_path, with_extension=False)
    (root / "fastsarnn" / "_csarnn_build_error.txt").write_text("CompileError: ...\n")
    out = run(root)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("SourceTreeWarning") == 1, out.stderr
    assert "C extension failed to build (fastsarnn info shows the error" in out.stderr


def test_built_checkout_and_installed_package_do_not_warn(tmp_path):
    if any(f.endswith((".so", ".pyd")) for f in os.listdir(os.path.dirname(fastsarnn.__file__))):
        root = make_checkout(tmp_path / "built", with_extension=True)
        out = run(root)
        assert out.returncode == 0 and "SourceTreeWarning" not in out.stderr, out.stderr
    out = run(tmp_path)                                   # the installed package
    assert out.returncode == 0 and "SourceTreeWarning" not in out.stderr, out.stderr
    assert not out.stdout.startswith(str(tmp_path))
