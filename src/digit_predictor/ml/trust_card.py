"""The model card's section on trust: non-digit detection and calibration, as Markdown."""

from __future__ import annotations

from typing import Any


def _pct(value: float) -> str:
    return f"{100.0 * value:.2f}%"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def trust_markdown(trust: dict[str, Any]) -> str:
    fit = trust.get("fit", {})
    lines = [
        "## Knowing a non-digit, and calibrated confidence",
        "",
        f"Fitted on top of the trained weights with `{trust.get('command', '')}` (the CNN's "
        "weights are unchanged; the temperature, the detector and its threshold are buffers of "
        "the `trust` submodule, so they travel in the state dict). See docs/trust.md.",
        "",
        f"- Temperature: {fit.get('temperature', float('nan')):.3f} (fitted on "
        f"{fit.get('counts', {}).get('calibration digits', '?')} held-out canvas drawings: "
        "MNIST validation digits the CNN never trained on, redrawn on the 280x280 canvas).",
        f"- Non-digit threshold: ood_score >= {fit.get('threshold', float('nan')):.4f} "
        f"(set so that at most 0.5% of each kind of held-out training-side real digit is "
        f"flagged; {_pct(fit.get('threshold_false_alarm_rate', float('nan')))} of them are).",
        f"- Fit time: {fit.get('seconds', 0.0):.0f} s on a shared 2-core machine.",
        "",
        "### Non-digits (held out: other fonts, MNIST test digits as material, other seeds)",
        "",
        "AUROC of `ood_score` against all held-out real digits pooled (and against the worst "
        "single real set), the share flagged at the shipped threshold, and, for contrast, the "
        "AUROC of max-softmax and the share answered with >= 90% confidence without a detector.",
        "",
        "| non-digit set | n | AUROC | worst real set | flagged | target | max-softmax AUROC | "
        ">= 90% confident |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in trust.get("non_digits", []):
        target = row.get("target")
        if target:
            ok = row["auroc"] >= target["auroc"] and row["flagged_rate"] >= target["flagged_rate"]
            status = f"AUROC >= {target['auroc']}, flagged >= {_pct(target['flagged_rate'])}: "
            status += _verdict(ok)
        else:
            status = "none (they are drawn like digits)"
        lines.append(
            f"| {row['name']} | {row['n']} | {row['auroc']:.4f} | "
            f"{row['auroc_worst_real_set']:.4f} | {_pct(row['flagged_rate'])} | {status} | "
            f"{row['auroc_max_softmax']:.4f} | {_pct(row['confident_90_rate'])} |"
        )
    logo = trust.get("leave_one_generator_out", [])
    if logo:
        lines += [
            "",
            "Leave one generator out: the detector refitted without a generator's drawings, "
            "scored on that generator's held-out drawings (a kind of drawing it has never seen, "
            "the closest stand-in here for drawings by people):",
            "",
            "| left out | AUROC | flagged | false alarms on real digits |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in logo:
            lines.append(
                f"| {row['left_out']} | {row['auroc']:.4f} | {_pct(row['flagged_rate'])} | "
                f"{_pct(row['false_alarm_rate'])} |"
            )
    lines += [
        "",
        "### Real digits: false alarms and calibration",
        "",
        "ECE: expected calibration error, 15 equal-width confidence bins.",
        "",
        "| real digits | n | accuracy | mean confidence | ECE before | ECE after | "
        "flagged as not a digit (target <= 1%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in trust.get("real_digits", []):
        lines.append(
            f"| {row['name']} | {row['n']} | {_pct(row['accuracy'])} | "
            f"{_pct(row['mean_confidence'])} | {_pct(row['ece_before'])} | "
            f"{_pct(row['ece_after'])} | {_pct(row['false_alarm_rate'])} |"
        )
    if trust.get("reliability_diagram"):
        lines += ["", f"![reliability diagram]({trust['reliability_diagram']})"]
    return "\n".join(lines) + "\n"
