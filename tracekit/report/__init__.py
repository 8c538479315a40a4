"""Renderers of findings: terminal (rich), JSON (the contract), Markdown."""

from __future__ import annotations

from tracekit.report.json_report import findings_as_dicts, render_json
from tracekit.report.markdown import render_markdown
from tracekit.report.terminal import print_report

__all__ = ["findings_as_dicts", "print_report", "render_json", "render_markdown"]
