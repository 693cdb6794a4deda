"""inspect-lr: readable tensor names, the initial-lr line, and the flag on tensors that get no
gradient (conv biases before batch norm) or whose learned lr never moved."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fewshot_metaopt.cli import inspect_lr_command, main
from fewshot_metaopt.episodes import Episode
from fewshot_metaopt.learners import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.models import ResidualConvNet, conv4, mlp, parameter_display_names
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.lr_report import format_table, gradient_free, lr_rows, never_moved, notes, plot_lrs
from test_cli import write_task

RED = (214, 39, 40)  # matplotlib's tab:red


def test_conv4_and_mlp_parameters_get_readable_names_and_keep_their_own():
    model = conv4(5, hidden=4)
    shown = parameter_display_names(model)
    assert list(shown) == [name for name, _ in model.named_parameters()]
    assert shown["0.0.weight"] == "block1.conv.weight" and shown["0.1.bias"] == "block1.bn.bias"
    assert shown["3.0.bias"] == "block4.conv.bias" and shown["5.weight"] == "head.weight"
    conv4(5, hidden=4).load_state_dict(model.state_dict())  # the saved names are untouched
    assert list(parameter_display_names(mlp(1, 1)).values()) == [
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "head.weight", "head.bias"]
    assert list(parameter_display_names(mlp(1, 1, [8])).values()) == [
        "linear.weight", "linear.bias", "head.weight", "head.bias"]


def test_other_models_keep_their_names_or_publish_their_own():
    residual = ResidualConvNet(3, width=2, blocks=1)
    assert all(name == shown for name, shown in parameter_display_names(residual).items())

    class Published(nn.Sequential):
        def parameter_display_names(self):
            return {"0.weight": "first.weight", "0.bias": "first.bias"}

    assert parameter_display_names(Published(nn.Linear(2, 2))) == {"0.weight": "first.weight", "0.bias": "first.bias"}

    class Block1(nn.Module):  # named as the structure names the nested block: block1.linear.weight twice
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

    clash = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), Block1(), nn.ReLU(), nn.Linear(2, 1))
    assert parameter_display_names(clash) == {name: name for name, _ in clash.named_parameters()}


def episode(ways=3, size=16, seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return Episode(torch.randn(ways, 1, size, size, generator=g), labels,
                   torch.randn(ways, 1, size, size, generator=g), labels)


def test_the_gradient_check_finds_exactly_the_biases_that_batch_norm_cancels():
    torch.manual_seed(0)
    learner = GradientMetaLearner(conv4(3, hidden=4, image_size=16), GradientMetaLearnerConfig(algorithm="meta_sgd"))
    names = list(learner.learned_lr_tensors())
    found = gradient_free(learner, [episode(seed=s) for s in range(2)], names)
    assert found == {f"{block}.0.bias" for block in range(4)}
    # A model without batch norm has none.
    sine = GradientMetaLearner(mlp(1, 1, [8]), GradientMetaLearnerConfig())
    points = Episode(torch.randn(5, 1), torch.randn(5, 1), torch.randn(5, 1), torch.randn(5, 1))
    assert gradient_free(sine, [points], [n for n, _ in sine.model.named_parameters()]) == set()
    sine.model.register_parameter("spare", nn.Parameter(torch.ones(1)))  # in no graph at all
    assert gradient_free(sine, [points], ["0.weight", "spare"]) == {"spare"}


def test_an_lr_that_never_moved_is_told_from_one_that_did():
    start = torch.full((4,), 0.3)  # float32, as a learned lr is stored
    tensors = {"still": start.clone(), "rounded": start + 1e-8, "moved": start + torch.tensor([0, 0, 0, 1e-3])}
    assert never_moved(tensors, 0.3) == {"still", "rounded"}
    said = notes(tensors, {"still", "moved"}, {"still", "rounded"})
    assert said == {"still": "no gradient, lr never moved", "rounded": "never moved", "moved": "no gradient"}


def test_the_table_adds_parameter_and_note_columns_only_when_they_say_something():
    tensors = {"0.weight": torch.tensor([0.1, 0.2]), "0.bias": torch.tensor(0.3)}
    plain = format_table(lr_rows(tensors)).splitlines()
    assert plain[0].split() == ["tensor", "shape", "mean", "min", "q05", "q25", "median", "q75", "q95", "max"]
    assert plain[3].split()[:2] == ["0.bias", "scalar"]
    table = format_table(lr_rows(tensors, {"0.weight": "head.weight", "0.bias": "head.bias"},
                                 {"0.bias": "no gradient"})).splitlines()
    assert table[0].split()[-2:] == ["parameter", "note"]
    assert table[2].split()[0] == "head.weight" and table[2].split()[-1] == "0.weight"
    assert table[3].split()[0] == "head.bias" and table[3].split()[-3:] == ["0.bias", "no", "gradient"]


def colours(path) -> Counter:
    """Pixels per colour."""
    with Image.open(path) as image:
        found, counts = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0, return_counts=True)
    return Counter({tuple(map(int, colour)): int(n) for colour, n in zip(found, counts)})


def mid_greys(counts: Counter) -> int:
    """Pixels of the initial-lr line's grey ("0.4") and its antialiased edges."""
    return sum(n for (r, g, b), n in counts.items() if r == g == b and 90 <= r <= 200)


def test_the_plot_draws_the_initial_lr_and_the_flagged_tensors_in_red(tmp_path):
    tensors = {"block1.conv.weight": torch.linspace(0.2, 0.4, 9), "block1.conv.bias": torch.full((3,), 0.3)}
    flagged = {"block1.conv.bias": "no gradient, lr never moved", "block1.conv.weight": "never moved"}
    assert RED not in colours(plot_lrs(tensors, tmp_path / "plain.png", "nothing flagged"))
    unmarked = colours(plot_lrs(tensors, tmp_path / "flagged.png", "flagged", flagged=flagged))
    marked = colours(plot_lrs(tensors, tmp_path / "marked.png", "flagged", (0.3, "initial lr 0.3"), flagged))
    assert marked[RED] > 50  # the dot, its tick label and its note
    assert mid_greys(marked) > mid_greys(unmarked) + 300  # the dashed line across the plot
    wide = {"a": torch.tensor(0.1), "b": torch.tensor(1e5)}  # a log axis for rates six decades apart
    assert plot_lrs(wide, tmp_path / "wide.png", "wide").stat().st_size > 0


@pytest.fixture(scope="module")
def meta_sgd_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta_sgd")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["train", str(write_task(folder)), "--out", str(folder / "run"), "--set", "train.iterations=2",
                     "--set", "validation.every=0", "--set", "evaluation.episodes=1"]) == 0
    return folder / "run"


def test_inspect_lr_names_tensors_and_flags_the_biases_before_batch_norm(meta_sgd_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["inspect-lr", str(meta_sgd_run), "--png", str(tmp_path / "lr.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out if line.startswith(("block", "head."))}
    assert len(rows) == 18
    for block in range(1, 5):
        assert rows[f"block{block}.conv.bias"].endswith(f"{block - 1}.0.bias    no gradient, lr never moved")
        assert rows[f"block{block}.conv.weight"].split()[-1] == f"{block - 1}.0.weight"
    assert rows["head.weight"].split()[-1] == "5.weight"
    (summary,) = [line for line in out if line.startswith("no gradient: ")]
    assert summary.startswith("no gradient: block1.conv.bias, block2.conv.bias, block3.conv.bias, block4.conv.bias "
                              "(a zero support-set gradient on 3 validation episodes")
    assert summary.endswith("the inner loop never moves them, and their learned lrs get no meta-gradient")
    assert RED in colours(tmp_path / "lr.png")


def test_inspect_lr_without_the_data_reports_the_rates_and_says_what_it_skipped(meta_sgd_run, tmp_path, capsys,
                                                                               monkeypatch):
    def missing(data, role):
        raise RunError("the data set is not here")

    monkeypatch.setattr(inspect_lr_command, "open_split", missing)
    capsys.readouterr()
    assert main(["inspect-lr", str(meta_sgd_run), "--png", str(tmp_path / "lr.png")]) == 0
    out = capsys.readouterr().out
    assert "(no check of which tensors get a gradient: the data set is not here)" in out
    assert "no gradient" not in out.replace("(no check", "") and "block1.conv.bias" in out
