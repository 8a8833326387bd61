"""Root conftest: pytester for the plugin tests, and the Hypothesis profiles.

The lvmqa plugin itself loads through its ``pytest11`` entry point (pyproject.toml),
as it does wherever lvmqa is installed.
"""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

# "ci" keeps example counts small so the suite stays fast on 2 cores; "dev" digs deeper.
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
