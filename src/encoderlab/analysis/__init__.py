"""Analysis after test: the evaluation report, probes, attention maps and attributions."""
