"""`cnn-parity check`: the tutorial's own code, the corrected code, renamed code, and every kind of unusable input.

Networks other than the tutorial's (inferred architectures, `--layers`, layouts, time-outs, the user's own errors,
suggested options) are in test_check_networks.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratch
from parity.check.adapter import ImplSide, _recovered, tutorial_spec
from parity.check.infer import infer_architecture
from parity.check.loader import load_impl
from parity.check.names import ImplError, Mapping
from parity.check.run import large_logit_weights
from parity.cli import main
from parity.engine.compare import compare

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "parity" / "check" / "examples" / "tutorial_cnn"
FIXED = ROOT / "parity" / "check" / "examples" / "fixed_cnn"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `cnn-parity` in-process; (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tutorial_report(tmp_path_factory):
    """The default check of the tutorial's own code (200 steps and every probe), with its report written."""
    out_dir = tmp_path_factory.mktemp("check") / "report"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["check", "--impl", str(TUTORIAL), "--out", str(out_dir)])
    return code, stdout.getvalue(), stderr.getvalue(), out_dir


def test_tutorial_code_diverges_at_the_pool_gradient_by_tie_policy(tutorial_report):
    code, out, err, _ = tutorial_report
    assert code == 1 and err == ""
    assert "inferred:  conv3x8,pool2,dense10 on 28x28 images:" in out
    assert "conv1   Conv3x3(8)         3x3 conv, 8 filters on 1 channel: filters (8, 3, 3) as (F, K, K)" in out
    assert (
        "Main run: DIVERGED at step 0, pool1 pool1.d_in from MaxPool2.backprop (200 of 200 steps out of tolerance)"
        in out
    )
    assert "first divergence: step 0, pool1 pool1.d_in: tie-policy difference, not a numerical one" in out
    assert "missing:   conv1.d_in (Conv3x3.backprop returned None)" in out
    assert "DIVERGENCE in main run, constant, large-logits, odd-size; first: pool1 pool1.d_in at step 0" in out


def test_tutorial_code_overflows_under_large_logits(tutorial_report):
    _, out, _, _ = tutorial_report
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.strip().startswith("| ")}
    assert "DIVERGED" in rows["large-logits"]
    assert "step 0, loss probs: overflow: an unshifted softmax exp" in rows["large-logits"]
    assert "an unshifted softmax (subtract the largest logit before exp)" in out
    assert "step 0, pool1 pool1.d_in: tie-policy difference" in rows["constant"]
    assert "DIVERGED" in rows["odd-size"]


def test_tutorial_report_is_the_report_commands_format(tutorial_report):
    _, out, _, out_dir = tutorial_report
    document = json.loads((out_dir / "report.json").read_text())
    assert document["schema"].startswith("cnn-parity/report/")
    assert (out_dir / "report.md").is_file() and f"report: {out_dir / 'report.md'}" in out
    # What the runs were made with (one thread each, parity.threads), not this process's threads once they ended.
    assert (document["environment"]["torch_threads"], document["environment"]["numpy_blas_threads"]) == (1, 1)
    main_run, *probes = document["runs"]
    assert main_run["config"]["impl"] == f"check:{TUTORIAL}" and main_run["steps"] == 200
    first = main_run["first_divergence"]
    assert main_run["config"]["arch"] == "conv3x8,pool2,dense10"
    assert (first["step"], first["layer"], first["tensor"]) == (0, "pool1", "pool1.d_in")
    assert (first["diagnosis"]["kind"], first["diagnosis"]["evidence"]["rule"]) == ("tie_policy", "all")
    assert [(layer["name"], layer["kind"], layer["passed"]) for layer in main_run["layers"]] == [
        ("conv1", "conv", True),
        ("pool1", "pool", False),
        ("dense1", "dense", True),
    ]
    assert main_run["missing_tensors"] == ["conv1.d_in"]
    overflow = next(run for run in probes if run["config"]["impl"].endswith("probe:large-logits"))
    assert (overflow["first_divergence"]["tensor"], overflow["first_divergence"]["layer"]) == ("probs", "loss")
    assert not document["passed"]


def test_corrected_code_passes_every_step_and_probe(capsys):
    code, out, err = cli(capsys, "check", "--impl", str(FIXED))
    assert (code, err) == (0, "")
    assert "Main run: PARITY over 200 steps" in out
    assert out.count("| PARITY   |") == 3
    assert "PARITY: the main run and 3 edge probes agree with PyTorch tensor by tensor (exit 0)" in out
    assert "seen:      conv1.out, pool1.out, dense1.out, probs, dense1.d_in, pool1.d_in, conv1.d_in;" in out
    assert "recovered: dense1.d_out, dense1.d_weights, dense1.d_biases, conv1.d_filters from the in-place" in out


RENAMED = {"class Conv3x3": "class Convolution", "class Softmax": "class Dense", "self.weights": "self.W"}
RENAMED_METHOD = {"def backprop": "def backward"}


def renamed_copy(directory: Path) -> Path:
    """The corrected code in one module, with renamed classes, weights and backprop, beside a script that must
    not run (the checker imports only files that define the classes)."""
    directory.mkdir()
    text = "\n".join((FIXED / name).read_text() for name in ("conv.py", "maxpool.py", "softmax.py"))
    for old, new in {**RENAMED, **RENAMED_METHOD}.items():
        text = text.replace(old, new)
    (directory / "layers.py").write_text(text)
    (directory / "train.py").write_text("raise SystemExit('the checker must not import this training script')\n")
    return directory


def test_renamed_code_is_found_by_fit_and_mapping_still_works(capsys, tmp_path):
    """Classes, a method and an attribute renamed: each the only one that fits, so no option is needed; --map
    naming them gives the same run."""
    impl = renamed_copy(tmp_path / "renamed")
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "30")
    assert (code, err) == (0, ""), out
    assert "Conv3x3 as Convolution" in out and "Softmax as Dense" in out
    assert (
        "found:     Convolution.backward is its backprop: the only method taking a gradient and a learning rate" in out
    )
    assert "found:     Dense.W holds its weights: the only 2-D array" in out
    assert "Main run: PARITY over 30 steps" in out

    maps = [
        "Conv3x3=Convolution,Softmax=Dense",
        "Softmax.weights=W",
        "Conv3x3.backprop=backward",
        "MaxPool2.backprop=backward",
        "Softmax.backprop=backward",
    ]
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "30", *(f"--map={m}" for m in maps))
    assert (code, err) == (0, ""), out
    assert "names mapped: Conv3x3=Convolution, Softmax=Dense, Softmax.weights=W" in out and "found:" not in out


def test_mapping_parse_rejects_unknown_keys():
    assert Mapping.parse(["Softmax.weights=W, Conv3x3=C"]).names == {"Softmax.weights": "W", "Conv3x3": "C"}
    with pytest.raises(ImplError, match="unknown key 'Softmax.bias'"):
        Mapping.parse(["Softmax.bias=b"])
    with pytest.raises(ImplError, match="expected KEY=NAME"):
        Mapping.parse(["Softmax"])
    with pytest.raises(ImplError, match="not a Python identifier"):
        Mapping.parse(["Softmax=my-dense"])


def _copy_fixed(directory: Path) -> Path:
    shutil.copytree(FIXED, directory)
    return directory


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _no_softmax(d: Path) -> None:
    (_copy_fixed(d) / "softmax.py").unlink()


def _syntax_error(d: Path) -> None:
    _edit(_copy_fixed(d) / "softmax.py", "def forward(self, input):", "def forward(self, input)")


def _import_error(d: Path) -> None:
    _edit(_copy_fixed(d) / "conv.py", "import numpy as np", "import numpy as np\nimport no_such_module_for_cnn_parity")


def _transposed_weights(d: Path) -> None:
    _edit(_copy_fixed(d) / "softmax.py", "standard_normal((input_len, nodes))", "standard_normal((nodes, input_len))")


def _raises_on_first_step(d: Path) -> None:
    _edit(_copy_fixed(d) / "softmax.py", "np.dot(input, self.weights)", "np.dot(self.weights, input)")


def _chw_output(d: Path) -> None:
    _edit(_copy_fixed(d) / "conv.py", 'return np.einsum("ijkl,fkl->ijf"', 'return np.einsum("ijkl,fkl->fij"')


def _same_padding(d: Path) -> None:
    _edit(
        _copy_fixed(d) / "conv.py",
        'return np.einsum("ijkl,fkl->ijf", self.regions(input), self.filters)',
        'return np.einsum("ijkl,fkl->ijf", self.regions(np.pad(input, 1)), self.filters)',
    )


def _input_length_wrong(d: Path) -> None:
    _edit(_copy_fixed(d) / "softmax.py", "standard_normal((input_len, nodes))", "standard_normal((1000, nodes))")


def _integer_weights(d: Path) -> None:
    _edit(
        _copy_fixed(d) / "softmax.py",
        "self.weights = rng.standard_normal((input_len, nodes)) / input_len",
        "self.weights = (rng.standard_normal((input_len, nodes)) / input_len).astype(np.int64)",
    )


def _unshowable_exception(d: Path) -> None:
    _edit(
        _copy_fixed(d) / "softmax.py",
        "    def forward(self, input):\n",
        "    def forward(self, input):\n"
        "        class Unshowable(Exception):\n"
        "            def __str__(self):\n"
        "                raise TypeError('no message')\n\n"
        "        raise Unshowable()\n",
    )


UNUSABLE = {
    "nonexistent path": (None, "no such file or directory"),
    "an empty path": ("", "impl: empty; pass a directory of .py files, a .py file or a module name"),
    "a FIFO, neither a file nor a directory": (lambda d: os.mkfifo(d), "impl: not a regular file or a directory"),
    "syntax error": (_syntax_error, "softmax.py:17: syntax error"),
    "import error": (_import_error, "ModuleNotFoundError: No module named 'no_such_module_for_cnn_parity'"),
    # (nodes, input_len) is a layout of its own, read as such: the code then multiplies the wrong way round.
    "transposed weights": (_transposed_weights, "Softmax.forward: raised ValueError: shapes (1352,) and (10,1352)"),
    "weights for another input size": (
        _input_length_wrong,
        "Softmax.weights has shape (1000, 10), but the layer before it gives 13x13x8 = 1352 inputs",
    ),
    "raises on the first step": (
        _raises_on_first_step,
        "Softmax.forward: raised ValueError: shapes (1352,10) and (1352,) not aligned",
    ),
    "an exception whose message raises": (
        _unshowable_exception,
        "Softmax.forward: raised Unshowable: (its message could not be shown: TypeError in its __str__)",
    ),
    "wrong output layout": (_chw_output, "Conv3x3.forward: returned shape (8, 26, 26), expected (26, 26, 8): HWC"),
    "same padding": (
        _same_padding,
        "returned shape (28, 28, 8), expected (26, 26, 8): HWC (h - K + 1, w - K + 1, filters); this looks like 'same' "
        "padding (the output as large as the input): the networks checked use valid padding",
    ),
}


@pytest.mark.parametrize("case", UNUSABLE, ids=list(UNUSABLE))
def test_unusable_input_is_one_line_and_exit_2(capsys, tmp_path, case):
    make, message = UNUSABLE[case]
    impl = tmp_path / "impl"
    if callable(make):
        make(impl)
    where = make if isinstance(make, str) else str(impl)  # a path given as it is typed
    code, out, err = cli(capsys, "check", "--impl", where, "--steps", "2", "--no-probes")
    assert code == 2 and out == ""
    assert err.startswith("cnn-parity check: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_a_dense_layer_before_the_last_that_returns_probabilities_is_refused(capsys):
    """The tutorial's Softmax used twice: the twin has a softmax after the last layer only, so the first one's
    probabilities would be compared as totals and blamed on its flatten or weight layout."""
    layers = "Conv3x3(8),MaxPool2(),Softmax(1352,10),Softmax(10,10)"
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--steps", "2", "--no-probes", "--layers", layers)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "Softmax.forward returns probabilities (the softmax of its totals) in a layer that is not the last" in err


def test_integer_weights_are_named_as_such_not_as_missing(capsys, tmp_path):
    _integer_weights(tmp_path / "impl")
    code, out, err = cli(capsys, "check", "--impl", str(tmp_path / "impl"), "--steps", "2", "--no-probes")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "weights (1352, 10) is int64: not floating point, so not read as a parameter" in err


def test_bad_map_key_is_a_usage_error(capsys):
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--map", "Conv3x3.weights=w")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "unknown key 'Conv3x3.weights' (Conv3x3 has forward, backprop, filters, biases)" in err


def test_a_missing_class_is_listed_with_what_the_code_has(capsys, tmp_path):
    """No class plays the Softmax: the message lists it, every class found with its methods, and no placeholder."""
    impl = tmp_path / "impl"
    _no_softmax(impl)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "2", "--no-probes")
    assert code == 2 and out == "" and "Traceback" not in err
    first, *rest = err.splitlines()
    assert first.startswith(f"cnn-parity check: error: {impl}: the layers cannot be built or driven as they are")
    assert "  - no class Softmax (classes found: Conv3x3 (conv.py), MaxPool2 (maxpool.py))" in rest
    assert (
        "    Conv3x3(num_filters, rng=...) in conv.py: regions(image), forward(input), backprop(d_L_d_out, learn_rate)"
        in rest
    )
    assert "NAME" not in err


def test_code_that_crashes_the_process_is_named_at_its_line(tmp_path):
    """A segfault in native code the checked code calls ends the process before any message of ours; the console
    script's fault handler still names the file, line and method it died in."""
    impl = tmp_path / "impl"
    shutil.copytree(FIXED, impl)
    pool = impl / "maxpool.py"
    text, forward = pool.read_text(), "    def forward(self, input):\n"
    assert forward in text
    crashing = "import ctypes\n\n\ndef crash():\n    ctypes.string_at(0)\n\n\n" + text
    pool.write_text(crashing.replace(forward, forward + "        crash()\n", 1))
    console = "import sys; from parity.cli.entry import console; sys.exit(console())"  # the console script's body
    command = [sys.executable, "-c", console, "check", "--impl", str(impl), "--steps", "1", "--no-probes"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode < 0 and "Fatal Python error: Segmentation fault" in done.stderr, done.stderr
    called_at = pool.read_text().splitlines().index("        crash()") + 1
    assert f'File "{pool}", line 5 in crash' in done.stderr
    assert f'File "{pool}", line {called_at} in forward' in done.stderr


def test_loader_imports_files_privately():
    """Two implementations with the same file names do not share modules, and sys.path is left as it was."""
    path_before, modules_before = list(sys.path), set(sys.modules)
    fixed, tutorial = load_impl(str(FIXED)), load_impl(str(TUTORIAL))
    infer_architecture(fixed)  # constructing and probing the classes imports nothing more
    assert fixed.classes["Softmax"] is not tutorial.classes["Softmax"]
    assert sys.path == path_before
    assert not {"conv", "maxpool", "softmax"} & (set(sys.modules) - modules_before)


def test_recovered_gradient_error_is_within_the_documented_bound():
    """(before - after) / lr is off by at most eps/2 |w| / lr + 2 eps |g| (see parity.check.adapter)."""
    rng = np.random.default_rng(0)
    eps = np.finfo(np.float64).eps
    for lr in (0.005, 0.1, 1.0):
        for scale in (1e-3, 0.3, 8.0):
            weights = rng.standard_normal(100_000) * scale
            gradient = rng.standard_normal(100_000) * 0.05
            after = weights.copy()
            after -= lr * gradient
            error = np.abs(_recovered(weights, after, lr) - gradient)
            bound = eps / 2 * np.abs(after) / lr + 2 * eps * np.abs(gradient)
            assert np.all(error <= bound * 1.0001)
    # Inside the float64 atol (1e-12) for the network's weights at the tutorial's lr: filters ~0.5, probe weights ~8.
    assert eps / 2 * 8.0 / 0.005 < 1e-12 / 5


def test_adapter_is_a_lockstep_side_under_the_spec_names():
    """The tutorial interface is conv3x8,pool2,dense10: the adapter hands back scratch's names, layouts and shapes."""
    spec = tutorial_spec()
    assert spec.text == "conv3x8,pool2,dense10"
    net = scratch.build_network(spec, 0, np.float64)
    initial = {name: value.copy() for name, value in net.parameters().items()}
    side = ImplSide(infer_architecture(load_impl(str(FIXED))), initial, 0.005)
    assert side.spec == spec
    assert list(side.parameters()) == list(spec.parameter_names)
    image = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).astype(np.uint8)
    ours = side.forward_backward(image, np.array([3]))
    theirs = net.forward_backward(image, np.array([3])).tensors
    assert list(ours) == [name for name in spec.tensor_names if name in ours] == list(theirs)
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name  # the batch axis of 1 included: conv1.d_in is (1, 28, 28, 1)
        assert compare(name, ours[name], value, np.float64).passed, name  # the parity tolerance: one table
    side.update(0.005)  # backprop already updated: a no-op, at the same lr only
    with pytest.raises(ValueError, match="differs from the lr"):
        side.update(0.1)
    net.update(0.005)
    for name, value in net.parameters().items():
        assert compare(name, side.parameters()[name], value, np.float64).passed, name
    side.load_parameters(initial)
    assert all(np.array_equal(side.parameters()[name], initial[name]) for name in initial)
    assert side.origin("pool1.d_in") == "MaxPool2.backprop" and side.origin("probs") == "Softmax.forward"
    with pytest.raises(ValueError, match="one image at a time"):
        side.forward_backward(np.zeros((2, 28, 28), dtype=np.uint8), np.array([0, 1]))


def test_large_logit_probe_raises_logits_but_not_probabilities():
    net = scratch.tutorial_network(0, np.float64)
    initial = net.parameters()
    images = np.stack([np.random.default_rng(i).integers(0, 256, (28, 28)).astype(np.uint8) for i in range(20)])
    labels = np.arange(20) % 10
    chosen, weights = large_logit_weights(net.spec, {k: v.copy() for k, v in initial.items()}, images, labels, seed=0)
    shifted = scratch.tutorial_network(0, np.float64)
    shifted.load_parameters({**initial, "dense1.weights": weights})
    for index in chosen:
        before = net.forward_backward(images[index], int(labels[index])).tensors
        after = shifted.forward_backward(images[index], int(labels[index])).tensors
        assert after["dense1.out"].shape == (1, 10) and after["dense1.out"].min() >= 800 - 1
        assert compare("probs", after["probs"], before["probs"], np.float64).passed
    assert np.abs(weights).max() < 20  # small weights: the recovered gradients stay exact (see the adapter)


def test_command_modules_do_not_import_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import parity.check.command, parity.golden.records, parity.check.selftest, parity.check.bugs\n"
        "from parity.cli import build_parser; build_parser()\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_check_without_torch_is_a_usage_error():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from parity.cli import main; sys.exit(main(['check', '--impl', 'parity/check/examples/fixed_cnn']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("cnn-parity check: error: check needs PyTorch") and "Traceback" not in done.stderr
