"""Root conftest: loads the lvmqa pytest plugin and registers Hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["lvmqa.plugin", "pytester"]

# "ci" keeps example counts small so the suite stays fast on 2 cores; "dev" digs deeper.
settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
