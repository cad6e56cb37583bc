"""Behavioural probes (CheckList-style): named suites of labelled texts and minimal pairs.

Suite kinds (conf/probes/*.yaml):
  labelled   items [text, label]            pass: the prediction is the label
  flip       pairs [text, changed]          pass: text gets `label`, changed gets `flipped_label`
  monotonic  chains [t1, t2, ...]           pass: P(label) never falls by more than `tolerance` along the chain
  invariant  pairs [text, perturbed]        pass: both get the same prediction
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from encoderlab.errors import ConfigError

KINDS = ("labelled", "flip", "monotonic", "invariant")


@dataclass
class ProbeResult:
    suite: str
    kind: str
    texts: list[str]
    label: str  # the label whose probability is reported (invariant: the first text's prediction)
    probabilities: list[float]  # P(label) per text
    predictions: list[str]
    passed: bool
    expected: list[str] = field(default_factory=list)  # per text: what passing asks of it


@dataclass
class SuiteResults:
    probes: list[ProbeResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # suite -> why

    def pass_rates(self) -> dict[str, float]:
        suites: dict[str, list[bool]] = {}
        for p in self.probes:
            suites.setdefault(p.suite, []).append(p.passed)
        return {s: float(np.mean(v)) for s, v in suites.items()}

    def records(self) -> list[dict]:
        """One row per probe text, for CSV/JSON."""
        rows = []
        for i, p in enumerate(self.probes):
            for j, (t, prob, pred) in enumerate(zip(p.texts, p.probabilities, p.predictions, strict=True)):
                rows.append(
                    {
                        "suite": p.suite,
                        "kind": p.kind,
                        "probe": i,
                        "position": j,
                        "text": t,
                        "label": p.label,
                        "p_label": prob,
                        "expected": p.expected[j] if j < len(p.expected) else "",
                        "prediction": pred,
                        "passed": p.passed,
                    }
                )
        return rows


def _bad(name: str, what: str) -> ConfigError:
    return ConfigError(f"Config error: probe suite '{name}': {what}.")


def labels_needed(name: str, suite: Mapping) -> list[str]:
    """The labels a suite refers to; raises ConfigError when the suite is malformed."""
    if not isinstance(suite, Mapping):
        raise _bad(name, f"expected a mapping with a 'kind', got {suite!r}")
    kind = suite.get("kind")
    if kind not in KINDS:
        raise _bad(name, f"kind is {kind!r}. Allowed: {', '.join(KINDS)}")
    key, width = {"labelled": ("items", 2), "flip": ("pairs", 2), "invariant": ("pairs", 2)}.get(
        kind, ("chains", None)
    )
    entries = suite.get(key)
    if not entries:
        raise _bad(name, f"a '{kind}' suite needs a non-empty '{key}' list")
    for entry in entries:
        if not isinstance(entry, (list, tuple)) or (width and len(entry) != width) or len(entry) < 2:
            shape = {"items": "[text, label]", "pairs": "[text, other text]", "chains": "[text1, text2, ...]"}
            raise _bad(
                name, f"each of '{key}' is {shape[key]}, got {entry!r} (quote texts that contain commas)"
            )
        if any(not str(t).strip() for t in entry):
            raise _bad(name, f"empty text in {entry!r}")
    for required in {"flip": ("label", "flipped_label"), "monotonic": ("label",)}.get(kind, ()):
        if suite.get(required) is None:
            raise _bad(name, f"a '{kind}' suite needs '{required}'")
    if kind == "labelled":
        return sorted({str(item[1]) for item in entries})
    if kind == "flip":
        return [str(suite["label"]), str(suite["flipped_label"])]
    if kind == "monotonic":
        return [str(suite["label"])]
    return []


def check_suites(suites: Mapping[str, Mapping]) -> None:
    """Config-time check of every suite (before any training)."""
    for name, suite in suites.items():
        labels_needed(name, suite)


def run_probes(
    suites: Mapping[str, Mapping],
    label_names: list[str],
    predict: Callable[[list[str]], np.ndarray],
    labels: list[str] | None = None,
) -> SuiteResults:
    """Run every suite through `predict` (texts -> (N, C) probabilities) in one batched call. A suite
    whose labels the model lacks is skipped before any prediction; so is every suite when the model
    lacks one of `labels` (the labels the whole probe set is written for, e.g. negative, positive)."""
    results = SuiteResults()
    index = {name.lower(): i for i, name in enumerate(label_names)}
    runnable: dict[str, Mapping] = {}
    for name, suite in suites.items():
        needed = [*(labels or []), *labels_needed(name, suite)]
        missing = list(dict.fromkeys(lab for lab in needed if str(lab).lower() not in index))
        if missing:
            results.skipped[name] = (
                f"the model's labels ({', '.join(label_names)}) do not include {', '.join(missing)}"
            )
        else:
            runnable[name] = suite
    groups: list[tuple[str, Mapping, list[str], str | None]] = []
    for name, suite in runnable.items():
        kind = suite["kind"]
        if kind == "labelled":
            groups += [(name, suite, [str(t)], str(lab)) for t, lab in suite["items"]]
        elif kind in ("flip", "invariant"):
            groups += [(name, suite, [str(a), str(b)], suite.get("label")) for a, b in suite["pairs"]]
        else:
            groups += [(name, suite, [str(t) for t in chain], suite["label"]) for chain in suite["chains"]]
    texts = [t for _, _, ts, _ in groups for t in ts]
    probs = predict(texts) if texts else np.zeros((0, len(label_names)))
    pos = 0
    for name, suite, ts, label in groups:
        p = probs[pos : pos + len(ts)]
        pos += len(ts)
        preds = [label_names[i] for i in p.argmax(axis=1)]
        kind = suite["kind"]
        if kind == "invariant":
            shown = int(p[0].argmax())  # P(first text's prediction) for both
            label, passed = preds[0], preds[0] == preds[1]  # P(the first text's prediction) for both
            p_label = p[:, shown]
        else:
            p_label = p[:, index[str(label).lower()]]
            if kind == "labelled":
                passed = preds[0].lower() == str(label).lower()
            elif kind == "flip":
                passed = (
                    preds[0].lower() == str(label).lower()
                    and preds[1].lower() == str(suite["flipped_label"]).lower()
                )
            else:
                tol = float(suite.get("tolerance", 0.0))
                passed = bool(np.all(np.diff(p_label) >= -tol))
        results.probes.append(
            ProbeResult(
                name,
                kind,
                ts,
                label,
                [float(x) for x in p_label],
                preds,
                bool(passed),
                expected(suite, label, ts, preds),
            )
        )
    return results


def expected(suite: Mapping, label: str, texts: list[str], predictions: list[str]) -> list[str]:
    """What passing asks of each text of one probe, for the tables (a flip pair: its two labels)."""
    kind = suite["kind"]
    if kind == "labelled":
        return [str(label)]
    if kind == "flip":
        return [str(suite["label"]), str(suite["flipped_label"])]
    if kind == "monotonic":
        tol = float(suite.get("tolerance", 0.0))
        rule = f"P({suite['label']}) >= previous" + (f" - {tol:g}" if tol else "")
        return ["reference", *[rule] * (len(texts) - 1)]
    return ["reference", *[f"same as first ({predictions[0]})"] * (len(texts) - 1)]
