"""Hand the published image to its consumers (launch templates, instance refresh, git-ops file).

Runs after ``latest`` moved and before retire, so retention already sees what the templates
launch. Its undo withdraws what it did when a later stage fails or the bake is interrupted.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from kiln.controller import consumers
from kiln.controller.consumers import ConsumerReport, PublishSettings
from kiln.controller.context import BakeContext

log = structlog.get_logger("kiln.stage")


class PublishConsumers:
    name = "publish to consumers"

    def __init__(self, settings: PublishSettings, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self.report: ConsumerReport | None = None

    def run(self, ctx: BakeContext) -> None:
        if not any(image.latest for image in ctx.published):
            log.warning(
                "latest stayed at a newer version: the consumers keep it too", role=ctx.role, version=ctx.version
            )
            return
        self.report = ConsumerReport(role=ctx.role, version=ctx.version)
        consumers.publish(
            ctx.provider, ctx.role, ctx.version, ctx.published, self.settings, self.base_dir, report=self.report
        )
        log.info("consumers updated", **summary(self.report))

    def undo(self, ctx: BakeContext) -> None:
        if self.report is not None and not ctx.succeeded:
            consumers.withdraw(ctx.provider, self.report, self.settings)


def summary(report: ConsumerReport) -> dict[str, object]:
    return {
        "launch_templates": [f"{t.name}@{t.region}:{t.version}" for t in report.templates],
        "instance_refreshes": [f"{r.asg}@{r.region}:{r.refresh_id}" for r in report.refreshes],
        "gitops": str(report.gitops.path) if report.gitops else "",
    }
