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


def summarize(records: list[dict], method: str, benchmark: str | None = None,
              version: str | None = None) -> dict:
    """Accuracy of ``method`` over per-question records (``tpo_fast.eval.evaluate`` output rows:
    ``answer``, ``task_type``, ``duration_group`` and ``record[method]["prediction"]``).

    With ``benchmark`` (the lmms-eval protocol) also ``score``, the task's headline number as
    lmms-eval ``version`` aggregates it (0-100; MLVU in 0.7.3: the mean over its seven task
    types), ``by_category``
    (the groups lmms-eval's report logs, from each record's ``categories``) and ``guessed``
    (LongVideoBench answers without a letter, given a random one as lmms-eval does)."""
    overall = Tally()
    by_task: dict[str, Tally] = defaultdict(Tally)
    by_duration: dict[str, Tally] = defaultdict(Tally)
    by_category: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
    for r in records:
        prediction = r[method]["prediction"]
        overall.add(prediction, r["answer"])
        by_task[r["task_type"]].add(prediction, r["answer"])
        if r["duration_group"] is not None:
            by_duration[r["duration_group"]].add(prediction, r["answer"])
        for name, value in r.get("categories", {}).items():
            by_category[name][value].add(prediction, r["answer"])
    summary = {**overall.as_dict(),
               "by_task_type": {k: by_task[k].as_dict() for k in sorted(by_task)},
               "by_duration_group": {k: by_duration[k].as_dict() for k in sorted(by_duration)}}
    if benchmark is not None:
        from tpo_fast.eval.protocol import LMMS_EVAL_VERSION, score

        version = version or LMMS_EVAL_VERSION

        rows = [({"task_type": r.get("categories", {}).get("task_type")},
                 r[method]["prediction"] == r["answer"]) for r in records]
        summary["score"] = score(benchmark, rows, version)
        if benchmark == "mlvu" and version == LMMS_EVAL_VERSION:
            # lmms-eval 0.7.3 averages over all seven task types, an absent one as 0
            from tpo_fast.eval.protocol import MLVU_DEV_TASK_TYPES

            present = {doc["task_type"] for doc, _ in rows}
            summary["score_absent_task_types"] = [t for t in MLVU_DEV_TASK_TYPES
                                                  if t not in present]
        summary["by_category"] = {name: {k: groups[k].as_dict() for k in sorted(groups)}
                                  for name, groups in by_category.items()}
        summary["guessed"] = sum(bool(r[method].get("guessed")) for r in records)
    return summary


def _rows(summary: dict) -> list[tuple[str, dict]]:
    rows = [("overall", summary)]
    if "by_category" in summary:  # the lmms-eval protocol: lmms-eval's own groups
        for name, groups in summary["by_category"].items():
            rows += [(f"{name} {k}", v) for k, v in groups.items()]
        return rows
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
    for m in methods:
        if "score" in results[m]:
            lines.append(f"{m} score (as lmms-eval aggregates it): {results[m]['score']:.2f}")
    absent = results[methods[0]].get("score_absent_task_types")
    if absent:
        lines.append(f"note: the MLVU score is the mean over its seven task types; "
                     f"{', '.join(absent)} had no questions here and count 0, as in lmms-eval")
    if results.get("generate", {}).get("guessed"):
        lines.append(f"generate: {results['generate']['guessed']} answers had no letter and got "
                     "a random one (LongVideoBench's rule in lmms-eval)")
    lines.append(f"{results['n_evaluated']} of {results['n_questions']} questions evaluated; "
                 f"{results['decode_failures']} skipped (videos that failed to decode)")
    described = results.get("protocol", {})
    if described.get("protocol") == "lmms-eval":
        lines.append(f"protocol: lmms-eval {described['lmms_eval_version']} task "
                     f"{described['task']} (its prompt, frame sampling and answer extraction)")
    elif described:
        lines.append("protocol: native (this project's prompt; not lmms-eval's)")
    for m in methods:
        if m in described:
            lines.append(f"{m}: {described[m]}")
    tied = results.get("loglik", {}).get("tied_options", 0)
    if tied:
        lines.append(f"warning: in {tied} questions some option answers tokenize identically "
                     "(e.g. letters missing from the vocabulary), so loglik cannot tell them "
                     "apart; try --answer-format letter_text")
    return "\n".join(lines)
