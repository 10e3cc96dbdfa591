"""Write a study's Markdown report: `python report.py --study runs/study`.

Reads only the files run_study.py left in the study folder (study.json, the endpoints' metrics
JSONs, the curve evaluations, the planes and the figures; model code only to count parameters) and
writes the answer generated from the numbers first (the groups' verdicts in one table, and two
sentences), then the evidence: the set-up, the endpoint and curve tables, the figures, the planes
(Figure 1) in numbers, ensembles, function space and probes; last, the criterion, each group's
verdict in numbers and the checks of fits and endpoints.
Of those files it uses the outputs of the plan in study.json, and evaluations only when they fit
its settings and the curve checkpoint as it is now: files of earlier runs are named, not used.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

import ae
from lib import cli
from lib.figures import plane_label
from lib.training import CONVERGED_DROP, mean_and_se, pair_label
from lib.files import (CURVE_FORMAT, ENSEMBLE_FORMAT, EVAL_FORMAT, FUNCTION_SPACE_FORMAT, PLANE_FORMAT, SIMPLEX_FORMAT, UserError, file_sha256,
                       atomic_write, ensure_dir, load_checkpoint, read_result)

# A curve is low-loss if its max test loss is at most this fraction above the worse endpoint's.
CURVE_EXCESS = 0.10
# A segment has a barrier if its relative test barrier exceeds this and is this many times the curve's.
SEGMENT_BARRIER = 0.10
SEGMENT_OVER_CURVE = 2.0
# A barrier (or a curve's excess over its worse end) within this many standard errors of zero counts as none.
SIGNIFICANCE = 2.0
# Image quality stays at the endpoints' level along a path if its lowest SSIM is at most this fraction below the lower end's.
SSIM_DROP = 0.05

# The verdict categories' headlines, as the report states them.
HEADLINES = {
    "yes": "yes: connected by low-loss curves although the straight segment is not",
    "mixed": "yes: connected by low-loss curves; the straight segment has a barrier for only some pairs",
    "linear": "yes, and even the straight segment is low-loss (linear mode connectivity; the curve adds little)",
    "partly": "partly: only some of the fitted curves are low-loss paths",
    "no": "no: the fitted curves are not low-loss paths",
}
# The same categories in a word or two, for the table the report leads with.
VERDICTS = {"yes": "connected; segment barrier", "mixed": "connected; segment barrier for some pairs",
            "linear": "connected; segment low-loss too", "partly": "partly connected", "no": "not connected"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--study", required=True, help="study folder written by run_study.py, or a width sweep's (run_study.py --widths)")
    p.add_argument("--out", default=None, help="report file (default: <study>/report.md)")
    p.add_argument("--widths-from", nargs="+", default=None, metavar="DIR",
                   help="a width sweep's report from these studies of one width each (<sweep>/width<W> folders, of one sweep "
                        "or of several, e.g. the widths trained for the same epochs in two sweeps); --study is the folder "
                        "it and its figures go to (created if missing)")
    return p.parse_args(argv)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def read_json(path: Path, step: str) -> dict:
    """A JSON file of the study, or a UserError naming the step that writes it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; run {step} first") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; rerun {step}") from None


def load_study(study_dir: Path) -> dict:
    """study.json, and the endpoints' metrics, curve evaluations and ensembles of its plan, sorted by
    group and pair; the files of earlier runs (other seeds, curves or settings) are listed as 'ignored'."""
    study = read_json(study_dir / "study.json", "run_study.py")
    endpoint_files = [p.with_suffix(".json") for p in planned(study, study_dir, "train", "ae/*.json")]
    endpoints = [{**read_json(p, "train_ae.py"), "_path": str(p)} for p in endpoint_files if p.is_file()]
    if not endpoints:
        raise UserError(f"no endpoint metrics (ae/*.json) in {study_dir}; run the train steps (run_study.py or train_ae.py)")
    for m in endpoints:
        if not isinstance(m.get("config"), dict) or "test_loss" not in m:
            raise UserError(f"{m['_path']} is not an endpoint metrics file of train_ae.py; retrain that endpoint")
    evals = [read_result(p, (EVAL_FORMAT,)) for p in planned(study, study_dir, "eval", "curves/*.eval.json") if p.is_file()]
    evals = [e for e in evals if eval_fits(e, study, study_dir)]
    if not evals:
        raise UserError(f"no curve evaluations (curves/*.eval.json) of this study's settings in {study_dir}; "
                        f"run the eval steps (run_study.py or eval_curve.py)")
    ensembles = [e for e in load_ensembles(study, study_dir) if same_curve(e, study_dir)]
    # second fits of a first pair (run_study's VARIANTS), compared with the plain fit, not pairs of the verdict
    variants = {kind: [e for e in (read_result(p, (EVAL_FORMAT,)) for p in planned(study, study_dir, f"eval-{kind}", pattern) if p.is_file())
                       if eval_fits(e, study, study_dir)]
                for kind, pattern in (("arclength", "curves/*-arclength.eval.json"), ("aligned_curves", "curves/*-aligned.eval.json"))}
    if not isinstance(study.get("plan"), list):  # an old study.json: the glob above found every evaluation
        evals = [e for e in evals if e.get("objective", "uniform") == "uniform" and not e.get("aligned_curve")]
    used = {Path(x["_path"]) for x in [*endpoints, *evals, *ensembles, *variants["arclength"], *variants["aligned_curves"]]}
    ignored = {what: sorted(p.relative_to(study_dir).as_posix() for p in study_dir.glob(pattern) if p not in used)
               for what, pattern in (("endpoints", "ae/*.json"), ("evaluations", "curves/*.eval.json"), ("ensembles", "ensembles/*/ensemble.json"))}
    endpoints.sort(key=lambda m: (group_order(ae.group_of(m["config"])), m["config"].get("seed", 0)))
    evals.sort(key=lambda e: (group_order(ae.group_of(e)), stem(e)))
    return {"study": study, "endpoints": endpoints, "evals": evals, "ensembles": ensembles, **variants, "ignored": ignored}


def load_ensembles(study: dict, study_dir: Path) -> list[dict]:
    """The ensemble.json files of the study's plan that are there, each checked to be one."""
    return load_planned(study, study_dir, "ensemble", "ensembles/*/ensemble.json", "ensemble.py", ENSEMBLE_FORMAT)


def load_planned(study: dict, study_dir: Path, kind: str, pattern: str, script: str, fmt: str) -> list[dict]:
    """The JSON outputs of the study's steps of `kind` that are there, each checked to be `script`'s file of format `fmt`."""
    found = [{**read_json(p, script), "_path": str(p)} for p in planned(study, study_dir, kind, pattern) if p.is_file()]
    for f in found:
        if f.get("format") != fmt:
            raise UserError(f"{f['_path']} is not a file of {script} (format {fmt}); rerun {script}")
    return found


def planned(study: dict, study_dir: Path, kind: str, pattern: str) -> list[Path]:
    """The outputs of the study's steps of `kind`, as its plan in study.json lists them; every file
    matching `pattern` for a study.json written before run_study recorded its plan."""
    plan = study.get("plan")
    if not isinstance(plan, list):
        return sorted(study_dir.glob(pattern))
    return [study_dir / step["output"] for step in plan if isinstance(step, dict) and step.get("kind") == kind]


def same_curve(result: dict, study_dir: Path) -> bool:
    """Whether `result` was computed from the curve checkpoint that is in the study folder now
    (when the checkpoint is not there, a copied study without its .pt files, it cannot be checked)."""
    ckpt = study_dir / "curves" / Path(str(result.get("curve_ckpt"))).name
    return not ckpt.is_file() or file_sha256(ckpt) == result.get("curve_sha256")


def expected_images(study: dict) -> dict:
    """The image counts of an evaluation under the study's settings: each setting capped by its split's size (None: unknown)."""
    settings = study.get("settings") or {}
    cap = lambda key, n: None if settings.get(key) is None or n is None else min(settings[key], n)  # noqa: E731
    return {"bn_images": cap("bn_images", study.get("n_train_images")), "train_images": cap("train_images", study.get("n_train_images")),
            "test_images": cap("test_images", study.get("n_test_images"))}


def eval_fits(result: dict, study: dict, study_dir: Path) -> bool:
    """Whether an evaluation file is of its own curve, that curve as it is now, and the study's settings
    (number of t, and image counts: the setting, capped by the split's size)."""
    made = result.get("settings") or {}
    expected = {"num_points": (study.get("settings") or {}).get("num_points"), **expected_images(study)}
    return (Path(str(result.get("curve_ckpt"))).name == f"{stem(result)}.pt" and same_curve(result, study_dir)
            and all(value is None or made.get(key) == value for key, value in expected.items()))


def group_order(group: str) -> tuple:
    """Groups in the order of their base loss in ae.LOSSES, the plain group first, then its variants by name."""
    loss = group.split("+")[0]
    return (ae.LOSSES.index(loss) if loss in ae.LOSSES else len(ae.LOSSES), loss, group != loss, group)


def by_group(evals: list[dict]) -> dict[str, list[dict]]:
    """Evaluations by loss group (ae.group_of: the loss, with its noise and L1 when not 0), in group_order."""
    groups = defaultdict(list)
    for e in sorted(evals, key=lambda e: group_order(ae.group_of(e))):
        groups[ae.group_of(e)].append(e)
    return dict(groups)


def stem(result: dict) -> str:
    """The curve's file stem of an evaluation: <stem>.eval.json, or <stem>.eval-<method>.json (a width sweep's second matcher)."""
    name = Path(result["_path"]).name
    for suffix in (".eval.json", *(f".eval-{method}.json" for method in cli.ALIGN_METHODS)):
        name = name.removesuffix(suffix)
    return name


# ---------------------------------------------------------------- the verdict

def significant(value: float, se: float | None) -> bool:
    """True when `value` is more than SIGNIFICANCE standard errors above zero (always, when no SE is known)."""
    return se is None or value > SIGNIFICANCE * se


def with_se(value: float, se: float | None, as_pct: bool = False) -> str:
    """A number with its standard error beside it, as a percentage with `as_pct`."""
    text = pct(value) if as_pct else f"{value:.3g}"
    if se is None:
        return text
    return f"{text} ± {pct(se) if as_pct else format(se, '.2g')}"


def barrier_cell(s: dict) -> str:
    """A path's barrier: absolute ± SE (relative ± SE)."""
    return f"{with_se(s['barrier'], s.get('barrier_se'))} ({with_se(s['barrier_rel'], s.get('barrier_rel_se'), True)})"


def has_barrier(segment: dict, curve_barrier: float) -> bool:
    """The segment test: a segment's barrier (test-loss summary) is significant, above SEGMENT_BARRIER
    and at least SEGMENT_OVER_CURVE times `curve_barrier` (the curve's, 0 when not significant)."""
    return (significant(segment["barrier"], segment.get("barrier_se")) and segment["barrier_rel"] > SEGMENT_BARRIER
            and segment["barrier_rel"] >= SEGMENT_OVER_CURVE * curve_barrier)


def pair_numbers(result: dict) -> dict:
    """One pair's test-loss numbers: curve excess over the worse endpoint, barriers (with standard
    errors; one within 2 SE of zero counts as none), the two tests, and the fit's and ends' checks;
    the aligned segment's barrier and test too, None where it was not evaluated."""
    curve = result["paths"]["curve"]["summary"]["test_loss"]
    segment = result["paths"]["segment"]["summary"]["test_loss"]
    aligned = result["paths"].get("aligned_segment", {}).get("summary", {}).get("test_loss")
    excess = curve["max"] / max(curve["start"], curve["end"]) - 1
    low_loss = excess <= CURVE_EXCESS or not significant(excess, curve.get("excess_se"))
    curve_barrier = curve["barrier_rel"] if significant(curve["barrier"], curve.get("barrier_se")) else 0.0
    fit = result.get("fit") or {}
    return {"pair": f"{pair_label(result)} ({result['curve']})", "excess": excess, "excess_se": curve.get("excess_se"),
            "low_loss": low_loss, "curve_barrier": curve["barrier_rel"], "curve_barrier_se": curve.get("barrier_rel_se"),
            "segment_barrier": segment["barrier_rel"], "segment_barrier_se": segment.get("barrier_rel_se"),
            "has_barrier": has_barrier(segment, curve_barrier), "aligned_barrier": aligned and aligned["barrier_rel"],
            "aligned_barrier_se": aligned and aligned.get("barrier_rel_se"), "aligned_has_barrier": aligned and has_barrier(aligned, curve_barrier),
            "aligned_by": aligned and alignment_method(result),
            "converged": fit.get("converged"), "last_quarter_drop": fit.get("last_quarter_drop"),
            "last_quarter_epochs": fit.get("last_quarter_epochs"), "below_ends": curve.get("below_ends")}


def alignment_method(result: dict) -> str:
    """How an evaluation's aligned segment matched B's units to A's (files written before --align: weight matching)."""
    return (result.get("alignment") or {}).get("method") or "weight matching"


def mean_se(ses: list[float | None]) -> float | None:
    """The standard error of a mean of independent values with standard errors `ses` (None if one is unknown)."""
    return None if None in ses else sum(x * x for x in ses) ** 0.5 / len(ses)


def verdict(group_evals: list[dict]) -> dict:
    """The group's category ('yes', 'mixed', 'linear', 'partly', 'no') and the numbers behind it."""
    pairs = [pair_numbers(e) for e in group_evals]
    n, n_low, n_barrier = len(pairs), sum(p["low_loss"] for p in pairs), sum(p["has_barrier"] for p in pairs)
    if n_low == n:
        category = "yes" if n_barrier == n else "linear" if n_barrier == 0 else "mixed"
    else:
        category = "partly" if n_low else "no"
    mean = lambda key: sum(p[key] for p in pairs) / n  # noqa: E731
    worst = max(pairs, key=lambda p: p["segment_barrier"])
    aligned = [p for p in pairs if p["aligned_barrier"] is not None]  # the pairs whose aligned segment was evaluated
    fitted = [p for p in pairs if p["converged"] is not None]  # the fits that recorded their history
    return {"worst_segment_barrier_se": worst["segment_barrier_se"],
            "mean_segment_barrier_se": mean_se([p["segment_barrier_se"] for p in pairs]),
            "mean_excess_se": mean_se([p["excess_se"] for p in pairs]), "n_aligned": len(aligned),
            "mean_aligned_barrier": sum(p["aligned_barrier"] for p in aligned) / len(aligned) if aligned else None,
            "mean_aligned_barrier_se": mean_se([p["aligned_barrier_se"] for p in aligned]) if aligned else None,
            "n_fits_known": len(fitted), "n_converged": sum(bool(p["converged"]) for p in fitted),
            "group": ae.group_of(group_evals[0]), "category": category, "headline": HEADLINES[category], "n_pairs": n,
            "n_low_loss": n_low, "n_segment_barriers": n_barrier, "worst_excess": max(p["excess"] for p in pairs),
            "mean_excess": mean("excess"), "worst_segment_barrier": max(p["segment_barrier"] for p in pairs),
            "mean_segment_barrier": mean("segment_barrier"), "mean_curve_barrier": mean("curve_barrier"), "pairs": pairs}


def alignment_sentence(v: dict) -> str:
    """How much of the group's segment barrier permutation alignment removes, in numbers ('' where no
    aligned segment was evaluated): 1 - aligned barrier / segment barrier, over the group and per pair."""
    pairs = [p for p in v["pairs"] if p["aligned_barrier"] is not None]
    if not pairs:
        return ""
    segment, aligned = sum(p["segment_barrier"] for p in pairs) / len(pairs), v["mean_aligned_barrier"]
    removed = lambda seg, al: pct(1 - al / seg) if seg > 0 else "n/a"  # noqa: E731
    per_pair = ", ".join(f"{p['pair']} {removed(p['segment_barrier'], p['aligned_barrier'])}" for p in pairs)
    barred = sum(p["aligned_has_barrier"] for p in pairs)
    methods = " and ".join(sorted({p["aligned_by"] for p in pairs}))
    return (f"*Alignment, {v['group']} group:* with B's units permuted to match A's ({methods}) the straight segment's "
            f"relative test barrier is {with_se(aligned, v['mean_aligned_barrier_se'], True)} on average "
            f"instead of {with_se(segment, mean_se([p['segment_barrier_se'] for p in pairs]), True)}, so alignment removes "
            f"{removed(segment, aligned)} of the segment's barrier (per pair: {per_pair}); the aligned segment still has a "
            f"barrier by the criterion above for {barred} of {len(pairs)} pairs.")


def verdict_sentence(v: dict) -> str:
    """The group's answer in one paragraph, quoting the numbers behind it."""
    segments = (f"the straight segments' relative test barrier is {with_se(v['worst_segment_barrier'], v['worst_segment_barrier_se'], True)} "
                f"at worst and {with_se(v['mean_segment_barrier'], v['mean_segment_barrier_se'], True)} on average "
                f"(curves: {pct(v['mean_curve_barrier'])} on average)")
    n = v["n_pairs"]
    if v["category"] in ("yes", "mixed", "linear"):
        text = (f"along all {n} fitted curves the max test loss is at most {pct(v['worst_excess'])} above the worse "
                f"endpoint's (threshold {pct(CURVE_EXCESS)})")
        if v["category"] == "mixed":
            barred = ", ".join(p["pair"] for p in v["pairs"] if p["has_barrier"])
            text += f"; the segment has a barrier for {v['n_segment_barriers']} of {n} pairs ({barred})"
    else:
        bad = ", ".join(f"{p['pair']}: +{with_se(p['excess'], p['excess_se'], True)}" for p in v["pairs"] if not p["low_loss"])
        text = (f"{v['n_low_loss']} of {n} fitted curves keep the max test loss within {pct(CURVE_EXCESS)} of the worse "
                f"endpoint's; not low-loss: {bad} (worst +{pct(v['worst_excess'])})")
    return f"**{v['group']} group — {v['headline']}.** In numbers: {text}; {segments}."


def comparison(verdicts: list[dict]) -> str:
    """The answer in two sentences over all groups: are the endpoints connected by low-loss curves (in
    which groups the fitted curves close the gap), and is the straight segment a barrier (for how many
    pairs, and in which group highest); with a single group, a note that groups cannot be compared."""
    n = sum(v["n_pairs"] for v in verdicts)
    n_low, n_barrier = sum(v["n_low_loss"] for v in verdicts), sum(v["n_segment_barriers"] for v in verdicts)
    word = lambda k: "yes" if k == n else "no" if k == 0 else "partly"  # noqa: E731
    close = [v["group"] for v in verdicts if v["n_low_loss"] == v["n_pairs"]]
    if len(verdicts) == 1:
        closing = f"the fitted curves {'close' if close else 'do not close'} the gap in the {verdicts[0]['group']} group"
    elif len(close) == len(verdicts):
        closing = "the fitted curves close the gap in every group"
    elif close:
        closing = f"the fitted curves close the gap only in the {', '.join(close)} group"
    else:
        closing = "the fitted curves close the gap in no group"
    excess = ", ".join(f"{v['group']} {pct(v['worst_excess'])}" for v in verdicts)
    curves = (f"**Low-loss curves between the endpoints: {word(n_low)}** — {closing} ({n_low} of {n} fitted curves keep their max "
              f"test loss within {pct(CURVE_EXCESS)} of the worse endpoint's; worst curve excess: {excess}).")
    ranked = sorted(verdicts, key=lambda v: -v["mean_segment_barrier"])
    chain = " > ".join(f"{v['group']} {pct(v['mean_segment_barrier'])} ({pct(v['worst_segment_barrier'])})" for v in ranked)
    segments = (f"**A barrier on the straight segment: {'for some pairs' if word(n_barrier) == 'partly' else word(n_barrier)}** — "
                f"by the criterion of the last section the segment has a barrier for {n_barrier} of {n} pairs; mean (worst) relative test "
                f"barrier of the straight segments: {chain}")
    if len(verdicts) == 1:
        return f"{curves}\n\n{segments}.\n\nOnly the {verdicts[0]['group']} group was evaluated, so the loss groups cannot be compared."
    # a spread under one percentage point is within the rounding of the quoted numbers: call it a tie
    if ranked[0]["mean_segment_barrier"] - ranked[-1]["mean_segment_barrier"] < 0.01:
        order = "about equally high in every group"
    else:
        order = f"highest in the {ranked[0]['group']} group"
    return f"{curves}\n\n{segments}, so the segments' barriers are {order}."


def evidence(evals: list[dict], study: dict) -> str:
    """How much the answer rests on: the number of pairs, and the caveats of the run."""
    counts = ", ".join(f"{loss}: {len(members)}" for loss, members in by_group(evals).items())
    settings = evals[0].get("settings", {})
    text = f"Evidence: {len(evals)} pair(s) in all ({counts}), each evaluated at {len(evals[0]['t'])} values of t on "
    if settings.get("estimator") == "control-variates":
        anchors = ", ".join(f"{t:g}" for t in settings.get("anchors", []))
        text += (f"all {settings['population']['test']} test images: at t = {anchors} every image, elsewhere "
                 f"{settings.get('test_images', '?')} images whose mean is corrected by control variates (the per-image losses at those t).")
    else:
        text += f"{settings.get('test_images', '?')} test images."
    if any(len(members) < 2 for members in by_group(evals).values()):
        text += " A group with a single pair rests on one curve: an observation, not a pattern."
    if study.get("preset") == "quick":
        dataset = (study.get("dataset") or {}).get("dataset", "synthetic")
        text += (f" This is the quick preset: a demo of the pipeline on {dataset} data with few images and epochs, "
                 f"not evidence about autoencoders of real images.")
    if study.get("vgg_fallback"):
        text += " The perceptual group's loss used a random VGG16 (see the warning at the top), so its verdict says nothing about ImageNet perceptual losses."
    return text


def checks(evals: list[dict]) -> str:
    """Whether the numbers can be trusted: did every fit converge, and do the curves dip below both
    endpoints near the ends (a sign that the endpoints themselves are under-trained)?"""
    pairs = [{**p, "pair": f"{ae.group_of(e)} {p['pair']}"} for e, p in zip(evals, map(pair_numbers, evals))]  # named with their group
    known = [p for p in pairs if p["converged"] is not None]
    stalled = [p for p in known if not p["converged"]]
    if not known:
        fits = "Fits: no fit history was recorded, so convergence was not checked."
    elif stalled:
        listed = ", ".join(f"{p['pair']} (fell {pct(p['last_quarter_drop'])} over the last {p['last_quarter_epochs']} epoch(s))"
                           for p in stalled)
        fits = (f"Fits: **{len(stalled)} of {len(known)} curve fits not converged**: their test loss at t = 0.5 still fell by more "
                f"than {pct(CONVERGED_DROP)} over the last quarter of their epochs: {listed}. Those curves stopped on a "
                f"still-falling loss; fit them with more epochs before trusting their verdict.")
    else:
        worst = max(p["last_quarter_drop"] for p in known)
        fits = (f"Fits: all {len(known)} converged (the test loss at t = 0.5 changed by at most {pct(worst)} over the last "
                f"quarter of their epochs; threshold {pct(CONVERGED_DROP)}).")
    low = [p for p in pairs if p["below_ends"]]
    if low:
        deepest = max(low, key=lambda p: p["below_ends"]["depth"])
        b = deepest["below_ends"]
        ends = (f"Endpoints: **the endpoints look under-trained**: {len(low)} of {len(pairs)} curves pass below both of their "
                f"endpoints near an end by more than {SIGNIFICANCE:g} standard errors; deepest {deepest['pair']}, at t = {b['t']:.2f} "
                f"the test loss is {b['value']:.4g}, {pct(b['depth'])} below the better endpoint ({b['z']:.1f} SE). Moving away "
                f"from an endpoint should not lower its loss if it had converged; train the endpoints longer.")
    elif all(p["excess_se"] is None for p in pairs):  # evaluations without per-image losses: below_ends was not computed
        ends = ("Endpoints: not checked: no evaluation has per-image losses, so whether a curve passes below both of its "
                "endpoints could not be tested.")
    else:
        ends = (f"Endpoints: no curve passes below both of its endpoints near an end by more than {SIGNIFICANCE:g} standard errors "
                f"(no sign of under-trained endpoints).")
    return f"{fits}\n\n{ends}"


def under_trained(v: dict) -> str:
    """Whether the group's endpoints look under-trained, the rule of checks(): they do when any of the
    group's curves passes below both of its endpoints near an end (t in the first or last quarter) by
    more than SIGNIFICANCE standard errors (lib/training.summarize's `below_ends`), since moving away from a
    converged endpoint should not lower its loss. 'yes' (how many curves, the deepest dip below the better
    endpoint), 'no', or 'not checked' where no curve has per-image losses (no standard errors: below_ends
    cannot be computed; 'no' names how many were checked when only some could be)."""
    low = [p for p in v["pairs"] if p["below_ends"]]
    checked = [p for p in v["pairs"] if p["below_ends"] or p["excess_se"] is not None]
    if low:
        return f"**yes**: {len(low)} of {v['n_pairs']} curves dip below both ends (deepest {pct(max(p['below_ends']['depth'] for p in low))})"
    if not checked:
        return "not checked (no per-image losses)"
    return "no" if len(checked) == v["n_pairs"] else f"no ({len(checked)} of {v['n_pairs']} curves checked)"


def verdict_table(verdicts: list[dict]) -> str:
    """The groups' verdicts in one table, a row per group: the category, the curves' excess over the worse
    end and the straight segments' relative barrier (means over pairs ± SE), the aligned segments' (where
    evaluated, '—' elsewhere), how many fits converged, and whether the endpoints look under-trained."""
    rows = []
    for v in verdicts:
        aligned = "—" if not v["n_aligned"] else with_se(v["mean_aligned_barrier"], v["mean_aligned_barrier_se"], True) + (
            f" ({v['n_aligned']} of {v['n_pairs']} pairs)" if v["n_aligned"] < v["n_pairs"] else "")
        fits = f"{v['n_converged']} of {v['n_fits_known']}" if v["n_fits_known"] else "not recorded"
        fits += f" ({v['n_pairs'] - v['n_fits_known']} not recorded)" if 0 < v["n_fits_known"] < v["n_pairs"] else ""
        rows.append([v["group"], VERDICTS[v["category"]], v["n_pairs"], f"+{with_se(v['mean_excess'], v['mean_excess_se'], True)}",
                     with_se(v["mean_segment_barrier"], v["mean_segment_barrier_se"], True), aligned, fits, under_trained(v)])
    return table(["group", "verdict", "pairs", "curve excess over worse end", "segment barrier (relative)",
                  "aligned segment barrier", "fits converged", "endpoints under-trained"], rows)


def answer_summary(evals: list[dict]) -> str:
    """The answer as the report leads with it: the groups' verdicts in one table, then the answer in two sentences."""
    verdicts = [verdict(members) for members in by_group(evals).values()]
    return "\n\n".join([verdict_table(verdicts), "Test loss; means over each group's pairs ± their standard error; the "
                         "quantities, thresholds and checks are defined in the last section.", comparison(verdicts)])


def answer_details(evals: list[dict], study: dict | None = None) -> str:
    """What the answer rests on, for the report's last section: the criterion, one verdict per loss group
    with its numbers (and alignment's), the checks of fits and endpoints, the caveats."""
    verdicts = [verdict(members) for members in by_group(evals).values()]
    criterion = (f"Criterion (test loss): a curve is *low-loss* if its max test loss is at most {pct(CURVE_EXCESS)} above the "
                 f"larger of its two endpoints' test losses (max_curve / max(start, end) - 1 <= {CURVE_EXCESS}). A straight "
                 f"segment *has a barrier* if its relative test barrier (the largest excess of the loss over the straight line "
                 f"between its end values, divided by the mean of the end values) is above {pct(SEGMENT_BARRIER)} and at least "
                 f"{SEGMENT_OVER_CURVE:g}x the curve's. A barrier or excess within {SIGNIFICANCE:g} standard errors of zero "
                 f"counts as none (standard errors over test images, paired: the same images at every t).")
    groups = [text for v in verdicts for text in (verdict_sentence(v), alignment_sentence(v)) if text]
    return "\n\n".join([criterion, *groups, checks(evals), evidence(evals, study or {})])


def answer(evals: list[dict], study: dict | None = None) -> str:
    """The whole generated answer: the summary the report leads with, then the details of its last section."""
    return answer_summary(evals) + "\n\n" + answer_details(evals, study)


# ---------------------------------------------------------------- the report's sections

def find_figure(folder: Path, name: str) -> Path | None:
    """The figure `name`.* that plot.py drew, preferring PNG (shown inline) over other formats."""
    found = sorted(folder.glob(f"{name}.*"), key=lambda p: (p.suffix != ".png", p.name))
    return found[0] if found else None


def link(path: Path, report_dir: Path, caption: str) -> str:
    """Markdown image (PNG, GIF) or link (other formats) to `path`, relative to the report's folder."""
    rel = quote(Path(os.path.relpath(Path(path).resolve(), report_dir)).as_posix())
    return f"![{caption}]({rel})" if path.suffix in (".png", ".gif") else f"[{caption}]({rel})"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}" if minutes else f"{seconds:.1f} s"


def curve_epochs(study_dir: Path, evals: list[dict], settings: dict) -> str:
    """The curves' training epochs: from the curve checkpoints that are present, else the study's settings."""
    paths = [study_dir / "curves" / f"{stem(e)}.pt" for e in evals]
    found = {load_checkpoint(p, CURVE_FORMAT, ("config",))["config"].get("epochs") for p in paths if p.exists()} - {None}
    if found:
        return ", ".join(str(x) for x in sorted(found))
    key = next((k for k in ("curve_epochs", "curve-epochs") if k in settings), None)
    return f"{settings[key]} (from the settings)" if key else "unknown (no curve checkpoints)"


def setup_section(study_dir: Path, s: dict) -> str:
    """Data, architecture, losses, epochs, device, versions, and the wall time of every step."""
    study, endpoints, evals = s["study"], s["endpoints"], s["evals"]
    config = endpoints[0]["config"]
    data = study.get("dataset") or config.get("data", {})
    n_params = sum(p.numel() for p in ae.build_model(config["model"]).parameters())
    groups = sorted({ae.group_of(m["config"]) for m in endpoints}, key=group_order)
    vgg = study.get("vgg_weights") or next((m["config"].get("vgg_weights") for m in endpoints if m["config"].get("vgg_weights")), None)
    losses = ", ".join(g + (f" (VGG16 weights: {vgg})" if g == "perceptual" else "") for g in groups)
    epochs = ", ".join(str(x) for x in sorted({m["config"].get("epochs") for m in endpoints} - {None}))
    versions = ", ".join(f"{k} {v}" for k, v in study.get("versions", {}).items())
    settings = ", ".join(f"`{k}={v}`" for k, v in study.get("settings", {}).items())
    lines = [
        "## Set-up", "",
        f"- Dataset: {data.get('dataset', '?')}, {study.get('n_train_images', '?')} training / {study.get('n_test_images', '?')} test images "
        f"(data settings: {', '.join(f'{k}={v}' for k, v in data.items() if k != 'cache_dir')})",
        f"- Architecture: {config['model'].get('arch')}, latent_dim {config['model']['latent_dim']}, width {config['model']['width']}, {n_params:,} parameters",
        f"- Losses: {losses}",
        f"- Epochs: endpoints {epochs}; curves {curve_epochs(study_dir, evals, study.get('settings', {}))}",
        f"- Device: {study.get('device', '?')}; versions: {versions or '?'}",
        f"- Preset: {study.get('preset', '?')}; settings: {settings or 'none recorded'}",
        *ignored_line(s["ignored"]), "",
    ]
    steps = study.get("steps", [])
    rows = [[st["name"], st.get("kind", ""), f"`{st.get('output', '')}`", "skipped (output existed)" if st.get("skipped") else duration(st.get("seconds", 0))]
            for st in steps]
    total = sum(st.get("seconds", 0) for st in steps if not st.get("skipped"))
    parallel = (f" (their sum: they ran in parallel on Ray, and the study took {duration(study['total_seconds'])})"
                if study.get("executor") == "ray" and "total_seconds" in study else "")
    return "\n".join(lines) + "\n" + table(["step", "kind", "output", "time"], rows) + f"\n\nTotal wall time of the steps run: {duration(total)}{parallel}.\n"


def ignored_line(ignored: dict[str, list[str]]) -> list[str]:
    """The files in the study folder that this report leaves out, as one line (none if there are none)."""
    parts = [f"{what} ({len(names)}): {', '.join(f'`{n}`' for n in names)}" for what, names in ignored.items() if names]
    return [f"- Left out, as not of this study's current plan, settings or curves (files of earlier runs): {'; '.join(parts)}"] if parts else []


def endpoints_section(s: dict, report_dir: Path) -> str:
    """The endpoints' final metrics, and one reconstruction image per loss group."""
    rows = [[ae.group_of(m["config"]), m["config"].get("seed", "?"), f"{m['train_loss']:.4g}", f"{m['test_loss']:.4g}",
             f"{m['test_mse']:.4g}", f"{m['test_psnr']:.2f}"] for m in s["endpoints"]]
    text = ["## Endpoints", "", table(["loss group", "seed", "train loss", "test loss", "test MSE", "test PSNR (dB)"], rows), ""]
    shown = set()
    for m in s["endpoints"]:  # sorted by seed: the first of each group is seed 0 when there is one
        png = Path(m["_path"]).with_suffix(".png")
        if ae.group_of(m["config"]) not in shown and png.exists():
            shown.add(ae.group_of(m["config"]))
            text += [f"{ae.group_of(m['config'])} group, seed {m['config'].get('seed')}: test images (top) and reconstructions (bottom)", "",
                     link(png, report_dir, f"{ae.group_of(m['config'])} reconstructions"), ""]
    return "\n".join(text)


def curves_section(evals: list[dict]) -> str:
    """Per pair, the loss at the ends and along curve and segment (and the aligned segment's barrier,
    where any pair has one): one table for train, one for test."""
    header = ["group", "pair", "curve", "t=0", "t=1", "curve max", "curve mean", "curve barrier", "segment max", "segment mean", "segment barrier"]
    aligned = any("aligned_segment" in e["paths"] for e in evals)
    header += ["aligned segment barrier"] if aligned else []
    text = ["## Curves", "", "Loss at the ends and along each path; barrier = largest excess over the straight line between the end values "
            "(relative to their mean), ± its standard error over images (paired: the same images at every t)."]
    methods = " and ".join(sorted({alignment_method(e) for e in evals if "aligned_segment" in e["paths"]}))
    text[-1] += (f" Aligned segment: from A to B with B's units permuted to match A's ({methods}, lib/align.py), "
                 "which changes no network's function.") if aligned else ""
    for split in ("train", "test"):
        rows = []
        for e in evals:
            c, g = (e["paths"][p]["summary"][f"{split}_loss"] for p in ("curve", "segment"))
            row = [ae.group_of(e), pair_label(e), e["curve"], f"{c['start']:.4g}", f"{c['end']:.4g}", f"{c['max']:.4g}", f"{c['mean']:.4g}",
                   barrier_cell(c), f"{g['max']:.4g}", f"{g['mean']:.4g}", barrier_cell(g)]
            if aligned:
                path = e["paths"].get("aligned_segment")
                row.append(barrier_cell(path["summary"][f"{split}_loss"]) if path else "–")
            if split == "test":
                p = pair_numbers(e)
                row += [f"+{with_se(p['excess'], p['excess_se'], True)}", "yes" if p["low_loss"] else "no"]
            rows.append(row)
        extra = ["curve max over worse end", "low-loss curve"] if split == "test" else []
        text += ["", f"### {split.capitalize()} loss", "", table(header + extra, rows)]
    return "\n".join(text) + "\n"


def figures_section(study_dir: Path, evals: list[dict], report_dir: Path) -> str:
    """Per group, the Figure 2 style plots, then each pair's image strip and loss plot, where drawn."""
    text, figures = ["## Figures", ""], study_dir / "figures"
    for loss, members in by_group(evals).items():
        text += [f"### {loss} group", ""]
        for curve in sorted({e["curve"] for e in members}):
            found = find_figure(figures, f"fig2_{loss}_{curve}")
            text += [link(found, report_dir, f"Figure 2: {loss}, {curve} curves vs segments"), ""] if found else []
        for e in members:
            for kind, what in (("strip", "images along the curve and the segment"), ("recon", "the same as t runs from 0 to 1 (GIF)"),
                               ("pair", "loss along the curve and the segment")):
                found = find_figure(figures, f"{kind}_{stem(e)}")
                text += [link(found, report_dir, f"{pair_label(e)} ({e['curve']}): {what}"), ""] if found else []
    if not any(line.startswith(("!", "[")) for line in text):
        text += [f"No figures in {figures}; run the plot step (plot.py) to draw them.", ""]
    return "\n".join(text)


def fits_section(study_dir: Path, evals: list[dict], report_dir: Path) -> str:
    """Each curve fit's history: test loss at t=0.5 from the linear initialisation to the last epoch,
    the drop over the last quarter, and whether it converged; with the figure plot.py drew."""
    text = ["## Curve fits", "", f"A fit is *not converged* when its test loss at t = 0.5 still fell by more than "
            f"{pct(CONVERGED_DROP)} over the last quarter of its epochs.", ""]
    rows = []
    for e in evals:
        fit = e.get("fit")
        if not fit:
            rows.append([ae.group_of(e), pair_label(e), e["curve"], "–", "–", "–", "–", "–", "no history"])
            continue
        h = fit["history"]
        rows.append([ae.group_of(e), pair_label(e), e["curve"], fit["epochs"], fit["schedule"], f"{h[0]['test_loss_t05']:.4g}",
                     f"{h[-1]['test_loss_t05']:.4g}", f"{pct(fit['last_quarter_drop'])} ({fit['last_quarter_epochs']} ep.)",
                     "yes" if fit["converged"] else "**NO**"])
    text += [table(["group", "pair", "curve", "epochs", "schedule", "test loss t=0.5, epoch 0", "last epoch",
                    "fall over last quarter", "converged"], rows), ""]
    for e in evals:
        found = find_figure(study_dir / "figures", f"fit_{stem(e)}")
        text += [link(found, report_dir, f"{pair_label(e)} ({ae.group_of(e)}, {e['curve']}): fit history"), ""] if found else []
    return "\n".join(text)


def with_plain(second: dict, evals: list[dict]) -> list[dict]:
    """A second fit's evaluation, after the plain evaluation of the same pair and curve when there is one."""
    return [*[e for e in evals if e["endpoints"] == second["endpoints"] and e["curve"] == second["curve"]][:1], second]


def objectives_section(evals: list[dict], arclength: list[dict]) -> str:
    """The paper's objective (t ~ U(0,1)) against the arc-length one (t with density proportional to
    ||phi'(t)||) on the same pair: test loss max, mean over t, mean over length, and the curve's length."""
    if not arclength:
        return ""
    header = ["group", "pair", "objective", "test max", "mean over t", "mean over length", "barrier", "length", "converged"]
    rows, sentences = [], []
    for fair in arclength:
        pair = with_plain(fair, evals)
        for e in pair:
            c, fit = e["paths"]["curve"]["summary"]["test_loss"], e.get("fit") or {}
            rows.append([ae.group_of(e), pair_label(e), e.get("objective", "uniform"), f"{c['max']:.4g}", f"{c['mean']:.4g}",
                         f"{c['integral']:.4g}", barrier_cell(c), f"{e['paths']['curve']['length']:.4g}",
                         {True: "yes", False: "**NO**"}.get(fit.get("converged"), "–")])
        if len(pair) == 2:
            u, a = (e["paths"]["curve"]["summary"]["test_loss"] for e in pair)
            lu, la = (e["paths"]["curve"]["length"] for e in pair)
            sentences.append(f"{ae.group_of(fair)} group, {pair_label(fair)}: the arc-length objective's curve has max test loss "
                             f"{a['max'] / u['max']:.3f}× the uniform objective's, mean over its length {a['integral'] / u['integral']:.3f}×, "
                             f"and is {la / lu:.3f}× as long.")
    text = ["## Objectives", "", "The paper fits the curve to E over t ~ U(0,1) of the loss; the arc-length objective draws t with density "
            "proportional to ||phi'(t)||, so a curve cannot hurry through a bad region. Same pair, same settings otherwise.", "",
            table(header, rows), "", *sentences]
    return "\n".join(text) + "\n"


def aligned_curves_section(evals: list[dict], aligned: list[dict]) -> str:
    """The curve between A and B against the curve between A and B aligned to A (align.py) on the
    same pair: where each fit started and ended at t=0.5, the curve's maximum and barrier, and the
    barrier of its own straight segment (A to B, or A to the aligned B)."""
    if not aligned:
        return ""
    header = ["group", "pair", "curve between", "test loss t=0.5, epoch 0", "last epoch", "curve max", "curve barrier", "its segment's barrier"]
    rows, sentences = [], []
    for fair in aligned:
        pair = with_plain(fair, evals)
        seen = []  # (curve's test-loss summary, fit history) of each
        for e in pair:
            c, g = (e["paths"][p]["summary"]["test_loss"] for p in ("curve", "segment"))
            h = (e.get("fit") or {}).get("history") or [{"test_loss_t05": float("nan")}]
            seen.append((c, h))
            rows.append([ae.group_of(e), pair_label(e), "A and aligned B" if e.get("aligned_curve") else "A and B",
                         f"{h[0]['test_loss_t05']:.4g}", f"{h[-1]['test_loss_t05']:.4g}", f"{c['max']:.4g}", barrier_cell(c), barrier_cell(g)])
        if len(pair) == 2:
            (c0, h0), (c1, h1) = seen
            sentences.append(f"{ae.group_of(fair)} group, {pair_label(fair)}: aligned first, the fit starts at t = 0.5 from "
                             f"{h1[0]['test_loss_t05']:.4g} instead of {h0[0]['test_loss_t05']:.4g} and ends at {h1[-1]['test_loss_t05']:.4g} "
                             f"instead of {h0[-1]['test_loss_t05']:.4g}; its curve's max test loss is {c1['max'] / c0['max']:.3f}× the plain curve's.")
    text = ["## Aligned curves", "", "The same pair fitted twice: between A and B, and between A and B with its units permuted to "
            "match A's (`fit_curve.py --aligned`), so the second curve only has to do what alignment cannot.", "",
            table(header, rows), "", *sentences]
    return "\n".join(text) + "\n"


def ensembles_section(ensembles: list[dict], report_dir: Path) -> str:
    """Table 1 for autoencoders, per loss group: every ensemble with its budget and diversity, from the plan's ensemble.json files."""
    if not ensembles:
        return ""
    text = ["## Ensembles", "",
            "An ensemble reconstructs an image as the mean of its members' reconstructions. Budget = every training epoch its members "
            "needed: independent endpoints their own; curve points both endpoints' and the curve fit's; FGE, the snapshot ensemble and "
            "the single model trained longer the start endpoint's plus the same extra steps. Diversity = mean over pairs of members of "
            "the mean squared difference per pixel of their test reconstructions; w cos = mean pairwise cosine of their weight vectors."]
    header = ["method", "budget (epochs)", "members", "test loss", "test MSE", "test PSNR (dB)", "mean member loss", "diversity", "w cos"]
    for e in ensembles:
        path = Path(e["_path"])
        dash = lambda x, f: "–" if x is None else format(x, f)  # noqa: E731
        rows = [[r["label"], f"{r['budget_epochs']:.3g}", r["members"], f"{r['test_loss']:.4g} ± {r['test_loss_se']:.2g}",
                 f"{r['test_mse']:.4g}", f"{r['test_psnr']:.2f}", f"{r['member_test_loss']:.4g}", dash(r["diversity"], ".3g"),
                 dash(r["weight_cosine"], ".3f")] for r in e["table"]]
        by = {r["method"]: r for r in e["table"]}
        best, f = min(e["table"], key=lambda r: r["test_loss"]), e["fig2c"]
        fge, longer = by["fge"], by["longer"]
        text += ["", f"### {e['loss']} group, {e['curve']} curve ({Path(e['curve_ckpt']).stem})", "", table(header, rows), "",
                 f"Lowest test loss: {best['label']} ({best['test_loss']:.4g}, {best['budget_epochs']:.3g} epochs). At the same budget "
                 f"({fge['budget_epochs']:.3g} epochs) FGE's {fge['members']} models reach {fge['test_loss']:.4g} and the single model "
                 f"trained longer {longer['test_loss']:.4g}: FGE is {'better' if fge['test_loss'] < longer['test_loss'] else 'not better'}. "
                 f"Figure 2c: the pair {{phi(0), phi(t)}} is best at t = {f['t_best']:.2f} ({f['best_ensemble_loss']:.4g}; "
                 f"phi(0) alone {f['single']['test_loss'][0]:.4g}, with phi(1) {f['ensemble']['test_loss'][-1]:.4g}).", ""]
        for key, caption in (("members_png", "ensembles vs members"), ("fig2c_png", "Figure 2c: {phi(0), phi(t)} vs phi(t)")):
            png = path.with_name(e["files"][key])
            text += [link(png, report_dir, f"{e['loss']}: {caption}"), ""] if png.exists() else []
        if e.get("selection"):
            text += selection_text(e, report_dir)
    return "\n".join(text)


def against_uniform(row: dict, uniform: dict) -> str:
    """A chosen ensemble's test loss against uniform's, paired over test images, in words and numbers."""
    vs = row["vs_uniform"]
    size = f"{with_se(abs(vs['diff']), vs['se'])} ({pct(abs(vs['diff']) / uniform['test_loss'])})"
    if not significant(abs(vs["diff"]), vs["se"]):
        return f"no different (within 2 SE: {with_se(vs['diff'], vs['se'])})"
    return f"{size} {'lower' if vs['diff'] < 0 else 'higher'}"


def selection_text(e: dict, report_dir: Path) -> list[str]:
    """Ensembles chosen on validation images (ensemble.py --select): a table and whether diversity beats uniform t."""
    sel, path = e["selection"], Path(e["_path"])
    rows = sel["ensembles"]
    header = ["rule", "members", "validation loss", "test loss", "test diversity", "test loss − uniform's (paired)"]
    body = [[label, ", ".join(r["members_chosen"]), f"{r['valid_loss']:.4g}", with_se(r["test_loss"], r["test_loss_se"]),
             "–" if r["diversity"] is None else f"{r['diversity']:.3g}",
             with_se(r["vs_uniform"]["diff"], r["vs_uniform"]["se"]) if "vs_uniform" in r else "–"] for label, r in rows.items()]
    text = ["", f"#### Ensembles of {sel['k']} chosen for diversity", "",
            f"Chosen from a pool of {len(sel['pool'])} networks (the endpoints, the curve at {sum(m['kind'] == 'curve' for m in sel['pool'])} "
            f"values of t, {sum(m['kind'] == 'fge' for m in sel['pool'])} FGE members) on {sel['valid_source']}; the test images "
            f"only score the result. Objective: {sel['objective']}.", "", table(header, body), ""]
    uniform = rows.get("uniform")
    if uniform:
        said = []
        if sel.get("chosen_lambda_label"):
            said.append(f"chosen for diversity ({sel['chosen_lambda_label']}, the lambda of lowest validation loss): "
                        f"{against_uniform(rows[sel['chosen_lambda_label']], uniform)}")
        if "greedy" in rows:
            said.append(f"greedy: {against_uniform(rows['greedy'], uniform)}")
        said.append(f"the {rows['independent']['members']} independent endpoints: {against_uniform(rows['independent'], uniform)}")
        text += ["Test loss against evenly spaced t at the same K (paired over test images): " + "; ".join(said) + ".", ""]
    png = path.with_name(e["files"].get("selection_png", "selection.png"))
    text += [link(png, report_dir, f"{e['loss']}: test loss against diversity of the chosen ensembles"), ""] if png.exists() else []
    return text


def probes_section(evals: list[dict], report_dir: Path, study_dir: Path) -> str:
    """Does the code keep what a linear probe reads off it along the curve? Along the segment? (eval_curve.py --probe)"""
    probed = [e for e in evals if e.get("probe")]
    if not probed:
        return ""
    text = ["## Linear probes of the code", ""]
    skipped = {e["probe"]["skipped"] for e in probed if "skipped" in e["probe"]}
    probed = [e for e in probed if "paths" in e["probe"]]
    if skipped:
        text += [f"No probes: {'; '.join(sorted(skipped))}.", ""]
    if not probed:
        return "\n".join(text) + "\n"
    first = probed[0]["probe"]
    text += [f"A linear probe (ridge regression on the standardised 128-d code) is fitted at each probed t on "
             f"{first['train_images']} training images' codes and scored on {first['test_images']} test images: mean accuracy "
             f"over the {sum(a['kind'] == 'class' for a in first['labels'].values())} class attributes (chance = always the majority "
             f"class: {first['chance_accuracy']:.3f}) and mean R² over the {sum(a['kind'] != 'class' for a in first['labels'].values())} "
             f"continuous ones. *Ends*: the mean of t = 0 and 1; *lowest*: the lowest value at the t in between (± its SE over test "
             f"images). CKA: the lowest linear CKA of the code at t with the codes at t = 0 and 1.", ""]
    header = ["group", "pair", "path", "accuracy: ends", "lowest", "R²: ends", "lowest", "CKA lowest"]
    rows, worst = [], defaultdict(lambda: defaultdict(list))
    for e in probed:
        for path, r in e["probe"]["paths"].items():
            inner = range(1, len(e["probe"]["t"]) - 1)
            row = [ae.group_of(e), pair_label(e), path.replace("_", " ")]
            for key in ("accuracy", "r2"):
                if r[key][0] is None:
                    row += ["–", "–"]
                    continue
                ends = (r[key][0] + r[key][-1]) / 2
                low = min(inner, key=lambda i: r[key][i]) if inner else 0
                row += [f"{ends:.3f}", with_se(r[key][low], r[key + '_se'][low])]
                worst[(ae.group_of(e), path)][key].append((ends - r[key][low], r[key + "_se"][low]))
            row.append(f"{min(min(r['cka_start']), min(r['cka_end'])):.3f}")
            rows.append(row)
    text += [table(header, rows), ""]
    for (loss, path), drops in worst.items():
        said = []
        for key, name in (("accuracy", "accuracy"), ("r2", "R²")):
            if drops.get(key):
                drop, se = max(drops[key])
                kept = "keeps (within 2 SE)" if not significant(drop, se) else "loses"
                said.append(f"{kept} its probe {name} (lowest in between: {-drop:+.3f} from its ends' mean, SE {se:.2g})")
        text += [f"*{loss} group, {path.replace('_', ' ')}:* the code " + " and ".join(said) + ".", ""]
    for e in probed:
        found = find_figure(study_dir / "figures", f"probe_{stem(e)}")
        text += [link(found, report_dir, f"{ae.group_of(e)} {pair_label(e)}: linear probes along t"), ""] if found else []
    return "\n".join(text) + "\n"


def load_function_space(study: dict, study_dir: Path) -> list[dict]:
    """The function_space.json files of the study's plan that are there, each checked to be one."""
    return load_planned(study, study_dir, "function_space", "function_space/*/function_space.json", "function_space.py",
                        FUNCTION_SPACE_FORMAT)


def further_apart(a: dict, b: dict | None, what: str) -> str:
    """Whether the independent endpoints' pairs disagree more than the pairs of `b`, with standard errors."""
    if b is None:
        return ""
    da, db = a["disagreement"], b["disagreement"]
    word, caveat = ("further apart than" if da["mean"] > db["mean"] else "closer than"), ""
    if da["se"] is None or db["se"] is None:
        caveat = "one pair, so no standard error; "
    elif not significant(abs(da["mean"] - db["mean"]), math.hypot(da["se"], db["se"])):
        word = "no further apart (within 2 SE) than"
    return (f"{word} {what} ({caveat}{with_se(db['mean'], db['se'])}, {b['ratio_to_error']['mean']:.3g} of their own error; "
            f"ratio {da['mean'] / db['mean']:.2f}×)")


def function_space_section(results: list[dict], report_dir: Path) -> str:
    """Per group: how far apart endpoints, curve points, segment points, FGE members and snapshots are as functions."""
    if not results:
        return ""
    text = ["## Function space", "",
            "Each network is represented by its reconstructions of the same validation images (Fort et al. 2019), its "
            "BatchNorm statistics recomputed on the same training images. Disagreement = mean squared difference per pixel "
            "between two networks' reconstructions; / own error = that over the mean of the two networks' own MSE (1: they "
            "differ from each other as much as from the images). Curve and segment pairs leave out the ends (the endpoints). "
            "SE over pairs; pairs that share a network are not independent, so the SEs are optimistic."]
    header = ["pairs", "count", "disagreement", "/ own error", "weight cosine"]
    for r in results:
        path, summary = Path(r["_path"]), r["summary"]
        rows = [[name, c["count"], with_se(c["disagreement"]["mean"], c["disagreement"]["se"]),
                 with_se(c["ratio_to_error"]["mean"], c["ratio_to_error"]["se"]), with_se(c["weight_cosine"]["mean"], c["weight_cosine"]["se"])]
                for name, c in summary.items() if isinstance(c, dict)]
        loss = path.parent.name  # function_space.py's folder is named after the group
        text += ["", f"### {loss} group ({len(r['names'])} networks, {r['settings']['images']} validation images)", "", table(header, rows), ""]
        ends = summary.get("endpoints")
        if ends:
            said = [further_apart(ends, summary.get(name), what) for name, what in
                    (("curve", "points of one curve"), ("fge", "FGE members"), ("snapshots", "snapshots of one training run"))]
            said = [x for x in said if x]
            if said:
                text += [f"The independent endpoints ({with_se(ends['disagreement']['mean'], ends['disagreement']['se'])}, "
                         f"{ends['ratio_to_error']['mean']:.3g} of their own error) are " + "; ".join(said) + ".", ""]
        method = {"tsne": "t-SNE", "pca": "PCA"}.get(r.get("embedding", {}).get("method"), "embedding")
        for key, caption in (("heatmaps_png", "weight cosine and disagreement"), ("embedding_png", f"{method} of the reconstructions"),
                             ("disagreement_t_png", "disagreement with phi(0) and phi(1) along t")):
            png = path.with_name(r.get("files", {}).get(key, ""))
            text += [link(png, report_dir, f"{loss}: {caption}"), ""] if r.get("files", {}).get(key) and png.is_file() else []
    return "\n".join(text) + "\n"


def load_planes(study: dict, study_dir: Path) -> list[dict]:
    """The plane files of the study's plan that are there, of their curve as it is now and of the study's settings."""
    planes = [read_result(p, (PLANE_FORMAT,)) for p in planned(study, study_dir, "plane", "curves/*.plane.json") if p.is_file()]
    grid = (study.get("settings") or {}).get("plane_grid")
    def fits(plane: dict) -> bool:
        made = plane.get("settings") or {}
        expected = {"grid": grid.get(plane["loss"]) if isinstance(grid, dict) else grid, **expected_images(study)}
        return same_curve(plane, study_dir) and all(value is None or made.get(key) == value for key, value in expected.items())
    return [p for p in planes if fits(p)]


def plane_sentence(plane: dict, evaluation: dict | None) -> str:
    """The plane in numbers: test loss at the three points, the segment's maximum (from the curve's evaluation),
    and the lowest region of the grid: its minimum, how far from the curve, and how much of the grid is low-loss."""
    points, name = plane["points"], "test_loss"
    grid, x, y = np.asarray(plane["grid"][name]), np.asarray(plane["x"]), np.asarray(plane["y"])
    at = ", ".join(f"{p['name'].replace('theta', 'θ')} {with_se(p[name], p.get(name + '_se'))}" for p in points)
    text = f"Test loss at {at}."
    if evaluation is not None:
        seg, cur = (evaluation["paths"][path]["summary"][name] for path in ("segment", "curve"))
        t_max = evaluation["t"][int(np.argmax(evaluation["paths"]["segment"][name]))]
        text += (f" The straight segment between the ends peaks at {seg['max']:.4g} (t = {t_max:.2f}), the curve at {cur['max']:.4g} "
                 f"(from the curve's evaluation at {len(evaluation['t'])} values of t).")
    j, i = np.unravel_index(np.argmin(grid), grid.shape)
    curve = plane.get("curve_projection")
    near = ""
    if curve:
        distance = float(np.min(np.hypot(np.asarray(curve["x"]) - x[i], np.asarray(curve["y"]) - y[j])))
        near = f", {distance:.2f} from the curve (grid spacing {x[1] - x[0]:.2f} by {y[1] - y[0]:.2f})"
    worse = max(p[name] for p in points if p["name"] != "theta")  # the worse endpoint, as in the curves' low-loss test
    low = int(np.sum(grid <= (1 + CURVE_EXCESS) * worse))
    text += (f" On the {grid.shape[1]}×{grid.shape[0]} grid the lowest test loss is {grid[j, i]:.4g} at (x, y) = ({x[i]:.2f}, {y[j]:.2f}) "
             f"in units of ||{plane['basis']['P1']} - {plane['basis']['P0']}||{near}; {low} of {grid.size} grid points "
             f"({pct(low / grid.size)}) lie within {pct(CURVE_EXCESS)} of the worse endpoint's test loss ({worse:.4g}), and the "
             f"highest is {grid.max():.4g}.")
    return text


def quality_worst(values: dict, metric: str) -> tuple[float, float, float]:
    """A path's worst value of an image-quality metric (the lowest SSIM or PSNR, the highest LPIPS), its SE and its t."""
    v = values[metric]
    i = max(range(len(v)), key=lambda k: v[k]) if "lpips" in metric else min(range(len(v)), key=lambda k: v[k])
    return v[i], values[f"{metric}_se"][i], i


def ssim_numbers(result: dict) -> dict:
    """One pair's SSIM: the lower end, each path's lowest value (± its SE, at its t) and its drop below the lower end;
    a path keeps the quality when the drop is at most SSIM_DROP or within SIGNIFICANCE standard errors of zero."""
    out = {}
    for path, values in result["paths"].items():
        low, se, i = quality_worst(values, "test_ssim")
        end = min(values["test_ssim"][0], values["test_ssim"][-1])
        drop = 1 - low / end if end > 0 else 0.0
        out[path] = {"ends": (values["test_ssim"][0], values["test_ssim"][-1]), "low": low, "se": se, "t": result["t"][i], "drop": drop,
                     "keeps": drop <= SSIM_DROP or not significant(end - low, se)}
    return out


def lpips_note(evals: list[dict]) -> str:
    """What the evaluations say of LPIPS: measured (with which backbone), uncalibrated, or not measured and why."""
    records = [e.get("lpips") or {"metric": None, "reason": "the evaluation predates LPIPS"} for e in evals]
    if all(r["metric"] is None for r in records):
        return "LPIPS was not measured: " + "; ".join(sorted({r["reason"] for r in records})) + "."
    kinds = sorted({f"{r['metric']} (VGG16 backbone: {r['backbone']})" for r in records if r["metric"]})
    note = "LPIPS-VGG with torchmetrics' calibrated linear layers: " + ", ".join(kinds) + "."
    return note + (" A random backbone makes LPIPS **uncalibrated**: its numbers are labelled so and are not LPIPS in the "
                   "published sense." if any(r["metric"] == "lpips_uncalibrated" for r in records) else "")


def quality_sentence(group: str, members: list[dict]) -> str:
    """Does image quality (SSIM) stay at the endpoints' level along the group's curves, and along the segments?"""
    numbers = [ssim_numbers(e) for e in members if "test_ssim" in e["paths"]["curve"]]
    if not numbers:
        return f"**{group}**: no image quality in these evaluations (rerun eval_curve.py)."
    keeps = sum(n["curve"]["keeps"] for n in numbers)
    mean = lambda path, key: sum(n[path][key] for n in numbers) / len(numbers)  # noqa: E731
    return (f"**{group} — {'yes' if keeps == len(numbers) else 'no' if not keeps else 'partly'}**: along the curve the test SSIM "
            f"stays at the endpoints' level in {keeps} of {len(numbers)} pair(s) (its lowest value is on average {pct(mean('curve', 'drop'))} "
            f"below the lower end's; at most {pct(SSIM_DROP)}, or within {SIGNIFICANCE:g} SE, counts as kept); along the straight "
            f"segment it falls {pct(mean('segment', 'drop'))} on average.")


def quality_section(evals: list[dict]) -> str:
    """Per group and pair: SSIM (and LPIPS where measured) at the ends and the worst along each path, with SEs, and whether
    the curve keeps the endpoints' image quality."""
    measured = [e for e in evals if "test_ssim" in e["paths"]["curve"]]
    text = ["## Image quality", "", f"SSIM and PSNR (torchmetrics) of the reconstructions of the first "
            f"{', '.join(sorted({str(e['settings']['quality_images']) for e in measured})) or '–'} test images at every t, estimated "
            "like the loss (the ends and anchors on every test image, control variates elsewhere); the worst value along a path "
            "± the standard error of its estimate. " + lpips_note(evals), ""]
    text += [line for group, members in by_group(evals).items() for line in (quality_sentence(group, members), "")]
    lpips = sorted({m for e in measured for m in ("test_lpips", "test_lpips_uncalibrated") if m in e["paths"]["curve"]})
    header = ["group", "pair", "SSIM t=0", "SSIM t=1", "curve: lowest SSIM (t)", "segment: lowest SSIM (t)", "curve keeps SSIM"]
    header += [f"{'LPIPS' if m == 'test_lpips' else 'LPIPS (uncalibrated)'} {w}" for m in lpips for w in ("t=0", "t=1", "curve max", "segment max")]
    rows = []
    for e in measured:
        n = ssim_numbers(e)
        c = e["paths"]["curve"]
        row = [ae.group_of(e), f"{pair_label(e)} ({e['curve']})", *(f"{c['test_ssim'][i]:.4f} ± {c['test_ssim_se'][i]:.4f}" for i in (0, -1)),
               *(f"{n[p]['low']:.4f} ± {n[p]['se']:.4f} (t = {n[p]['t']:.2f})" for p in ("curve", "segment")),
               "yes" if n["curve"]["keeps"] else "no"]
        for m in lpips:
            c, g = e["paths"]["curve"], e["paths"]["segment"]
            row += [f"{c[m][0]:.4f}", f"{c[m][-1]:.4f}", *(with_se(*quality_worst(p, m)[:2]) for p in (c, g))] if m in c else ["–"] * 4
        rows.append(row)
    return "\n".join(text + [table(header, rows), ""]) if rows else "\n".join(text) + "\n"


def planes_section(planes: list[dict], evals: list[dict], study_dir: Path, report_dir: Path) -> str:
    """Figure 1 for autoencoders: per plane of the plan, its figure and its numbers."""
    if not planes:
        return ""
    text = ["## Planes (Figure 1)", "", "The loss in the plane through the three bends w0, θ, w1 of each group's first curve "
            "(plane.py): an orthonormal basis by Gram–Schmidt of w1 − w0 and θ − w0, coordinates in units of ||w1 − w0||; at "
            "every grid point the parameters are w0 + x·(w1 − w0) + y·||w1 − w0||·v, BatchNorm statistics are recomputed, and "
            "the loss is measured on the same images as the curve evaluations. Points of the grid are evaluated; the "
            "contours between them are interpolated."]
    by_stem = {stem(e): e for e in evals}
    for p in planes:
        name = Path(p["_path"]).name.removesuffix(".plane.json")
        text += ["", f"### {ae.group_of(p)} group, {plane_label(p)}", ""]
        found = find_figure(study_dir / "figures", f"plane_{name}")
        text += [link(found, report_dir, f"Figure 1: {ae.group_of(p)}, {plane_label(p)}"), ""] if found else []
        text += [plane_sentence(p, by_stem.get(name))]
    return "\n".join(text) + "\n"


def load_simplexes(study: dict, study_dir: Path) -> list[dict]:
    """The simplex.py JSONs of the study's plan that are there."""
    return load_planned(study, study_dir, "simplex", "simplex/*.json", "simplex.py", SIMPLEX_FORMAT)


def simplex_sentence(r: dict) -> str:
    """Whether the group's endpoints are joined by a low-loss complex (its sampled points' maximum within CURVE_EXCESS of
    the worse endpoint), in numbers, against the plain simplex of the endpoints alone."""
    s = r["summary"]
    c, plain = s["complex"]["test_loss"], s.get("plain", {}).get("test_loss")
    ratio = lambda x: f"{x['ratio']:.2f}× ± {x['ratio_se']:.2f}"  # noqa: E731
    low = c["max_vs_worse"]["ratio"] <= 1 + CURVE_EXCESS
    text = (f"**{r['group']} group — {'yes' if low else 'no'}**: the {len(r['endpoints'])} endpoints are {'' if low else 'not '}joined by a "
            f"low-loss complex ({r['connectors']} connector(s)): over {c['points']} uniform random points its test loss is at most "
            f"{ratio(c['max_vs_worse'])} the worse endpoint's ({s['worse_test_loss']:.4g}; low-loss: at most {1 + CURVE_EXCESS:.2f}×), "
            f"its 95th percentile {ratio(c['p95_vs_worse'])}")
    if plain:
        text += (f"; the plain {'triangle' if len(r['endpoints']) == 3 else 'simplex'} of the endpoints reaches {ratio(plain['max_vs_worse'])} "
                 f"(95th percentile {ratio(plain['p95_vs_worse'])})")
    fit = r.get("fit") or {}
    if fit and not fit.get("converged", True):
        text += (f" (its fit had not converged: the barycentres' test loss still fell by {pct(fit['last_quarter_drop'])} over its "
                 f"last {fit['last_quarter_epochs']} epoch(s))")
    return text + "."


def simplexes_section(results: list[dict], study_dir: Path, report_dir: Path) -> str:
    """Per group, the mode-connecting complex (simplex.py): its sentence, a table of its points, its figures."""
    if not results:
        return ""
    text = ["## Simplexes (mode-connecting complexes)", "",
            "Benton et al. 2021: the group's endpoints are fixed vertices and trainable connectors c_1 ... c_m are shared by the "
            "simplexes {endpoint_i, c_1, ..., c_m}; every point of the complex is a network (BatchNorm recomputed there). Test loss "
            "at uniform random points of each simplex and of the plain simplex of the endpoints alone, at every barycentre, and "
            "along every path endpoint_i → c → endpoint_j; ratios to the worse endpoint ± SE (delta method)."]
    header = ["where", "points", "max test loss", "× worse endpoint", "95th percentile", "× worse endpoint"]
    for r in results:
        s = r["summary"]
        rows = [[name, t["points"], with_se(t["max"], t["max_se"]), f"{t['max_vs_worse']['ratio']:.2f} ± {t['max_vs_worse']['ratio_se']:.2f}",
                 with_se(t["p95"], t["p95_se"]), f"{t['p95_vs_worse']['ratio']:.2f} ± {t['p95_vs_worse']['ratio_se']:.2f}"]
                for name, t in (("the complex", s["complex"]["test_loss"]), ("plain simplex of the endpoints", s.get("plain", {}).get("test_loss")))
                if t]
        rows += [[f"barycentre {name}", 1, with_se(b["test_loss"], b["test_loss_se"]), f"{b['test_loss'] / s['worse_test_loss']:.2f}", "", ""]
                 for name, b in r["barycentres"].items()]
        volumes = ", ".join(f"{k} {v:.3g}" for k, v in s["volumes"].items())
        text += ["", f"### {r['group']} group", "", simplex_sentence(r), "", table(header, rows), "",
                 f"Volumes in weight space: {volumes}. Fit: {r['epochs']} epochs, lambda {r['volume_reg']:g}, {r['order']}.", ""]
        for key, caption in (("triangles", "test loss over each triangle and the plain one"), ("paths", "paths through the connectors"),
                             ("recon", "reconstructions at the vertices, barycentres and along a path")):
            png = Path(r["_path"]).with_name(r["files"][key]) if key in r.get("files", {}) else None
            text += [link(png, report_dir, f"{r['group']}: {caption}"), ""] if png and png.exists() else []
    return "\n".join(text)


def write_report(study_dir: Path, out: Path) -> Path:
    """Build the Markdown report of `study_dir` from its files and write it atomically to `out`."""
    study_dir, out = Path(study_dir), Path(out)
    s = load_study(study_dir)
    study, report_dir = s["study"], out.parent.resolve()
    lines = [f"# Mode connectivity of autoencoders: {study_dir.name}", ""]
    if study.get("vgg_fallback"):
        lines += [f"> **WARNING: the perceptual group used a randomly initialised (seeded) VGG16 instead of ImageNet weights**, "
                  f"because: {study['vgg_fallback']}. Its loss is a random-feature loss, not a perceptual loss in the usual sense.", ""]
    lines += [f"Generated by report.py from the files in `{study_dir}` (no model was run). The answer comes first; the evidence "
              f"follows, and the last section gives the criterion, each group's verdict in numbers and the checks behind them.", ""]
    simplexes = load_simplexes(study, study_dir)
    sections = ["## The answer\n\n" + answer_summary(s["evals"]) + "\n"
                + "".join(f"\nComplexes: {simplex_sentence(r)}\n" for r in simplexes)
                + "".join(f"\nImage quality (SSIM): {quality_sentence(g, m)}\n" for g, m in by_group(s["evals"]).items()),
                setup_section(study_dir, s), endpoints_section(s, report_dir), curves_section(s["evals"]), quality_section(s["evals"]),
                fits_section(study_dir.resolve(), s["evals"], report_dir),
                figures_section(study_dir.resolve(), s["evals"], report_dir),
                planes_section(load_planes(study, study_dir), s["evals"], study_dir.resolve(), report_dir),
                objectives_section(s["evals"], s["arclength"]), aligned_curves_section(s["evals"], s["aligned_curves"]),
                ensembles_section(s["ensembles"], report_dir), simplexes_section(simplexes, study_dir.resolve(), report_dir),
                function_space_section(load_function_space(study, study_dir), report_dir),
                probes_section(s["evals"], report_dir, study_dir.resolve()),
                "## Answer in detail\n\n" + answer_details(s["evals"], study) + "\n"]
    text = "\n".join(lines) + "\n" + "\n".join(sections)
    return atomic_write(out, lambda f: f.write(text), binary=False)


# ---------------------------------------------------------------- the width sweep (run_study.py --widths)

def width_rows(folders: list[Path]) -> dict[str, list[dict]]:
    """Per loss group, one row per width (the sub-studies of a sweep, in the order given): the endpoints' test loss
    (mean over seeds ± SE), and the relative test barriers, means over pairs ± SE, of the segment, the curve and the
    aligned segment by each matcher found (the evaluations' own, and run_study's eval-align-<method> steps)."""
    rows = defaultdict(list)
    for folder in folders:
        s = load_study(folder)
        width = s["study"]["settings"]["width"]
        others = {method: by_group([e for e in (read_result(p, (EVAL_FORMAT,)) for p in
                                                planned(s["study"], folder, f"eval-align-{method}", f"curves/*.eval-{method}.json")
                                                if p.is_file()) if eval_fits(e, s["study"], folder)])
                  for method in cli.ALIGN_METHODS}
        for group, members in by_group(s["evals"]).items():
            v = verdict(members)
            ends = [m for m in s["endpoints"] if ae.group_of(m["config"]) == group]
            loss, loss_se = mean_and_se(torch.tensor([m["test_loss"] for m in ends]))
            barriers = {"segment": (v["mean_segment_barrier"], v["mean_segment_barrier_se"]),
                        "curve": (v["mean_curve_barrier"], mean_se([p["curve_barrier_se"] for p in v["pairs"]]))}
            aligned = defaultdict(list)  # by matcher: the evaluations with an aligned segment
            for e in [*members, *(e for by in others.values() for e in by.get(group, []))]:
                if e["paths"].get("aligned_segment"):
                    aligned["weights" if alignment_method(e).startswith("weight") else "activations"].append(e)
            converged = {}
            for key, evals in aligned.items():
                pairs = [pair_numbers(e) for e in evals]
                barriers[key] = (sum(p["aligned_barrier"] for p in pairs) / len(pairs), mean_se([p["aligned_barrier_se"] for p in pairs]))
                converged[key] = (sum(bool((e.get("alignment") or {}).get("converged")) for e in evals), len(evals))
            rows[group].append({"width": width, "folder": folder, "n_pairs": v["n_pairs"], "n_low_loss": v["n_low_loss"],
                                "matching_converged": converged, "bn_images": sorted({e["settings"]["bn_images"] for e in members}),
                                "worst_excess": v["worst_excess"], "endpoint_loss": loss, "endpoint_loss_se": loss_se,
                                "epochs": sorted({m["config"]["epochs"] for m in ends}),
                                "barriers": barriers})
    return dict(rows)


def width_sentence(group: str, rows: list[dict]) -> str:
    """The sweep's answer for one group: does each matcher's aligned barrier shrink with width (the widest against
    the narrowest, beyond SIGNIFICANCE combined SEs), and does the curve stay low at every width."""
    rows = sorted(rows, key=lambda r: r["width"])
    first, last = rows[0], rows[-1]
    said = []
    for key in ("activations", "weights"):
        matcher = f"with {key[:-1]} matching the aligned barrier"
        if len(rows) == 1 and key in first["barriers"]:
            said.append(f"{matcher} is {with_se(*first['barriers'][key], True)} (one width, {first['width']}: no trend to read)")
        elif key in first["barriers"] and key in last["barriers"]:
            (a, a_se), (b, b_se) = first["barriers"][key], last["barriers"][key]
            se = math.hypot(a_se or 0, b_se or 0)
            trend = "shrinks" if b < a - SIGNIFICANCE * se else "grows" if b > a + SIGNIFICANCE * se else "does not change beyond 2 SE"
            lowest = min((r for r in rows if key in r["barriers"]), key=lambda r: r["barriers"][key][0])
            (low, low_se), (end, end_se) = lowest["barriers"][key], min((a, a_se), (b, b_se))
            bumpy = lowest not in (first, last) and low < end - SIGNIFICANCE * math.hypot(low_se or 0, end_se or 0)
            said.append(f"{matcher} {trend} with width ({with_se(a, a_se, True)} at width {first['width']}, {with_se(b, b_se, True)} "
                        f"at width {last['width']}" + (f"; not monotonic, lowest at width {lowest['width']}: "
                                                       f"{with_se(*lowest['barriers'][key], True)}" if bumpy else "") + ")")
    low = all(r["n_low_loss"] == r["n_pairs"] for r in rows)
    curve = (f"the curve stays low at every width (worst excess over the worse end {pct(max(r['worst_excess'] for r in rows))})" if low
             else "the curve is not low-loss at width " + ", ".join(str(r["width"]) for r in rows if r["n_low_loss"] < r["n_pairs"]))
    lo, hi = min(rows, key=lambda r: r["endpoint_loss"]), max(rows, key=lambda r: r["endpoint_loss"])
    ends = (f"the endpoints' test loss differs by up to {pct(hi['endpoint_loss'] / lo['endpoint_loss'] - 1)} between widths "
            f"({lo['endpoint_loss']:.3g} at width {lo['width']}, {hi['endpoint_loss']:.3g} at width {hi['width']})")
    return f"**{group}:** " + "; ".join([*said, curve, *([ends] if len(rows) > 1 else [])]) + "."


def removed(barriers: dict, key: str) -> str:
    """The share of the segment's barrier that alignment by `key` removes, or – where it was not evaluated."""
    if key not in barriers or barriers["segment"][0] <= 0:
        return "–"
    return pct(1 - barriers[key][0] / barriers["segment"][0])


def write_width_report(sweep_dir: Path, folders: list[Path], out: Path) -> Path:
    """The width sweep's Markdown report (run_study.py --widths), from the studies in `folders`, one per width: per loss
    group a table of the barriers against width, the sentence that answers, and the figure (drawn here, into
    <sweep>/figures/widths_<group>.png); then each width's own report."""
    from lib.figures import draw_widths
    from lib.files import save_figure

    sweep_dir, out = Path(sweep_dir), Path(out)
    rows = width_rows(folders)
    report_dir = out.parent.resolve()
    lines = [f"# How the barriers scale with width: {sweep_dir.name}", "",
             f"Generated by report.py from the studies in `{sweep_dir}`, one per width (no model was run). Relative test "
             f"barriers (the largest excess over the line between the ends, over their mean), means over each group's pairs ± "
             f"their standard error; aligned segments: B's units permuted to match A's by the correlation of their activations "
             f"or by their weights (lib/align.py); removed: the share of the segment's barrier the alignment removes.", ""]
    lines += [width_sentence(group, members) for group, members in rows.items()] + [""]
    bn = sorted({n for members in rows.values() for r in members for n in r["bn_images"]})
    lines += [f"Checked before reading a barrier as real: BatchNorm statistics are recomputed at every point of every path, "
              f"aligned segments included, from {' or '.join(map(str, bn))} training images (for networks with BatchNorm, REPAIR's "
              f"correction of interpolated networks, Jordan et al. 2023, reduces to this reset of the statistics); weight matching's convergence "
              f"(its coordinate descent stopped with no unit moving) is in each table.", ""]
    for group, members in rows.items():
        header = ["width", "pairs", "endpoints' epochs", "endpoints' test loss", "segment barrier", "aligned (activations)", "removed",
                  "aligned (weights)", "removed", "weight matching converged", "curve barrier", "curves low-loss"]
        cells = [[r["width"], r["n_pairs"], ", ".join(map(str, r["epochs"])), with_se(r["endpoint_loss"], r["endpoint_loss_se"]),
                  with_se(*r["barriers"]["segment"], True),
                  *[item for key in ("activations", "weights") for item in
                    ((with_se(*r["barriers"][key], True) if key in r["barriers"] else "–"), removed(r["barriers"], key))],
                  "{} of {}".format(*r["matching_converged"]["weights"]) if "weights" in r["matching_converged"] else "–",
                  with_se(*r["barriers"]["curve"], True), f"{r['n_low_loss']} of {r['n_pairs']}"] for r in sorted(members, key=lambda r: r["width"])]
        figure = save_figure(draw_widths(group, sorted(members, key=lambda r: r["width"])), sweep_dir / "figures" / f"widths_{group}.png", dpi=120)
        lines += [f"## {group} group", "", table(header, cells), "", link(figure, report_dir, f"{group}: barriers against width"), ""]
    lines += ["## Each width's study", ""] + [f"- width {r['width']}: [{r['folder'].name}/report.md]({quote(os.path.relpath(Path(r['folder']).resolve() / 'report.md', report_dir))})"
                                               for r in sorted(next(iter(rows.values())), key=lambda r: r["width"])] + [""]
    text = "\n".join(lines)
    return atomic_write(out, lambda f: f.write(text), binary=False)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    study_dir = Path(args.study)
    if args.widths_from:
        folders = [Path(d) for d in args.widths_from]
        for folder in folders:
            if not (folder / "study.json").is_file():
                raise UserError(f"{folder} holds no study.json; give the width<W> folders of a sweep (run_study.py --widths)")
        widths = [read_json(f / "study.json", "run_study.py")["settings"]["width"] for f in folders]
        if len(set(widths)) != len(widths):
            raise UserError(f"--widths-from has two studies of width {max(widths, key=widths.count)}; give one study per width")
        out = write_width_report(ensure_dir(study_dir), folders, Path(args.out) if args.out else study_dir / "report.md")
        print(f"wrote {out}")
        return out
    if not study_dir.is_dir():
        raise UserError(f"study folder {study_dir} does not exist; run run_study.py first or check --study")
    widths = sorted((p.parent for p in study_dir.glob("width*/study.json") if p.parent.name[len("width"):].isdigit()),
                    key=lambda p: int(p.name[len("width"):]))
    if widths and not (study_dir / "study.json").exists():  # a width sweep's folder (run_study.py --widths)
        out = write_width_report(study_dir, widths, Path(args.out) if args.out else study_dir / "report.md")
    else:
        out = write_report(study_dir, Path(args.out) if args.out else study_dir / "report.md")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    cli.run(main)
