"""The study's report: rules, positive control, one verdict per claim, one figure per claim
(held-out metric against step: mean curve +- std band per arm), final figures (mean +- std).
Negative and inconclusive results are reported as they come.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from openvision3.evaluation.checks import Check, machine_line, write_json, write_markdown
from openvision3.ov3.config import base_lr
from openvision3.study.config import ComparisonConfig, StudyConfig
from openvision3.study.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Outcome, decide

METRICS = {
    "rec": "held-out reconstruction loss (pixel L1 + 0.4 latent L1; pixel arm: pixel L1)",
    "contrastive": "held-out contrastive loss",
    "caption": "held-out caption loss",
    "psnr": "held-out PSNR (dB)",
    "realism_fd": "realism distance (lower = more realistic)",
}


def mean_std(values: list[float]) -> str:
    if not values:
        return "not run"
    a = np.asarray(values, dtype=float)
    std = a.std(ddof=1) if a.size > 1 else float("nan")
    return f"{a.mean():.4g} +- {std:.2g}"


def band(curves: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps, mean and std over seeds of ``metric`` at the steps every seed evaluated."""
    series = [dict(c[metric]) for c in curves if metric in c]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[t] for t in steps] for s in series])  # (seeds, steps)
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(steps))
    return np.array(steps), values.mean(axis=0), std


def plot_claim(path: Path, title: str, rules: list[ComparisonConfig], data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rules), figsize=(5 * len(rules), 3.4), squeeze=False)
    for ax, rule in zip(axes[0], rules):
        arms, drawn = (rule.arm, rule.baseline), False
        for arm in arms:
            b = band(data.get(arm, {}).get("curves", []), rule.metric)
            if b is None:
                continue
            steps, mean, std = b
            n = len(data[arm]["curves"])
            ax.plot(steps, mean, marker="o", ms=3, label=f"{arm} (n={n})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
            drawn = True
        ax.set_xlabel("step")
        if not drawn:  # a metric measured once after training (generation_fd): per-seed finals
            for j, arm in enumerate(arms):
                values = data.get(arm, {}).get("finals", {}).get(rule.metric, [])
                ax.plot([j] * len(values), values, "o", label=f"{arm} (n={len(values)})")
            ax.set_xticks(range(len(arms)), arms)
            ax.set_xlim(-0.5, len(arms) - 0.5)
            ax.set_xlabel("arm (final value per seed)")
        ax.set_title(f"{title}: {rule.metric}", fontsize=9)
        ax.set_ylabel(rule.metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# A study verdict as a check's ``passed``: inconclusive is undecided, not failed.
PASSED = {REPRODUCED: True, NOT_REPRODUCED: False, INCONCLUSIVE: None}


def outcome_check(name: str, rule: ComparisonConfig, o: Outcome, data: dict) -> Check:
    """One comparison as a check: the paired mean difference against 0 (or the +-delta band of
    a "same" comparison); the note gives the rule, each side's mean +- std and the interval."""
    a = data.get(rule.arm, {}).get("finals", {}).get(rule.metric, [])
    b = data.get(rule.baseline, {}).get("finals", {}).get(rule.metric, [])
    op, target = {"lower": ("<", 0.0), "higher": (">", 0.0)}.get(
        rule.direction, ("within", o.delta)
    )
    note = f"{rule.text()}: {mean_std(a)} vs {mean_std(b)}; {o.why}"
    return Check(name, o.mean_diff, target, PASSED[o.verdict], op, note)


def write_report(study: StudyConfig, data: dict, realism_text: str, seconds: float) -> Path:
    """Write ``report.md``, its figures and ``report.json``; returns the report's path."""
    root = Path(study.run_dir)
    finals = {arm: d["finals"] for arm, d in data.items()}
    control = compare_or_missing(study.control, finals)
    verdicts = [(claim, *decide(claim, finals)) for claim in study.claims]
    steps = study.base.train.total_steps
    walls = [w for d in data.values() for w in d["wall"]]
    runs_done = sum(len(d["curves"]) for d in data.values())
    checks = [outcome_check("positive control", study.control, control, data)]
    for claim, _, outcomes in verdicts:
        checks += [
            outcome_check(claim.name, r, o, data) for r, o in zip(claim.comparisons, outcomes)
        ]
    title = f"Study `{study.name}`: the paper's section-5 findings"
    context = [
        f"Command: `ov3 study {study.name}`. {machine_line()} Runs finished: {runs_done} of "
        f"{len(study.arms) * len(study.seeds)}. Training wall time of the runs: "
        f"{sum(walls):.0f} s ({len(walls)} timed); this invocation: {seconds:.0f} s.",
        "A check passes when the paper's claim is reproduced; it is undecided when the study "
        "is inconclusive (the 2 SE interval straddles the target).",
    ]
    lines = ["## Claims", "", "| claim | statement | verdict |", "|---|---|---|"]
    lines.append(f"| positive control | {study.control.text()} | {control.verdict} |")
    lines += [f"| {c.name} | {c.statement} | {v} |" for c, v, _ in verdicts]
    lines += ["", "## Positive control", ""]
    if control.verdict == REPRODUCED:
        lines.append(
            f"Reproduced ({control.why}): the study tells a trained encoder from a random one."
        )
    else:
        lines.append(
            f"**{control.verdict}** ({control.why}): the study is **underpowered** (too few "
            "steps, seeds or held-out images to tell a trained encoder from a random one); its "
            "other verdicts carry little weight."
        )
    lines += rules_section(study, steps, realism_text)
    lines += ["", "## Figures", ""]
    for i, (claim, verdict, _) in enumerate(verdicts):
        fig = f"claim{i + 1}.png"
        plot_claim(root / fig, claim.name, claim.comparisons, data)
        lines += [
            f"### {claim.name}: {verdict}",
            "",
            claim.statement,
            "",
            f"![{claim.name}]({fig})",
            "",
        ]
    plot_claim(root / "control.png", "positive control", [study.control], data)
    lines += ["### positive control", "", "![positive control](control.png)", ""]
    lines += final_table(study, data)
    lines += arms_section(study)
    write_json(
        root / "report.json",
        title,
        context,
        checks,
        control=asdict(control),
        claims=[
            {"name": c.name, "verdict": v, "outcomes": [asdict(o) for o in os_]}
            for c, v, os_ in verdicts
        ],
        finals=finals,
        wall_seconds=walls,
    )
    return write_markdown(
        root / "report.md", title, context, checks, after=lines, heading="Verdicts"
    )


def compare_or_missing(rule: ComparisonConfig, finals: dict) -> Outcome:
    from openvision3.study.config import ClaimConfig

    _, (outcome,) = decide(ClaimConfig("control", "", [rule]), finals)
    return outcome


def rules_section(study: StudyConfig, steps: int, realism_text: str) -> list[str]:
    s = study.base.train.stages[-1]
    return [
        "",
        "## Rules (written to `study.json` before the first run)",
        "",
        f"- Every arm: the same {steps} steps of {s.batch_size} images at {s.resolution} px "
        f"(the same samples in the same order for a given seed), base LR {base_lr(s):g}, warmup "
        f"{s.warmup_steps}; seeds {list(study.seeds)} (initial weights, decoder noise, data "
        "order).",
        f"- Held-out evaluation: the first {study.eval.num_images} val images in batches of "
        f"{study.eval.batch_size}, every {study.eval.every} steps and at step {steps}; verdicts "
        f"use step {steps}.",
        "- Comparisons are paired by seed: d = arm - baseline per seed; interval = mean(d) +- 2 "
        "SE, SE = std(d) / sqrt(n). 'lower'/'higher': reproduced when the interval lies wholly "
        "on the claimed side of 0, not reproduced when wholly on the other side, else "
        "inconclusive. 'same' (claim 3): reproduced when the interval lies inside +-delta, not "
        "reproduced when wholly outside it, else inconclusive; delta = "
        + ", ".join(
            f"{c.delta:g} x {c.baseline}'s mean"
            for claim in study.claims
            for c in claim.comparisons
            if c.direction == "same"
        )
        + ".",
        "- A claim of several comparisons is reproduced when all are, not reproduced when any "
        "is not.",
        f"- Realism: {realism_text}.",
        f"- Positive control: {study.control.text()}; it must be reproduced, or the study is "
        "underpowered.",
    ]


def final_table(study: StudyConfig, data: dict) -> list[str]:
    metrics = [m for m in METRICS if any(m in d["finals"] for d in data.values())]
    lines = ["## Final figures (mean +- std over seeds)", ""]
    lines += ["| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm in study.arms:
        finals = data[arm.name]["finals"]
        cells = [mean_std(finals.get(m, [])) for m in metrics]
        lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- `{m}`: {METRICS[m]}" for m in metrics]
    return lines


def arms_section(study: StudyConfig) -> list[str]:
    lines = ["", "## Arms", ""]
    for a in study.arms:
        probes = ", ".join(a.probes) or "none"
        lines.append(
            f"- **{a.name}**: {a.describe}; trains the encoder with: "
            f"{', '.join(a.trains) or 'nothing (trunk frozen)'}; probes (heads on tokens "
            f"detached at z_u, same loss weights): {probes}."
        )
    return lines
