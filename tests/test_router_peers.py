"""Peer routers (kNN, linear, MLP, matrix factorisation, similarity-weighted): worked examples, the known
routing, and ``python -m router evaluate`` reporting them beside the router on the same rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from router.__main__ import main
from router.base import BackendChoice, RouterError
from router.features import HashingTextEncoder
from router.peers import PEER_NAMES, KNNRouter, MFRouter, SWRankingRouter, fit_peers, stop_split
from router.table import FOLD_HELDOUT, build_table, split_folds
from router.training import build_extractor, compute_features
from tests.test_router_support import BACKENDS, make_pairs, write_jsonl

TWO = [BackendChoice("a", "vlm", 0.1), BackendChoice("b", "vlm+llm", 1.0)]


def test_knn_worked_example() -> None:
    # Standardised 1-d features: -1 for the first two rows, +1 for the last two; k = 2.
    x = np.array([[0.0], [0.0], [2.0], [2.0]])
    y = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0], [0.0, 1.0]])
    knn = KNNRouter(TWO, features=x, correct=y, k=2)
    # Prior (one pseudo-count): a = (2 + .5) / (4 + 1) = .5, b = (2 + .5) / (3 + 1) = .625.
    # Near the first rows: a = (2 + .5) / (2 + 1) = 5/6; b = (0 + .625) / (1 + 1) = .3125 (one label).
    probs = knn.probabilities(np.array([[0.1], [1.9]]))
    assert probs[0] == pytest.approx([5 / 6, 0.3125])
    assert probs[1] == pytest.approx([0.5 / 3, 2.625 / 3])


def test_sw_ranking_worked_example() -> None:
    # Unit-normalised standardised features are +1 / -1; a query like row 0 has s = (1, -1), s_max = 1,
    # so the weights are 10 * 10**1 = 100 and 10 * 10**-1 = 1.
    x = np.array([[0.0], [2.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    sw = SWRankingRouter(TWO, features=x, correct=y)
    probs = sw.probabilities(np.array([[0.5]]))
    assert probs[0] == pytest.approx([100 / 101, 1 / 101])


def test_mf_learns_a_split_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    side = x[:, 0] > 0
    y = np.stack([side, ~side], axis=1).astype(float)
    groups = [f"g{i}" for i in range(300)]
    mf = MFRouter.fit(TWO, x, y, groups=groups, seed=1)
    probs = mf.probabilities(x)
    assert ((probs[:, 0] > probs[:, 1]) == side).mean() > 0.9
    again = MFRouter.fit(TWO, x, y, groups=groups, seed=1).probabilities(x)
    assert np.array_equal(probs, again)


def test_stop_split_keeps_an_image_together() -> None:
    groups = [f"img{i // 3}" for i in range(300)]
    fit_rows, stop_rows = stop_split(groups, 300)
    assert 0 < stop_rows.size < 100 and fit_rows.size + stop_rows.size == 300
    assert not {groups[i] for i in fit_rows} & {groups[i] for i in stop_rows}


@pytest.fixture(scope="module")
def synthetic():  # type: ignore[no-untyped-def]
    """The known routing (recognition -> clip, counting/reasoning -> llava) on hashed question features."""
    rows = make_pairs(200, seed=5)
    table, _ = build_table_from_rows(rows)
    extractor = build_extractor(
        kind="embedding", text_encoder=HashingTextEncoder(), image_embedder=None, image_embedder_name=None,
        image_dim=0, text_only=True,
    )
    features = compute_features(table, extractor)
    folds, _ = split_folds(table.groups)
    train = np.flatnonzero(folds != FOLD_HELDOUT)
    held = np.flatnonzero(folds == FOLD_HELDOUT)
    start = time.perf_counter()
    peers = fit_peers(features[train], table.correct[train], BACKENDS, groups=[table.groups[i] for i in train], extractor=extractor)
    seconds = time.perf_counter() - start
    return table, features, held, peers, seconds


def build_table_from_rows(rows: list[dict]):  # type: ignore[no-untyped-def]
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="peers-"))
    return build_table(pairs=[write_jsonl(rows, folder / "pairs.jsonl")], backends=[b.name for b in BACKENDS])


def test_every_peer_learns_the_known_routing(synthetic) -> None:  # type: ignore[no-untyped-def]
    table, features, held, peers, seconds = synthetic
    assert list(peers) == list(PEER_NAMES)
    y = table.correct[held].astype(float)
    best_single = y.mean(axis=0).max()
    for name, peer in peers.items():
        probs, _ = peer.score_features(features[held])
        assert probs.shape == y.shape and np.all((probs >= 0) & (probs <= 1)), name
        routed = y[np.arange(len(held)), peer.choose_batch(probs)].mean()
        # Perfect routing scores about 0.92 (8% label noise); a single backend about 0.5.
        assert routed >= best_single + 0.25, (name, routed, best_single)
        assert peer.fit_info["rows"] == int(np.isfinite(table.correct[np.setdiff1d(np.arange(table.n_queries), held)]).any(axis=1).sum())
    assert seconds < 60


def test_peers_decide_from_a_question(synthetic) -> None:  # type: ignore[no-untyped-def]
    _, _, _, peers, _ = synthetic
    for name, peer in peers.items():
        counting = peer.decide(None, "how many boats are there?")
        assert counting.fallback is None and counting.choice == "llava", (name, counting)
        assert peer.decide(None, "what color is the boat?").choice == "clip", name
        assert peer.decide(None, "how many boats are there?", lambda_cost=100.0).choice == "clip", name
        probs, cats = peer.score_batch([None, None], ["how many cats are there?", "what is this cup?"])
        assert probs.shape == (2, 3) and cats == ["counting", "object"], name


def test_fit_peers_rejects_bad_input() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(RouterError, match="valid: knn"):
        fit_peers(x, np.zeros((4, 2)), TWO, names=["knn", "ghost"])
    with pytest.raises(RouterError, match="at least 2 training rows"):
        fit_peers(x, np.array([[1.0, 0.0]] + [[np.nan, np.nan]] * 3), TWO)
    with pytest.raises(RouterError, match="results"):
        fit_peers(x, np.zeros((4, 3)), TWO)


# ---------------------------------------------------------------------------------- the CLI end to end
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("cli")
    train = write_jsonl(make_pairs(150, seed=4), folder / "train.jsonl")
    rows = make_pairs(60, seed=9)
    for row in rows:  # other images than the training file's
        row["query_id"] = "test-" + row["query_id"]
        row["image_sha256"] = f"{int(row['image_sha256'], 16) + 10_000:064x}"
    test = write_jsonl(rows, folder / "test.jsonl")
    backends = folder / "backends.json"
    backends.write_text(json.dumps([b.to_json() for b in BACKENDS]))
    out = folder / "routers"
    assert main(["train", "--pairs", str(train), "--out", str(out), "--encoder", "hashing", "--backends", str(backends)]) == 0
    return {"train": train, "test": test, "backends": backends, "out": out}


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["evaluate", "--json", "--timing", "0", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_json_has_the_literature_metrics_and_peers(cli_run, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    report = _evaluate(
        capsys, "--router", str(cli_run["out"]), "--pairs", str(cli_run["test"]), "--split", "all",
        "--train-pairs", str(cli_run["train"]), "--backends", str(cli_run["backends"]),
    )
    assert report["n_queries"] == 180
    low, high = report["delta_best_single_ci95"]
    assert low <= report["delta_best_single"] <= high
    assert report["delta_best_single"] > 0.2 and report["delta_best_single_chosen_on"] == "training rows"
    assert 0 < report["headroom_captured"] <= 1.0
    assert 0 < report["aiq"] <= 1
    # On these rows the cheapest backend is also the most accurate single one: no gap for CPT to recover.
    acc = report["per_backend_accuracy"]
    assert acc["clip"] > max(acc["llava"], acc["slow"])
    assert report["cpt50"] is None and report["cpt80"] is None
    assert set(report["peers"]) == set(PEER_NAMES)
    for name, peer in report["peers"].items():
        assert {"routed_accuracy", "ece", "aiq"} <= set(peer), name
        assert peer["routed_accuracy"] > report["best_single_accuracy"] + 0.2, (name, peer)
    info = report["peers_training"]
    assert info["rows"] > 300 and info["heldout_rows_left_out"] > 0 and info["rows_sharing_an_evaluation_image_left_out"] == 0


def test_evaluate_defaults_to_the_pairs_outside_the_heldout_images(cli_run, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    common = ["--router", str(cli_run["out"]), "--backends", str(cli_run["backends"])]
    heldout = _evaluate(capsys, *common, "--pairs", str(cli_run["train"]), "--peers", "knn,mf")
    assert set(heldout["peers"]) == {"knn", "mf"}
    acc = heldout["per_backend_accuracy"]
    assert acc["llava"] > acc["clip"]  # a gap from the cheapest to the most accurate backend, so CPT exists
    assert 0 < heldout["cpt50"] <= heldout["cpt80"] < 1
    assert heldout["peers_training"]["rows"] + heldout["n_queries"] == 450
    # A separate test file alone has no training rows: no peers, and the report says what to pass.
    alone = _evaluate(capsys, *common, "--pairs", str(cli_run["test"]), "--split", "all")
    assert alone["peers"] == {} and "--train-pairs" in alone["peers_training"]["note"]
    # Evaluating on the training file itself with --split all: every row shares an evaluated image.
    same = _evaluate(capsys, *common, "--pairs", str(cli_run["train"]), "--split", "all", "--train-pairs", str(cli_run["train"]))
    assert same["peers"] == {} and same["peers_training"]["rows_sharing_an_evaluation_image_left_out"] > 0
    none = _evaluate(capsys, *common, "--pairs", str(cli_run["train"]), "--peers", "none")
    assert none["peers"] == {} and "peers_training" not in none
    assert main(["evaluate", *common, "--pairs", str(cli_run["train"]), "--peers", "knn,ghost"]) == 2
    assert "valid: knn" in capsys.readouterr().err


def test_train_card_carries_the_curve(cli_run) -> None:  # type: ignore[no-untyped-def]
    from components.cost_quality import cost_quality_figure, cost_quality_scopes
    from router.versions import VersionRegistry

    registry = VersionRegistry(cli_run["out"])
    card = json.loads((registry.path_of(registry.active_version()) / "card.json").read_text())
    curve = card["metrics"]["cost_quality"]
    assert curve["overall"]["points"] and {b["name"] for b in curve["overall"]["backends"]} == {b.name for b in BACKENDS}
    assert set(cost_quality_scopes(card)) >= {"overall", "counting"}
    assert len(cost_quality_figure(card, "counting").data) == 2
