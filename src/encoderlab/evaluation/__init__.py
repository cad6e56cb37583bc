"""Evaluation after test: report, figures, probes and the HTML page."""
