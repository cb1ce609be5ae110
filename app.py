#!/usr/bin/env python3
"""The PyAnamo CDK app: `cdk deploy -c table=MyRun -c fleet_size=20` (settings: cdk.json)."""

from __future__ import annotations

import os
import sys
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.settings import SettingsError, from_context
from infra.stack import PyAnamoStack


def build_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> cdk.App:
    app = cdk.App(context=context, outdir=outdir)
    settings = from_context(app.node.try_get_context)
    env = None
    if settings.vpc_id and not settings.subnet_ids:  # Vpc.from_lookup needs a concrete environment
        env = cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                              region=os.environ.get("CDK_DEFAULT_REGION"))
    PyAnamoStack(
        app,
        settings.name_of_stack,
        settings=settings,
        env=env,
        description=f"PyAnamo: task table {settings.table} and its self-draining worker fleet",
        synthesizer=cdk.DefaultStackSynthesizer(
            generate_bootstrap_version_rule=settings.bootstrap_version_rule
        ),
    )
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app


def main() -> None:
    try:
        app = build_app()
    except SettingsError as exc:
        print(f"pyanamo: error: {exc}", file=sys.stderr)
        sys.exit(2)
    app.synth()


if __name__ == "__main__":
    main()
