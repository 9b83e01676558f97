"""The defence against wrong or hostile answers: trust a label only when the champion finds it
plausible, that is, when it is among the champion's `top_k` most likely digits for the drawing.

Why this rule (figures for the shipped model, in docs/learning-loop.md):
- an honest correction of a real mistake usually names the champion's second or third guess:
  of the held-out USPS and optdigits digits the shipped model misreads, the true digit is in its
  top 3 for 48 of 60;
- a random wrong label is in the top 3 only about 2 times in 9 (measured: 21-23%), so 30% random
  relabelling becomes about 8% noise in what is trained on;
- a 7 relabelled as 1 has 1 in the champion's top 3 for only 17-24% of 7s, so one source
  relabelling its 7s loses most of its weight before training starts.
`source` is whatever a client declares (the web app sends one value for everybody), so per-source
caps would neither stop an attacker, who can vary it, nor be fair to the web app's users.
The rule applies to the feedback holdout as well, so the gate does not reward a challenger for
learning labels the training refused. The gate is the second line: whatever gets through must
still leave MNIST and the real-handwriting benchmarks no worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class GuardResult:
    keep: np.ndarray  # bool (N,)
    agreed: int  # label == the champion's answer
    plausible: int  # label among the champion's top k, but not its answer
    implausible: int  # dropped

    def as_dict(self) -> dict[str, int]:
        return {
            "label_is_champion_answer": self.agreed,
            "label_in_champion_top_k": self.plausible,
            "dropped_as_implausible": self.implausible,
        }


def plausible_labels(probs: np.ndarray, labels: np.ndarray, top_k: int) -> GuardResult:
    """Keep rows whose label is among the `top_k` most probable digits; top_k <= 0 keeps all."""
    n = len(labels)
    if n == 0:
        return GuardResult(np.zeros(0, dtype=bool), 0, 0, 0)
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = (order == labels[:, None]).argmax(axis=1)
    keep = np.ones(n, dtype=bool) if top_k <= 0 else rank < top_k
    agreed = int((rank == 0).sum())
    return GuardResult(
        keep=keep,
        agreed=agreed,
        plausible=int(keep.sum()) - agreed,
        implausible=int(n - keep.sum()),
    )
