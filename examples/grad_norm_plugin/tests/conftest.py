"""The plugin harness of dlf-study (the ``dlf_tester`` fixture), enabled as pytest's own
``pytester`` is: by name, for this test suite only."""

pytest_plugins = ["dlf.testing"]
