"""What a PromQL expression asks of the metrics: every series selector (metric name and label
matchers) and every label it groups or joins by, found by walking ``promql_parser``'s syntax tree.
The observability tests check each against a real scrape of the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import promql_parser


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op: = != =~ !~, value)


@dataclass(frozen=True)
class LabelUse:
    """``labels`` used by ``clause`` (``by``, ``on``, ``group_left``…), which must exist on one of
    ``metrics`` (the metrics of the operand the clause applies to)."""

    clause: str
    labels: tuple[str, ...]
    metrics: frozenset[str]


@dataclass
class References:
    selectors: list[Selector] = field(default_factory=list)
    label_uses: list[LabelUse] = field(default_factory=list)

    @property
    def metrics(self) -> set[str]:
        return {selector.metric for selector in self.selectors}


_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _op(matcher: Any) -> str:
    name = str(matcher.op).rsplit(".", 1)[-1]
    return _OPS[name]


def _metrics_of(node: Any) -> frozenset[str]:
    found = References()
    _walk(node, found)
    return frozenset(found.metrics)


def _walk(node: Any, found: References) -> None:
    kind = type(node).__name__
    if kind == "VectorSelector":
        matchers = [(m.name, _op(m), m.value) for m in node.matchers.matchers]
        name = node.name or next((v for label, op, v in matchers
                                  if label == "__name__" and op == "="), None)
        if name is None:
            raise ValueError(f"selector without a metric name: {node}")
        found.selectors.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))
    elif kind == "MatrixSelector":
        _walk(node.vector_selector, found)
    elif kind in {"ParenExpr", "UnaryExpr", "SubqueryExpr"}:
        _walk(node.expr, found)
    elif kind == "Call":
        for arg in node.args:
            _walk(arg, found)
    elif kind == "AggregateExpr":
        _walk(node.expr, found)
        if node.param is not None:
            _walk(node.param, found)
        if node.modifier is not None:
            clause = "without" if "without" in str(node.modifier) else "by"
            found.label_uses.append(LabelUse(clause, tuple(node.modifier.labels),
                                             _metrics_of(node.expr)))
    elif kind == "BinaryExpr":
        _walk(node.lhs, found)
        _walk(node.rhs, found)
        modifier = node.modifier
        if modifier is not None and modifier.matching is not None and modifier.matching.labels:
            clause = "ignoring" if "ignoring" in str(modifier.matching) else "on"
            labels = tuple(modifier.matching.labels)
            found.label_uses.append(LabelUse(clause, labels, _metrics_of(node.lhs)))
            found.label_uses.append(LabelUse(clause, labels, _metrics_of(node.rhs)))
        if modifier is not None and getattr(modifier, "card", None) is not None:
            card = str(modifier.card)
            extra = tuple(getattr(modifier, "group_labels", None) or ())
            if extra and "ManyToOne" in card:
                found.label_uses.append(LabelUse("group_left", extra, _metrics_of(node.rhs)))
            elif extra and "OneToMany" in card:
                found.label_uses.append(LabelUse("group_right", extra, _metrics_of(node.lhs)))
    elif kind in {"NumberLiteral", "StringLiteral"}:
        pass
    else:  # pragma: no cover - a new node type must be taught here, not skipped
        raise TypeError(f"unhandled PromQL node {kind}: {node}")


def references(expr: str) -> References:
    """Parse ``expr`` (raises ``ValueError`` on a syntax error) and collect what it references."""
    found = References()
    _walk(promql_parser.parse(expr), found)
    return found
