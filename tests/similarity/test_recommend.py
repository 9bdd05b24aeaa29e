import json

import pytest

from medtl.errors import MedtlError
from medtl.similarity.recommend import compare_outcome, recommend

CANDIDATES = [
    {"source": "cxr", "encoder": "resnet18", "strategy": "dann", "scores": {"logme": -0.5, "proxy_a_distance": 1.2}},
    {"source": "cxr", "encoder": "densenet", "strategy": "coral", "scores": {"logme": -0.9, "proxy_a_distance": 0.4}},
    {"source": "imagenet", "encoder": "resnet18", "strategy": "cdan", "scores": {"logme": -1.5, "proxy_a_distance": 1.9}},
]


def test_ranking_order_and_explanation():
    rec = recommend({"name": "brain-mri", "n_labelled": 20}, CANDIDATES)
    keys = [r["key"] for r in rec["ranking"]]
    # logme weight 1, PAD 0.5, strategy prior 1 (the DA prior: 0.8 above PAD 1.5, else 0.5, so cdan 1,
    # dann and coral tied at 0.25): dann = (1 + 0.5*0.5 + 0.25)/2.5, coral = (0.5 + 0.5 + 0.25)/2.5, cdan = 1/2.5
    assert keys == ["cxr/resnet18/dann", "cxr/densenet/coral", "imagenet/resnet18/cdan"]
    assert rec["ranking"][0]["composite"] == pytest.approx(1.5 / 2.5)
    assert rec["ranking"][0]["scores"]["strategy_prior"] == 0.5 and rec["ranking"][2]["scores"]["strategy_prior"] == 0.8
    assert rec["recommended"] == "cxr/resnet18/dann"
    assert "highest logme" in rec["explanation"] and "Runner-up" in rec["explanation"]
    assert "lowest proxy_a_distance" in " ".join(rec["ranking"][1]["reasons"])
    json.dumps(rec)


def test_exclusions_from_target_info():
    cands = CANDIDATES + [{"source": "cxr", "encoder": "resnet18", "strategy": "no_such_method", "scores": {"logme": 0.0}}]
    rec = recommend({"n_labelled": 5, "shared_labels": False}, cands)
    assert [e["key"] for e in rec["excluded"]] == ["imagenet/resnet18/cdan"]
    assert "label set" in rec["excluded"][0]["reason"]
    assert rec["recommended"] == "cxr/resnet18/no_such_method"
    with pytest.raises(MedtlError, match="nothing can train"):
        recommend({"n_labelled": 0, "shared_labels": False}, CANDIDATES[:2])


def test_a_plain_fine_tune_is_the_source_only_baseline_when_the_jobs_train_on_the_source():
    """Without target labels a fine-tune has nothing to learn from, unless the jobs train on the labelled
    source (unsupervised adaptation): then it is the source-only baseline and is ranked with the rest."""
    baseline = {"source": "cxr", "encoder": "resnet18", "strategy": "source_only", "method": "full",
                "scores": {"proxy_a_distance": 1.2}}
    alone = recommend({"n_labelled": 0, "shared_labels": True}, CANDIDATES + [baseline])
    assert [e["key"] for e in alone["excluded"]] == ["cxr/resnet18/source_only"]
    uda = recommend({"n_labelled": 0, "shared_labels": True, "trains_on_source": True}, CANDIDATES + [baseline])
    assert uda["excluded"] == [] and "cxr/resnet18/source_only" in [r["key"] for r in uda["ranking"]]


def test_distance_only_warning_and_bad_input():
    rec = recommend({}, [dict(c, scores={"mmd2": v}) for c, v in zip(CANDIDATES, (0.3, 0.1, 0.2))])
    assert rec["recommended"] == "cxr/densenet/coral"
    assert "domain distances only" in rec["explanation"]
    with pytest.raises(MedtlError, match="no candidates"):
        recommend({}, [])
    with pytest.raises(MedtlError, match="twice"):
        recommend({}, [CANDIDATES[0], CANDIDATES[0]])
    with pytest.raises(MedtlError, match="direction"):
        recommend({}, CANDIDATES, weights={"auc": 1.0})
    rec = recommend({}, CANDIDATES, weights={"auc": 1.0}, higher_is_better={"auc": True})
    assert rec["weights"] == {}


def test_compare_outcome():
    rec = recommend({"n_labelled": 20}, CANDIDATES)
    out = compare_outcome(rec, {"cxr/resnet18/dann": 0.81, "cxr/densenet/coral": 0.84, "imagenet/resnet18/cdan": 0.70})
    assert out["best_observed"] == "cxr/densenet/coral" and not out["top1_is_best"]
    assert out["regret"] == pytest.approx(0.03)
    assert out["spearman"] == pytest.approx(0.5)
    tied = compare_outcome(rec, {"cxr/resnet18/dann": 1.0, "cxr/densenet/coral": 1.0, "imagenet/resnet18/cdan": 1.0})
    assert tied["spearman"] is None and tied["kendall"] is None and tied["regret"] == 0  # no order to correlate
    assert tied["top1_is_best"] is None and len(tied["best_observed_tie"]) == 3  # nothing to pick: not a hit
    with pytest.raises(MedtlError):
        compare_outcome(rec, {"x": 1.0})


def test_compare_outcome_correlates_the_scores_so_equal_scores_share_a_rank():
    """Spearman and Kendall of the composite scores against the outcomes, as scipy computes them with ties
    (not of the list position, which would order equal scores by name)."""
    from scipy.stats import kendalltau, spearmanr

    four = CANDIDATES + [{"source": "cxr", "encoder": "resnet18", "strategy": "coral", "scores": {"logme": -0.5}}]
    cands = [dict(c, scores={"logme": v}) for c, v in zip(four, (-0.5, -0.5, -0.9, -1.5))]
    rec = recommend({}, cands)
    composites = {r["key"]: r["composite"] for r in rec["ranking"]}
    assert len(set(composites.values())) == 3 and rec["tie"]  # two candidates share the top score
    outcome = {"cxr/resnet18/dann": 0.70, "cxr/densenet/coral": 0.80, "imagenet/resnet18/cdan": 0.75,
               "cxr/resnet18/coral": 0.60}
    out = compare_outcome(rec, outcome)
    keys = list(outcome)
    x, y = [composites[k] for k in keys], [outcome[k] for k in keys]
    assert out["spearman"] == pytest.approx(spearmanr(x, y).statistic)
    assert out["kendall"] == pytest.approx(kendalltau(x, y).statistic)
    assert out["top1_is_best"] is None  # the ranking was a tie: it picked nothing to be right or wrong about
    flat = recommend({}, [dict(c, scores={"logme": -0.5}) for c in CANDIDATES])
    none = compare_outcome(flat, {"cxr/resnet18/dann": 0.7, "cxr/densenet/coral": 0.8, "imagenet/resnet18/cdan": 0.9})
    assert none["spearman"] is None and none["kendall"] is None  # one score for all: no predicted order
    lower = compare_outcome(recommend({}, CANDIDATES[:3]), {"cxr/resnet18/dann": 9.0, "cxr/densenet/coral": 9.0,
                                                            "imagenet/resnet18/cdan": 12.0}, higher_is_better=False)
    assert lower["best_observed_tie"] == ["cxr/resnet18/dann", "cxr/densenet/coral"] and lower["top1_is_best"]


def test_equal_composites_are_a_tie_not_a_recommendation():
    same = [dict(c, scores={"logme": -0.5}) for c in CANDIDATES[:2]] + [CANDIDATES[2]]
    rec = recommend({}, same)  # no n_labelled: no strategy prior, only the scores given
    assert rec["ranking"][0]["composite"] == rec["ranking"][1]["composite"]
    assert rec["tie"] == ["cxr/densenet/coral", "cxr/resnet18/dann"]
    assert rec["explanation"].startswith("Tie: 2 options") and "Recommended" not in rec["explanation"]
    assert "Runner-up" not in rec["explanation"]
    assert recommend({"n_labelled": 20}, CANDIDATES)["tie"] == []  # separated scores: a recommendation


def test_frechet_ranks_only_candidates_that_share_an_encoder():
    """Fréchet is in the encoder's feature units (docs/similarity.md): across two encoders it is not ranked, and
    the explanation says why; within one encoder it is."""
    cands = [dict(c, scores={"frechet": f}) for c, f in zip(CANDIDATES, (11.1, 0.22, 5.0))]
    mixed = recommend({}, cands)  # resnet18 and densenet
    assert mixed["weights"] == {} and "frechet is not ranked" in mixed["explanation"]
    assert all(r["composite"] == 0.0 for r in mixed["ranking"]) and not any(r["metric_ranks"] for r in mixed["ranking"])
    same = recommend({}, [dict(c, encoder="resnet18") for c in cands])
    assert same["weights"] == {"frechet": 0.25} and same["recommended"] == "cxr/resnet18/coral"
    assert "not ranked" not in same["explanation"]
    # A candidate of another encoder without the score (a network from scratch: nothing measured) does not
    # stop the ranking of the ones that share an encoder
    scratch = dict(CANDIDATES[2], key="scratch/resnet18/full", encoder="scratch", scores={})
    with_scratch = recommend({}, [dict(c, encoder="resnet18") for c in cands] + [scratch])
    assert with_scratch["weights"] == {"frechet": 0.25} and "not ranked" not in with_scratch["explanation"]


def test_a_score_that_is_not_a_number_and_an_unknown_strategy_are_said():
    bad = [dict(CANDIDATES[0], scores={"mmd2": "high"})] + CANDIDATES[1:]
    with pytest.raises(MedtlError, match=r"score mmd2 = 'high' is not a number") as err:
        recommend({}, bad)
    assert "cxr/resnet18/dann" in str(err.value)
    typo = CANDIDATES[:2] + [{"source": "cxr", "encoder": "resnet18", "strategy": "lpft_typo", "scores": {"logme": 0.0}}]
    rec = recommend({"n_labelled": 20}, typo)
    assert "Not a medtl strategy (a typo?)" in rec["explanation"] and "cxr/resnet18/lpft_typo" in rec["explanation"]


def test_runners_up_level_with_each_other_are_named_together_and_tied_values_are_said():
    cands = [{"source": "cxr", "encoder": "e", "strategy": "a", "scores": {"logme": 0.0}},
             {"source": "cxr", "encoder": "e", "strategy": "b", "scores": {"logme": -1.0}},
             {"source": "cxr", "encoder": "e", "strategy": "c", "scores": {"logme": -1.0}}]
    rec = recommend({}, cands)
    assert rec["recommended"] == "cxr/e/a" and rec["tie"] == []
    assert "Runners-up, level with each other (composite 0.250): cxr/e/b, cxr/e/c." in rec["explanation"]
    assert "Runner-up:" not in rec["explanation"]
    assert rec["ranking"][1]["reasons"] == ["2nd best logme (-1) of 3, level with 1 other"]


def test_a_candidate_no_measurement_applies_to_says_why():
    """Training from scratch uses nothing of the source: the pipeline gives it no scores, with the reason."""
    cands = [dict(CANDIDATES[0]), {"source": "cxr", "encoder": "random_init", "strategy": "scratch", "scores": {},
                                   "unmeasured": "trains from random weights, using nothing of the source"}]
    row = next(r for r in recommend({"n_labelled": 20}, cands)["ranking"] if r["strategy"] == "scratch")
    assert row["missing_metrics"] == ["logme", "proxy_a_distance"] and row["metric_ranks"].keys() == {"strategy_prior"}
    assert "no logme, proxy_a_distance: trains from random weights, using nothing of the source (counted as the " \
           "middle rank)" in row["reasons"]


def test_a_pick_the_image_resamples_overturn_is_reported_as_unstable():
    """On the full images a scores best, but on random halves b comes out on top as often: the measures do
    not order them, and the record says so instead of recommending a."""
    def cands(a, b):
        return [{"source": "s", "encoder": "e1", "strategy": "a", "scores": {"logme": a}},
                {"source": "s", "encoder": "e2", "strategy": "b", "scores": {"logme": b}},
                {"source": "s", "encoder": "e3", "strategy": "c", "scores": {"logme": -5.0}}]

    flips = [cands(-0.44, -0.45) if i % 2 else cands(-0.46, -0.45) for i in range(10)]
    rec = recommend({}, cands(-0.44, -0.45), resampled=flips)
    assert rec["stability"] == {"resamples": 10, "top_share": {"s/e1/a": 0.5, "s/e2/b": 0.5}, "support": 0.5}
    assert rec["tie"] == ["s/e1/a", "s/e2/b"] and rec["explanation"].startswith("Unstable: on 10 random halves")
    steady = recommend({}, cands(-0.44, -0.45), resampled=[cands(-0.44, -0.45)] * 10)
    assert steady["tie"] == [] and steady["stability"]["support"] == 1.0
    assert "It stays on top on 100% of 10 random halves of the images." in steady["explanation"]


def test_a_score_every_candidate_shares_is_not_called_the_highest():
    same = [{"source": "s", "encoder": "e", "strategy": k, "scores": {"logme": -0.5}} for k in ("a", "b")]
    rec = recommend({}, same)
    assert rec["ranking"][0]["reasons"] == ["logme (-0.5) the same for all 2"] and "highest" not in rec["explanation"]


def test_a_pick_the_halves_never_support_is_a_tie_with_the_one_they_do():
    def cands(a, b):
        return [{"source": "s", "encoder": "e1", "strategy": "a", "scores": {"logme": a}},
                {"source": "s", "encoder": "e2", "strategy": "b", "scores": {"logme": b}}]

    halves = [cands(-0.46, -0.45)] * 19 + [cands(-0.44, -0.45)]  # b on top in 19 of 20
    rec = recommend({}, cands(-0.44, -0.45), resampled=halves)
    assert rec["stability"]["support"] == 0.05 and rec["tie"] == ["s/e1/a", "s/e2/b"]
    assert rec["explanation"].startswith("Unstable")


def test_an_order_made_by_the_prior_alone_says_so():
    """One encoder for every candidate: every measurement is the same for all, so the strategy prior orders
    them, and a stability over image halves would be 100% by construction: the record says prior_only."""
    same = [{"source": "s", "encoder": "e", "strategy": k, "scores": {"logme": -0.5, "proxy_a_distance": 1.2}}
            for k in ("lp_ft", "full", "feature_extraction")]
    rec = recommend({"n_labelled": 40}, same, resampled=[same] * 4)
    # a rule of thumb is no measured basis: no pick, every option open (it had said "Recommended: lp_ft", where
    # this project's own study found scratch best)
    assert rec["prior_only"] and rec["explanation"].startswith("No pick: no measurement tells these 3 options apart")
    assert rec["tie"] == ["s/e/lp_ft", "s/e/feature_extraction", "s/e/full"]
    assert "would order them s/e/lp_ft (0.9) > s/e/feature_extraction (0.8) > s/e/full (0.5)" in rec["explanation"]
    assert "Recommended" not in rec["explanation"] and "It stays on top" not in rec["explanation"]
    assert not recommend({"n_labelled": 40}, CANDIDATES)["prior_only"]


def test_a_lone_measurement_orders_and_a_zero_prior_weight_does_not_claim_the_prior():
    lone = [{"source": "s", "encoder": "e", "strategy": "feature_extraction", "scores": {"logme": -0.5}},
            {"source": "s", "encoder": "e", "strategy": "full", "scores": {}},
            {"source": "s", "encoder": "e", "strategy": "lp_ft", "scores": {}}]
    # a measurement only one option has ranks it nowhere: the middle rank, as a missing one (a lone, absurd LEEP
    # of -50 had made its candidate the recommendation)
    rec = recommend({"n_labelled": 1000}, lone)
    probe = next(r for r in rec["ranking"] if r["strategy"] == "feature_extraction")
    assert probe["metric_ranks"]["logme"] == 0.5 and rec["prior_only"] and rec["explanation"].startswith("No pick")
    absurd = [{"source": "s", "encoder": "e", "strategy": "lp_ft", "scores": {"logme": -0.4, "leep": -50.0}},
              {"source": "s", "encoder": "f", "strategy": "lp_ft", "scores": {"logme": -0.4}}]
    rec = recommend({}, absurd)
    assert [r["composite"] for r in rec["ranking"]] == [0.5, 0.5] and len(rec["tie"]) == 2
    same = [{"source": "s", "encoder": "e", "strategy": k, "scores": {"logme": -0.5}}
            for k in ("feature_extraction", "full", "lp_ft")]
    rec = recommend({"n_labelled": 40}, same, weights={"logme": 1.0, "strategy_prior": 0.0})
    assert not rec["prior_only"] and "No measurement tells these candidates apart (the same for every one that " \
        "has it)." in rec["explanation"] and "prior's alone" not in rec["explanation"]


def test_options_that_share_every_measurement_are_not_ordered_by_the_prior():
    """Two strategies on one encoder beside another encoder: the measurements separate the encoders, and only the
    prior separated lp_ft from full ('Recommended: lp_ft ... on top on 100% of halves', by construction)."""
    m = {"logme": -0.3, "proxy_a_distance": 1.2}
    cands = [{"source": "s", "encoder": "m", "strategy": "lp_ft", "scores": dict(m)},
             {"source": "s", "encoder": "m", "strategy": "full", "scores": dict(m)},
             {"source": "s", "encoder": "e", "strategy": "full", "scores": {"logme": -0.9, "proxy_a_distance": 1.8}}]
    rec = recommend({"n_labelled": 30}, cands, resampled=[cands] * 4)
    assert not rec["prior_only"] and rec["tie"] == ["s/m/lp_ft", "s/m/full"]
    assert rec["explanation"].startswith("No pick between s/m/lp_ft, s/m/full: s/m/lp_ft (0.9) > s/m/full (0.5) "
                                         "share every measurement")
    assert "place them above 1 other option(s)" in rec["explanation"] and "Recommended" not in rec["explanation"]
    # the halves split their top between the two by construction: the pair's share is what stays on top
    assert rec["stability"]["support"] == 1.0 and "Together they stay on top on 100% of 4" in rec["explanation"]
    # an option of another encoder within the tie tolerance joins, named apart; who joins does not depend on names
    c = lambda e, s, v: {"source": "s", "encoder": e, "strategy": s, "scores": {"logme": v}}  # noqa: E731
    ties = [recommend({"n_labelled": 30}, [c("m", "lp_ft", -0.3), c("m", "full", -0.3), c(z, "full", -0.1)],
                      weights={"logme": 1, "strategy_prior": 1}) for z in ("z", "e")]
    assert [sorted(r["tie"]) for r in ties] == [["s/m/full", "s/m/lp_ft", "s/z/full"],
                                                ["s/e/full", "s/m/full", "s/m/lp_ft"]]
    # s/z/full measures best (logme -0.1): only the prior brings lp_ft level, and the text says so
    assert ties[0]["explanation"].startswith("No pick: by the measurements alone s/z/full comes first (composite "
                                             "1.000 without the strategies' prior, against 0.250 for s/m/lp_ft)")
    lone = [{"source": "s", "encoder": "m", "strategy": "full", "scores": {"logme": -0.3, "leep": -0.7}},
            {"source": "s", "encoder": "e", "strategy": "full", "scores": {"logme": -0.9}}]
    row = next(r for r in recommend({}, lone)["ranking"] if r["key"] == "s/m/full")
    assert "leep (-0.7) measured for this option only (the middle rank)" in row["reasons"]


def test_the_prior_does_not_lift_an_option_over_one_the_measurements_put_first():
    """A review's notebook 03 case: the MRI source measured better than the chest X-ray source (same LogME and
    H-score, closer PAD and MMD), the prior lifted the chest X-ray lp_ft to the top, and the text said 'the
    measurements place them above the other 4 options'. Without the prior the MRI option is the pick."""
    cxr = {"mmd2": 0.124, "proxy_a_distance": 2.0, "logme": -0.563, "leep": -0.667, "h_score": 0.937}
    mri = {"mmd2": 0.024, "proxy_a_distance": 0.71, "logme": -0.563, "h_score": 0.937}
    rnd_c = {"mmd2": 0.263, "proxy_a_distance": 2.0, "logme": -0.664, "h_score": 0.956}
    rnd_m = {"mmd2": 0.038, "proxy_a_distance": 0.71, "logme": -0.664, "h_score": 0.956}
    cands = [dict(source="cxr", encoder="pre", strategy="lp_ft", scores=cxr),
             dict(source="cxr", encoder="pre", strategy="dann", scores=cxr),
             dict(source="mri", encoder="pre", strategy="dann", scores=mri),
             dict(source="cxr", encoder="rnd", strategy="dann", scores=rnd_c),
             dict(source="mri", encoder="rnd", strategy="dann", scores=rnd_m),
             dict(source="none", encoder="rnd", strategy="scratch", scores={}, unmeasured="scratch")]
    rec = recommend({"name": "t", "n_labelled": 177, "shared_labels": False}, cands)
    assert rec["ranking"][0]["key"] == "cxr/pre/lp_ft"  # by the composite, prior included
    assert "mri/pre/dann" in rec["tie"] and "cxr/pre/lp_ft" in rec["tie"]
    assert rec["explanation"].startswith("No pick: by the measurements alone mri/pre/dann comes first")
    assert "Recommended" not in rec["explanation"] and "place them above" not in rec["explanation"]
    by_key = {r["key"]: r for r in rec["ranking"]}
    # the measured composite by hand: mean of the measured ranks (missing LEEP = 0.5), equal weights here
    mri_ranks = by_key["mri/pre/dann"]["metric_ranks"]
    weights = rec["weights"]
    expected = (sum(weights[m] * mri_ranks.get(m, 0.5) for m in weights if m != "strategy_prior")
                / sum(w for m, w in weights.items() if m != "strategy_prior"))
    assert by_key["mri/pre/dann"]["measured_composite"] == pytest.approx(expected)
    assert recommend({"name": "t", "shared_labels": False}, cands)["explanation"].startswith(
        "Recommended: mri/pre/dann")


def test_equal_priors_are_not_said_to_order_the_options():
    """The 3D pipelines' options (full fine-tuning at few labels, scratch) all have prior 0.5; the text chained
    them with '>' in alphabetical order, an order neither a measurement nor the prior gives."""
    cands = [{"source": "s", "encoder": "e", "strategy": f"full+{lift}", "method": "full", "scores": {"logme": -0.5}}
             for lift in ("i3d", "acs", "2.5d")]
    rec = recommend({"n_labelled": 20}, cands)
    assert rec["prior_only"] and "gives every one the same value (0.5): it orders none of them either" in \
        rec["explanation"] and ">" not in rec["explanation"]


def test_no_pick_counts_only_options_the_measurements_put_below_every_tied_one():
    """'The measurements place them above N other option(s)' counted against the best option only, so it took in
    tied options and options that measured better than the weaker tied ones (a case from a seeded search)."""
    def c(e, s, logme, mmd2, h):
        return {"source": "s", "encoder": e, "strategy": s, "scores": {"logme": logme, "mmd2": mmd2, "h_score": h}}

    cands = [c("a", "full", 0.52, 0.52, 0.172), c("b", "dann", 2.317, 0.886, 0.853), c("b", "full", 2.317, 0.886, 0.853),
             c("c", "full", 0.19, 0.978, 0.999), c("c", "lp_ft", 0.19, 0.978, 0.999),
             c("d", "linear_probe", -0.091, 0.234, 0.392),
             {"source": "none", "encoder": "rnd", "strategy": "scratch", "scores": {}, "unmeasured": "scratch"}]
    rec = recommend({"n_labelled": 100, "shared_labels": True}, cands)
    assert sorted(rec["tie"]) == ["s/b/dann", "s/b/full", "s/c/full", "s/c/lp_ft"]
    measured = {r["key"]: r["measured_composite"] for r in rec["ranking"]}
    floor = min(measured[t] for t in rec["tie"])
    below = [k for k in measured if k not in rec["tie"] + rec["not_compared"] and floor - measured[k] > 0.01]
    best = rec["ranking"][0]["key"]
    by_best = [k for k in measured if measured[best] - measured[k] > 0.01]  # the old count
    assert f"place them above {len(below)} other option(s)" in rec["explanation"] and len(below) < len(by_best)


def test_a_second_source_does_not_make_a_pick_over_scratch_that_nothing_measured():
    """A review's case: lp_ft from one source beside scratch was no pick; adding lp_ft from a farther source made
    the closer one 'Recommended' over scratch at 100% of halves, and 'above 3 other option(s)' counted scratch,
    though the measurements only compared the two sources (scratch sits at the middle rank of each)."""
    def c(source, pad, mmd2):
        return {"source": source, "encoder": "untrained", "strategy": "lp_ft",
                "scores": {"proxy_a_distance": pad, "mmd2": mmd2}}

    scratch = {"source": "cxr", "encoder": "random_init", "strategy": "scratch", "scores": {},
               "unmeasured": "trains from random weights, using nothing of the source"}
    alone = recommend({"n_labelled": 50}, [c("tumor4", 1.34, 0.2), scratch])
    assert alone["prior_only"] and alone["explanation"].startswith("No pick")
    rec = recommend({"n_labelled": 50}, [c("tumor4", 1.34, 0.2), c("cxr", 1.96, 0.7), scratch])
    assert rec["recommended"] == "tumor4/untrained/lp_ft" and rec["not_compared"] == ["cxr/random_init/scratch"]
    assert ("Not compared with cxr/random_init/scratch: nothing measured speaks for or against it" in rec["explanation"]
            and "over the other measured options only" in rec["explanation"])
    assert "Runner-up: cxr/untrained/lp_ft" in rec["explanation"]  # not scratch: nothing placed it second
    # with the transfer options twins (one encoder and source), the count of options below leaves scratch out
    twins = [dict(c("tumor4", 1.34, 0.2), strategy=s) for s in ("lp_ft", "full")]
    rec = recommend({"n_labelled": 50}, [*twins, c("cxr", 1.96, 0.7), scratch])
    assert "place them above 1 other option(s)" in rec["explanation"] and rec["not_compared"] == ["cxr/random_init/scratch"]
