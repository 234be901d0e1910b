"""evaluate longtail.profile=: the long-tail question's mechanics on small settings (the lift
itself is a benchmark's, not a test's): its arms, its arithmetic, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from job.cli import main
from job.evaluation import longtail

QUICK = ["n=300", "tstr.n=300", "tstr.epochs=1", "batch_size=300", "baseline=none"]


def test_rare_classes_are_those_under_a_tenth_of_the_largest():
    assert longtail.rare_classes([5421, 3216, 1908, 1132, 671, 398, 236, 140, 83, 54]) == [5, 6, 7, 8, 9]
    assert longtail.rare_classes([5421, 108, 5421]) == [1]


def test_the_summary_is_mean_and_spread_over_seeds_and_the_lift_is_over_the_best_baseline():
    counts = [100, 5]  # class 1 is rare
    def seed(real, over, rew, syn, filt):
        return {"per_class": {"real": real, "oversampled": over, "reweighted": rew, "synthetic": syn,
                              "synthetic_filtered": filt}, "acceptance": {"synthetic": 1.0, "synthetic_filtered": 0.5}}
    per_seed = [seed([1.0, 0.2], [0.9, 0.4], [0.9, 0.3], [0.9, 0.6], [0.9, 0.5]),
                seed([1.0, 0.4], [0.9, 0.6], [0.9, 0.5], [0.9, 0.6], [0.9, 0.7])]
    test_labels = torch.tensor([0, 0, 0, 1])  # 3 of class 0, 1 of class 1
    got = longtail.summarize(per_seed, counts, test_labels)
    assert got["rare_classes"] == [1]
    oversampled = got["arms"]["oversampled"]
    assert oversampled["rare_accuracy"]["values"] == [0.4, 0.6] and oversampled["rare_accuracy"]["mean"] == 0.5
    assert oversampled["balanced_accuracy"]["values"] == [0.65, 0.75]
    assert oversampled["accuracy"]["values"] == [pytest.approx(0.775), pytest.approx(0.825)]  # test-share weighted
    assert got["rare_lift"]["synthetic"]["over"] == "oversampled"  # the best baseline on the rare classes
    assert got["rare_lift"]["synthetic"]["values"] == [pytest.approx(20.0), pytest.approx(0.0)]
    assert got["rare_lift"]["synthetic_filtered"]["mean"] == pytest.approx(10.0)
    assert got["acceptance"]["synthetic_filtered"]["mean"] == 0.5


def test_evaluate_asks_the_long_tail_question_with_five_arms_per_seed(generator_file, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", f"generator={generator_file}", f"out={out}", *QUICK, "longtail.profile=step:1,7@0.02",
                 "longtail.steps=2", "longtail.seeds=2", "longtail.min_confidence=0"]) == 0
    report = json.loads((out / "report.json").read_text())
    lt = report["longtail"]
    assert lt["counts"] == [108 if c in (1, 7) else 5421 for c in range(10)] and lt["rare_classes"] == [1, 7]
    assert set(lt["arms"]) == set(longtail.ARMS) and lt["seeds"] == 2
    for arm in lt["arms"].values():
        assert len(arm["rare_accuracy"]["values"]) == 2 and len(arm["per_class"]) == 10
        assert 0 <= arm["balanced_accuracy"]["mean"] <= 1
    assert set(lt["rare_lift"]) == {"synthetic", "synthetic_filtered"}
    assert "Long tail step:1,7@0.02" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["longtail.profile=zipf3"], "longtail.profile='zipf3' is not a profile"),
    (["longtail.profile=exp100", "samples={tmp}"], "pass generator=, not samples="),
])
def test_what_the_long_tail_question_cannot_do_is_one_line_exit_2(generator_file, tmp_path, capsys, args, message):
    filled = [a.format(tmp=tmp_path) for a in args]
    target = [] if any(a.startswith("samples=") for a in filled) else [f"generator={generator_file}"]
    assert main(["evaluate", *target, f"out={tmp_path / 'eval'}", *filled]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "eval").exists()
