"""A check of one's own: the share of target texts that start in lower case.

Sentence chunks that start in lower case are often cut mid-sentence by a broken
splitter. The check measures; its one gate, declared in conftest.py, judges.
"""

from __future__ import annotations

import lvmqa
from lvmqa import CheckResult, CheckSkipped
from lvmqa.checks import CheckContext

CHECK_ID = "title_case"


def check_title_case(ctx: CheckContext) -> CheckResult:
    texts = ctx.dataset.target_texts
    if texts is None or len(texts) == 0:
        raise CheckSkipped(f"dataset '{ctx.name}' stores no target texts")
    starts = [str(t).lstrip()[:1] for t in texts]
    lower = sum(1 for s in starts if s.islower())
    metrics = {"lower_case_share": lower / len(starts), "n_texts": len(starts)}
    # make_gate resolves the threshold like lvmqa's own gates: the dataset's
    # [datasets.NAME.thresholds] max_lower_case_share, else the declared default.
    gates = [lvmqa.make_gate(ctx, CHECK_ID, "lower_case_share", metrics["lower_case_share"])]
    message = (
        f"{100 * metrics['lower_case_share']:.1f} % of {len(starts)} texts start in lower case"
    )
    return lvmqa.from_gates(CHECK_ID, metrics, gates, message)
