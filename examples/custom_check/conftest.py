"""Registers the title_case check with lvmqa before pytest collects.

With it, ``pytest --pyargs quality_tests --dataset=NAME`` runs one item per dataset and
gate of title_case too, and ``lvmqa_check("title_case")`` returns its result.
"""

from title_case import CHECK_ID, check_title_case

import lvmqa

lvmqa.register_check(
    CHECK_ID,
    check_title_case,
    title="Title case",
    phase="P1",
    gates=[
        lvmqa.declare_gate(
            CHECK_ID,
            "lower_case_share",
            "<=",
            key="max_lower_case_share",
            default=0.05,
            title="few texts start in lower case",
        )
    ],
)
