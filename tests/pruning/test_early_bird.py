"""Early-bird tickets: distances against masks drawn independently from saved weights, the stop
rule, the drawn mask is round 1's, and a run killed before its stop resumes to the same stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lottery.cli.main import main
from lottery.core.storage import load_checkpoint
from lottery.models.compute import profile, training_macs
from lottery.pruning.early_bird import EarlyBird, default_every, mask_distance
from lottery.pruning.masks import Mask, load_sparse
from tests.conftest import kill_when, lottery_process


def test_distance_is_the_fraction_of_decisions_that_differ():
    g = torch.Generator().manual_seed(0)
    a = Mask({"x": torch.rand(30, 7, generator=g) < 0.5, "y": torch.rand(11, generator=g) < 0.5})
    b = Mask({"x": torch.rand(30, 7, generator=g) < 0.5, "y": torch.rand(11, generator=g) < 0.5})
    expected = sum(int(np.sum(a.tensors[n].numpy() != b.tensors[n].numpy())) for n in ("x", "y"))
    assert mask_distance(a, b) == expected / (30 * 7 + 11)
    assert mask_distance(a, a) == 0.0


def test_the_stop_rule_waits_for_a_full_window_below_the_threshold_and_the_earliest_step():
    # masks whose distances to the previous one are, in order: 0.4, 0.05 x4, 0.2, 0.05 x5
    n = 20
    distances = [0.4, 0.05, 0.05, 0.05, 0.05, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05]
    masks, bits = [torch.zeros(n, dtype=torch.bool)], torch.zeros(n, dtype=torch.bool)
    for d in distances:
        bits = bits.clone()
        bits[: round(d * n)] ^= True
        masks.append(bits)
    drawn = iter(Mask({"w": m}) for m in masks)
    bird = EarlyBird(lambda _: next(drawn), every=3, threshold=0.1, earliest=0)
    model = torch.nn.Linear(2, 2)
    stops = [bird.observe(3 * i, model) for i in range(len(masks))]
    assert [r["distance"] for r in bird.records] == [None, *distances]
    assert stops.index(True) == len(masks) - 1  # the 0.2 resets the window; 5 more are needed
    assert bird.due(9) and not bird.due(10)
    drawn = iter(Mask({"w": m}) for m in masks)
    late = EarlyBird(lambda _: next(drawn), every=3, threshold=0.5, earliest=30)
    stops = [late.observe(3 * i, model) for i in range(len(masks))]
    assert stops.index(True) == 10  # below 0.5 from the start, but not before step 30
    assert default_every(16_000) == 100 and default_every(50) == 1
    drawn = iter(Mask({"w": m}) for m in masks)
    watch = EarlyBird(lambda _: next(drawn), every=3, threshold=0.0)  # records, never stops
    assert not any(watch.observe(3 * i, model) for i in range(len(masks)))
    assert [r["distance"] for r in watch.records] == [None, *distances]


SLICE = ["--model", "lenet_300_100", "--dataset", "fashion_mnist", "--train-limit", "2000",
         "--val-size", "200", "--test-limit", "500", "--batch-size", "50", "--steps", "120",
         "--eval-every", "40", "--device", "cpu", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.mark.slow  # the fast subset keeps the library-level checks
def test_distances_and_the_drawn_mask_match_masks_drawn_from_saved_weights(tmp_path):
    out = tmp_path / "search"
    every, saves = 5, ",".join(str(s) for s in range(5, 121, 5))
    argv = ["imp", *SLICE, "--rounds", "1", "--early-bird", "--eb-every", str(every),
            "--eb-threshold", "0.05", "--save-at", saves, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    ticket = out / "round_00" / "ticket"
    records = [json.loads(line) for line in (ticket / "early_bird.jsonl").open()]
    stop = next(r["step"] for r in records if r["drawn"])
    assert stop < 120
    round1 = Mask.load(out / "round_01" / "mask.npz")
    kept = {n: k for n, (k, _) in round1.layer_counts().items()}

    def drawn(weights: dict) -> dict[str, np.ndarray]:
        """Each layer's `kept` largest |w|, by a float64 numpy sort (no ties in trained weights)."""
        out = {}
        for n, k in kept.items():
            w = np.abs(weights[n].double().numpy()).reshape(-1)
            keep = np.zeros(w.size, dtype=bool)
            keep[np.argsort(-w, kind="stable")[:k]] = True
            out[n] = keep
        return out

    steps = [r["step"] for r in records]
    assert steps == list(range(0, stop + 1, every))
    masks = {s: drawn(load_checkpoint(ticket / "checkpoints" / f"step_{s:07d}.pt")["model"])
             for s in steps if s}  # fmt: skip
    masks[0] = drawn(load_checkpoint(ticket / "checkpoints" / "step_0000000.pt")["model"])
    total = sum(round1.layer_counts()[n][1] for n in kept)
    for prev, r in zip(records, records[1:], strict=False):
        a, b = masks[prev["step"]], masks[r["step"]]
        assert r["distance"] == sum(int((a[n] != b[n]).sum()) for n in kept) / total
    # the stop is the first step whose last five distances are all below the threshold
    distances = [r["distance"] for r in records[1:]]
    first = next(i for i in range(4, len(distances)) if max(distances[i - 4 : i + 1]) < 0.05)
    assert stop == records[first + 1]["step"]
    # round 0 ended there, evaluated there, and round 1 prunes exactly the mask drawn there
    result = json.loads((ticket / "result.json").read_text())
    metrics = [json.loads(line) for line in (ticket / "metrics.jsonl").open()]
    assert result["steps"] == stop and metrics[-1]["step"] == stop
    assert json.loads((out / "summary.json").read_text())["rounds"][0]["steps"] == stop
    costs = profile("lenet_300_100", (1, 28, 28), 10).layers  # round 0 paid for its steps only
    assert result["compute"]["train_macs"] == stop * 50 * training_macs(costs)
    for n in kept:
        assert np.array_equal(round1.tensors[n].numpy().reshape(-1), masks[stop][n])
    final, _ = load_sparse(ticket / "weights.npz")
    at_stop = load_checkpoint(ticket / "checkpoints" / f"step_{stop:07d}.pt")["model"]
    assert all(torch.equal(final[n], at_stop[n]) for n in final)
    # the report draws the distance curve and says where the ticket was drawn
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"Early-bird ticket drawn at step {stop} of 120 " in text
    assert (tmp_path / "report" / "early_bird.png").exists()


KILLED = ["imp", "--model", "lenet_300_100", "--dataset", "fashion_mnist", "--train-limit",
          "4000", "--val-size", "200", "--test-limit", "500", "--batch-size", "50", "--steps",
          "1500", "--eval-every", "100", "--checkpoint-every", "25", "--device", "cpu",
          "--threads", "1", "--rounds", "1", "--early-bird", "--eb-every", "10",
          "--eb-threshold", "0.016", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_a_search_killed_before_its_early_bird_stop_resumes_to_the_same_stop(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    lottery_process([*KILLED, "--out", str(whole)], check=True)
    log = whole / "round_00" / "ticket" / "early_bird.jsonl"
    stop = json.loads(log.read_text().splitlines()[-1])
    assert stop["drawn"] and 300 < stop["step"] < 1500  # a stop late enough to kill before
    log = cut / "round_00" / "ticket" / "early_bird.jsonl"
    kill_when([*KILLED, "--out", str(cut)], log, 25)  # past step 240
    assert not (cut / "round_00" / "ticket" / "result.json").exists()
    done = lottery_process([*KILLED, "--out", str(cut)])
    assert done.returncode == 0, done.stderr
    assert "resuming from step" in done.stderr
    for rel in ("round_00/ticket/early_bird.jsonl", "round_00/ticket/metrics.jsonl",
                "round_00/ticket/result.json", "round_01/ticket/metrics.jsonl"):  # fmt: skip
        a, b = (whole / rel).read_text(), (cut / rel).read_text()
        if rel.endswith("result.json"):
            a, b = ({k: v for k, v in json.loads(t).items() if k != "seconds"} for t in (a, b))
        assert a == b, rel
    assert Mask.load(whole / "round_01" / "mask.npz").equal(
        Mask.load(cut / "round_01" / "mask.npz")
    )
    for r in ("round_00", "round_01"):
        a, _ = load_sparse(whole / r / "ticket" / "weights.npz")
        b, _ = load_sparse(cut / r / "ticket" / "weights.npz")
        assert all(torch.equal(a[n], b[n]) for n in a), r
