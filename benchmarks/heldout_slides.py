"""Benchmark: REFINE against the peers on slides its rules were not chosen on, with variance.

``spatial_regions.py`` reports one scVI training per slide file and the library's rules as
they are; those rules (the penalty grid, the evidence floor, the strongest-kept-penalty rule,
penalty averaging over the least-loss and one-standard-error rules, the source shares,
``group_folds="auto"``, the number of rings, the cross-validation repeats) were chosen on the
same slides, and the peers' neighbourhood features (neighbour gradients, a neighbourhood PCA)
are candidates too; ``_rules.py`` lists every rule and its alternatives. Here:

* **variance**: every case is run on 3 independent scVI trainings of its slide file
  (``--trainings``) and, for ``random10``, 5 label draws (``--seeds``); ``half`` and
  ``cross-slide`` use 3 training seeds. A *unit* is one (seed, training) pair; every method
  sees the same splits and, per training, the same frozen embedding.
* **leave-one-slide-out**: each rule is chosen on three of the four slide files by the
  one-standard-error rule (the simplest variant whose mean gain over the rule at filing, over
  their cases, is within one standard error of the best variant's; see ``choose_rules``),
  the chosen rules are combined, and that REFINE is scored on the fourth; the rules chosen on
  all four are reported too (in sample), and so is the held-out table under the rule first
  used here (the best variant unless within 5e-4 of the rule at filing).
* per case: mean and sd of each method over units, and the paired difference REFINE − the
  better peer (by mean) with its 95% t-interval over units.

Usage::

    python benchmarks/heldout_slides.py run --datasets starmap baristaseq   # one process
    python benchmarks/heldout_slides.py run --datasets dlpfc lymph_node     # another
    python benchmarks/heldout_slides.py report                              # tables + JSON

``run`` keeps every result in ``results/heldout_slides_<slide>.json`` as it goes and skips
what is there; ``report`` runs any held-out combination of rules not yet run, then writes
``results/heldout_slides.json``. Scratch, the probe and the harmful source run under the
rules at filing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402
import _peers  # noqa: E402
import _rules  # noqa: E402
import spatial_regions as sr  # noqa: E402

PROTOCOL_SEEDS = {"random10": 5, "half": 3, "cross-slide": 3}
SOURCE_FREE = ("scratch", "harmful:refine", "banksy+lr")
"""Methods that read no scVI embedding: run once per split, shared by its trainings."""
Z = 1.0
"""The selection rule's standard errors: the one-standard-error rule."""
Z_SENSITIVITY = (0.5, 1.0, 1.5, 2.0, 3.0)
"""Other values of ``z`` whose held-out verdicts are reported beside it."""
TIE = 5e-4
"""The rule first used here kept the rule at filing unless the best gain was above this."""


def results_file(name: str) -> Path:
    return bc.RESULTS / f"heldout_slides_{name}.json"


def load_runs(name: str) -> dict:
    f = results_file(name)
    return json.loads(f.read_text())["runs"] if f.is_file() else {}


def save_runs(name: str, runs: dict) -> dict:
    """Write ``runs`` merged with what another process wrote meanwhile; the merged runs."""
    merged = load_runs(name)
    for k, r in runs.items():
        merged[k] = {**merged.get(k, {}), **r}
    bc.write_json(results_file(name), {"runs": merged})
    return merged


def unit_key(protocol: str, seed: int, training: int) -> str:
    return f"{protocol}|{seed}|{training}"


class Slide:
    """A slide file with its cached inputs: scVI trainings, harmful source, peer features."""

    def __init__(self, name: str, ddir: Path):
        self.name, self.library = name, bc.DATASETS[name]["library"]
        self.a = bc.load(name, ddir)
        self.a.obsm["X_harmful"] = bc.harmful_source(self.a, name)
        self._banksy = None
        self._cellcharter: dict = {}
        self.training = None

    def use_training(self, t: int) -> None:
        self.a.obsm["X_scVI"] = bc.scvi_source(self.a, self.name, epochs=100, tag="_l10", seed=t)
        self.training = t

    def banksy(self) -> np.ndarray:
        """BANKSY's matrix of every cell (computed per slide, so any split is a slice of it)."""
        if self._banksy is None:
            self._banksy = _peers.banksy_features(self.a, library=self.library)
        return self._banksy

    def cellcharter(self, rows: np.ndarray) -> np.ndarray:
        """CellCharter's features of the cells ``rows`` (its graph is built on them alone)."""
        k = (self.training, rows.tobytes())
        if k not in self._cellcharter:
            self._cellcharter[k] = _peers.cellcharter_features(
                self.a[rows], use_rep="X_scVI", library=self.library
            )
        return self._cellcharter[k]


def split_rows(slide: Slide, protocol: str, seed: int):
    """``(train, test, eval mask, train rows, test rows)`` as ``spatial_regions.split`` draws."""
    train, test, mask, same = sr.split(slide.a, slide.name, protocol, seed)
    everything = np.arange(slide.a.n_obs)
    if same:
        return train, test, mask, everything, everything
    names = slide.a.obs_names
    return train, test, mask, names.get_indexer(train.obs_names), names.get_indexer(test.obs_names)


def peer(kind: str, slide: Slide, train, test, mask, rows_tr, rows_te, seed: int) -> float:
    if kind == "cellcharter+lr":
        Ftr, Fte = slide.cellcharter(rows_tr), slide.cellcharter(rows_te)
    else:
        B = slide.banksy()
        Ftr, Fte = _peers.banksy_pca(B[rows_tr], B[rows_te], seed)
    return sr.lr_on_features(Ftr, Fte, train, test, mask, seed)[0]["macro_f1"]


def run_unit(slide: Slide, protocol: str, seed: int, configs: list[str], done: dict) -> dict:
    """Every missing method and REFINE config on one (split, training) unit.

    Scratch, the probe and the harmful source run under the rules at filing
    (:data:`_rules.DEFAULT`), whatever the library's defaults are now.
    """
    train, test, mask, rows_tr, rows_te = split_rows(slide, protocol, seed)
    kw = {"library": slide.library, "seed": seed}
    out = dict(done)

    def f1(config="default", **options):
        with _rules.variant(_rules.parse(config)) as rules:
            return sr.run_scresidual(train, test, mask, **kw, **{**rules, **options})["macro_f1"]

    for c in configs:
        if f"refine[{c}]" not in out:
            out[f"refine[{c}]"] = f1(c)
    if "linear-probe" not in out:
        out["linear-probe"] = f1(arm="linear-probe")
    rows = (slide, train, test, mask, rows_tr, rows_te, seed)
    if "cellcharter+lr" not in out:
        out["cellcharter+lr"] = peer("cellcharter+lr", *rows)
    if slide.training == 0:
        if "scratch" not in out:
            out["scratch"] = f1(arm="scratch", sources=())
        if "harmful:refine" not in out:
            out["harmful:refine"] = f1(sources=("obsm:X_harmful",))
        if "banksy+lr" not in out:
            out["banksy+lr"] = peer("banksy+lr", *rows)
    return out


def run_slide(name: str, ddir: Path, configs: list[str], trainings: int, seeds: dict) -> None:
    runs = load_runs(name)
    slide = Slide(name, ddir)
    for t in range(trainings):
        slide.use_training(t)
        for protocol in sr.protocols(name):
            for seed in range(seeds[protocol]):
                k = unit_key(protocol, seed, t)
                ts = time.time()
                before = len(runs.get(k, {}))
                runs[k] = run_unit(slide, protocol, seed, configs, runs.get(k, {}))
                if len(runs[k]) > before:
                    runs = save_runs(name, runs)
                    print(
                        f"  {name} {k}: {len(runs[k]) - before} new ({time.time() - ts:.0f}s)",
                        flush=True,
                    )


# ---------------------------------------------------------------------------- report
def units(runs: dict, protocol: str) -> list[dict]:
    """Per unit of ``protocol``: every method's score (source-free ones from training 0)."""
    out = []
    for k, r in sorted(runs.items()):
        p, seed, t = k.split("|")
        if p != protocol:
            continue
        shared = runs.get(unit_key(p, int(seed), 0), {})
        out.append({**{m: shared[m] for m in SOURCE_FREE if m in shared}, **r})
    return out


def cases(all_runs: dict) -> list[tuple[str, str]]:
    return [(name, p) for name in all_runs for p in sr.protocols(name)]


def case_gain(all_runs, name, protocol, config) -> float | None:
    """REFINE under ``config`` minus REFINE under the rules at filing, over the case's units."""
    m, us = f"refine[{config}]", units(all_runs[name], protocol)
    if not all(m in u for u in us):
        return None
    return float(np.mean([u[m] - u["refine[default]"] for u in us]))


def choose_rules(all_runs: dict, held_out: str | None, *, z: float | None = Z) -> tuple:
    """Each rule's variant, chosen on the slides other than ``held_out``; and the evidence.

    A variant's *gain* is its mean over those slides' cases of REFINE's macro-F1 minus the
    rule at filing's, paired by unit; its *se* is the standard error of that mean over the
    cases (cases of one slide file are treated as independent). The rule (``z`` = :data:`Z`
    = 1, the one-standard-error rule): the simplest variant whose gain is within ``z`` se of
    the best variant's, the rule at filing being the simplest and :data:`_rules.ALTERNATIVES`
    listing the others simplest first. ``z=None``, the rule first used here: the best
    variant, unless its gain is within :data:`TIE`.
    ``held_out=None``: chosen on every slide (what the library's defaults should be).
    """
    chosen, evidence = {}, {}
    others = [c for c in cases(all_runs) if c[0] != held_out]
    for rule, alts in _rules.ALTERNATIVES.items():
        stats_ = {}
        for v in alts:
            g = [
                case_gain(all_runs, n, p, _rules.key({**_rules.DEFAULT, rule: v}))
                for n, p in others
            ]
            if all(x is not None for x in g):
                stats_[v] = (float(np.mean(g)), float(np.std(g, ddof=1) / np.sqrt(len(g))))
        best = max(stats_, key=lambda v: stats_[v][0])
        if z is None:
            chosen[rule] = best if stats_[best][0] > TIE else _rules.DEFAULT[rule]
        else:
            floor = stats_[best][0] - z * stats_[best][1]
            within = [v for v in alts if v in stats_ and stats_[v][0] >= floor]
            chosen[rule] = _rules.DEFAULT[rule] if floor <= 0 else within[0]
        evidence[rule] = {
            v: {"gain": round(g, 4), "se": round(e, 4)} for v, (g, e) in stats_.items()
        }
    return chosen, evidence


def paired(diffs: list[float]) -> dict:
    from scipy import stats

    d = np.asarray(diffs)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {
        "mean": float(d.mean()),
        "ci95": [float(d.mean() - half), float(d.mean() + half)],
        "n": len(d),
    }


def table(all_runs: dict, refine_of: dict) -> list[dict]:
    """Per case: each method's mean/sd over units, and REFINE − better peer, paired."""
    rows = []
    for name, protocol in cases(all_runs):
        us = units(all_runs[name], protocol)
        col = refine_of[name]
        methods = {
            "refine": col,
            **{m: m for m in ("scratch", "linear-probe", "harmful:refine", *sr.PEERS)},
        }
        stats_ = {}
        for m, c in methods.items():
            v = np.array([u[c] for u in us])
            stats_[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "n": len(v)}
        best = max(sr.PEERS, key=lambda p: stats_[p]["mean"])
        diff = paired([u[col] - u[best] for u in us])
        rows.append(
            {
                "dataset": name,
                "protocol": protocol,
                "refine_config": col,
                "methods": stats_,
                "better_peer": best,
                "refine-better_peer": diff,
            }
        )
    return rows


def verdict(rows: list[dict]) -> dict:
    margins = [r["refine-better_peer"]["mean"] for r in rows]
    return {
        "mean_margin": float(np.mean(margins)),
        "every_ci_above_-0.01": all(r["refine-better_peer"]["ci95"][0] > -sr.TOL for r in rows),
        "mean_margin>=0.03": float(np.mean(margins)) >= 0.03,
    }


def print_table(title: str, rows: list[dict], v: dict) -> None:
    order = ("refine", "scratch", "linear-probe", "harmful:refine", *sr.PEERS)
    print(
        f"\n{title}\n{'slide':<11}{'protocol':<12}"
        + "".join(f"{m:>16}" for m in order)
        + "   refine − better peer [95% CI]"
    )
    for r in rows:
        s, d = r["methods"], r["refine-better_peer"]
        print(
            f"{r['dataset']:<11}{r['protocol']:<12}"
            + "".join(f"{s[m]['mean']:>9.3f} ±{s[m]['sd']:.3f}" for m in order)
            + f"   {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
            f"vs {r['better_peer']} (n={d['n']})"
        )
    print(
        f"mean margin {v['mean_margin']:+.3f}; every interval above −0.01: "
        f"{v['every_ci_above_-0.01']}; mean margin ≥ +0.03: {v['mean_margin>=0.03']}"
    )


def ensure_run(all_runs, name, config, why, ddir, trainings, seeds) -> None:
    if any(f"refine[{config}]" not in u for u in all_runs[name].values()):
        print(f"[{name}] running {why}, {config}", flush=True)
        run_slide(name, ddir, [config], trainings, seeds)
        all_runs[name] = load_runs(name)


def held_out(all_runs, z, ddir, trainings, seeds) -> tuple[list, dict]:
    """Each slide scored under the rules chosen (with ``z``) on the other three."""
    choice = {}
    for name in bc.SPATIAL:
        rules, evidence = choose_rules(all_runs, name, z=z)
        config = _rules.key(rules)
        ensure_run(all_runs, name, config, "the held-out choice", ddir, trainings, seeds)
        choice[name] = {"config": config, "rules": rules, "evidence_on_other_slides": evidence}
    return table(all_runs, {n: f"refine[{c['config']}]" for n, c in choice.items()}), choice


def report(ddir: Path, out: Path, trainings: int, seeds: dict) -> None:
    all_runs = {n: load_runs(n) for n in bc.SPATIAL}
    missing = [n for n, r in all_runs.items() if not r]
    if missing:
        raise SystemExit(f"no runs for {missing}: run `heldout_slides.py run` on them first")
    held, choice = held_out(all_runs, Z, ddir, trainings, seeds)
    held_tie, choice_tie = held_out(all_runs, None, ddir, trainings, seeds)
    sensitivity = []
    for z in Z_SENSITIVITY:
        rows, ch = held_out(all_runs, z, ddir, trainings, seeds)
        sensitivity.append(
            {"z": z, "configs": {n: c["config"] for n, c in ch.items()}, **verdict(rows)}
            | {"lowest_ci95": min(r["refine-better_peer"]["ci95"][0] for r in rows)}
        )
    on_all, evidence_all = choose_rules(all_runs, None)
    chosen = _rules.key(on_all)
    for name in bc.SPATIAL:
        ensure_run(
            all_runs, name, chosen, "the rules chosen on every slide", ddir, trainings, seeds
        )
    insample = table(all_runs, {n: "refine[default]" for n in bc.SPATIAL})
    on_every = table(all_runs, {n: f"refine[{chosen}]" for n in bc.SPATIAL})
    result = {
        "held_out": {"rows": held, "verdict": verdict(held)},
        "held_out_tie_rule": {
            "rows": held_tie,
            "verdict": verdict(held_tie),
            "choices": choice_tie,
        },
        "held_out_by_z": sensitivity,
        "in_sample": {"rows": insample, "verdict": verdict(insample)},
        "chosen_on_every_slide": {
            "config": chosen,
            "rules": on_all,
            "evidence": evidence_all,
            "rows": on_every,
            "verdict": verdict(on_every),
        },
        "choices": choice,
        "trainings": trainings,
        "seeds": seeds,
    }
    print_table(
        "Held-out slides (each slide's rules chosen on the other three, one-se rule)",
        held,
        result["held_out"]["verdict"],
    )
    print_table(
        f"Held-out slides, the first selection rule (best variant unless within {TIE} of filing)",
        held_tie,
        result["held_out_tie_rule"]["verdict"],
    )
    print_table("In sample, the rules at filing", insample, result["in_sample"]["verdict"])
    print_table(
        f"In sample, the rules chosen on every slide ({chosen})",
        on_every,
        result["chosen_on_every_slide"]["verdict"],
    )
    for name in bc.SPATIAL:
        print(f"held out {name}: {choice[name]['config']} (tie rule: {choice_tie[name]['config']})")
    print("\nthe held-out verdict by the selection rule's z")
    for s in sensitivity:
        print(
            f"  z={s['z']:<4} mean margin {s['mean_margin']:+.4f}, lowest interval "
            f"{s['lowest_ci95']:+.3f}, every one above −0.01: {s['every_ci_above_-0.01']}"
        )
    bc.write_json(out, result)
    print(f"results in {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=["run", "report"])
    p.add_argument("--datasets", nargs="+", default=list(bc.SPATIAL), choices=list(bc.SPATIAL))
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="REFINE rule variants to run (default: the library's and each single "
        "departure from it; see benchmarks/_rules.py)",
    )
    p.add_argument("--trainings", type=int, default=3)
    p.add_argument(
        "--seeds",
        type=int,
        default=PROTOCOL_SEEDS["random10"],
        help="label draws of the random protocol",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(bc.RESULTS / "heldout_slides.json"))
    args = p.parse_args(argv)
    ddir = bc.data_dir(args.data_dir)
    bc.quiet()
    seeds = {**PROTOCOL_SEEDS, "random10": args.seeds}
    t0 = time.time()
    if args.step == "run":
        configs = args.configs or _rules.one_at_a_time()
        for c in configs:
            _rules.parse(c)
        for name in args.datasets:
            run_slide(name, ddir, configs, args.trainings, seeds)
    else:
        report(ddir, Path(args.out), args.trainings, seeds)
    print(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
