"""Accuracy tables: overall, per task type and per duration group; JSON and a printed table."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass
class Tally:
    """Correct / total answers of one group; ``unparseable`` answers count as wrong."""

    correct: int = 0
    total: int = 0
    unparseable: int = 0

    def add(self, prediction: int | None, answer: int) -> None:
        self.total += 1
        if prediction is None:
            self.unparseable += 1
        elif prediction == answer:
            self.correct += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                "unparseable": self.unparseable}


def summarize(records: list[dict], method: str) -> dict:
    """Accuracy of ``method`` over per-question records (``tpo_fast.eval.evaluate`` output rows:
    ``answer``, ``task_type``, ``duration_group`` and ``record[method]["prediction"]``)."""
    overall = Tally()
    by_task: dict[str, Tally] = defaultdict(Tally)
    by_duration: dict[str, Tally] = defaultdict(Tally)
    for r in records:
        prediction = r[method]["prediction"]
        overall.add(prediction, r["answer"])
        by_task[r["task_type"]].add(prediction, r["answer"])
        if r["duration_group"] is not None:
            by_duration[r["duration_group"]].add(prediction, r["answer"])
    return {**overall.as_dict(),
            "by_task_type": {k: by_task[k].as_dict() for k in sorted(by_task)},
            "by_duration_group": {k: by_duration[k].as_dict() for k in sorted(by_duration)}}


def _rows(summary: dict) -> list[tuple[str, dict]]:
    rows = [("overall", summary)]
    rows += [(f"task {k}", v) for k, v in summary["by_task_type"].items()]
    rows += [(f"duration {k}", v) for k, v in summary["by_duration_group"].items()]
    return rows


def format_table(results: dict) -> str:
    """A plain-text table: one row per group, the accuracy of each method in ``results``
    (``generate`` also shows its unparseable answers), then the skipped-video count."""
    methods = [m for m in ("loglik", "generate") if m in results]
    if not methods:
        return "no results"
    groups = [name for name, _ in _rows(results[methods[0]])]
    width = max(len(g) for g in groups + ["group"])
    header = f"{'group':<{width}}  {'n':>5}" + "".join(f"  {m:>8}" for m in methods)
    if "generate" in methods:
        header += "  unparsed"
    lines = [header, "-" * len(header)]
    per_method = {m: dict(_rows(results[m])) for m in methods}
    for group in groups:
        first = per_method[methods[0]][group]
        line = f"{group:<{width}}  {first['total']:>5}"
        line += "".join(f"  {100 * per_method[m][group]['accuracy']:>7.1f}%" for m in methods)
        if "generate" in methods:
            line += f"  {per_method['generate'][group]['unparseable']:>8}"
        lines.append(line)
    lines.append(f"{results['n_evaluated']} of {results['n_questions']} questions evaluated; "
                 f"{results['decode_failures']} skipped (videos that failed to decode)")
    tied = results.get("loglik", {}).get("tied_options", 0)
    if tied:
        lines.append(f"warning: in {tied} questions some option answers tokenize identically "
                     "(e.g. letters missing from the vocabulary), so loglik cannot tell them "
                     "apart; try --answer-format letter_text")
    return "\n".join(lines)
