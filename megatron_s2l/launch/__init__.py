"""`s2l launch`: the layout of a multi-node run (`plan.py`, pure) and the command that prints or
runs each node's part of it (`cli.py`)."""

from megatron_s2l.launch.plan import Engine, LaunchOptions, LaunchPlan, NodePlan, format_dry_run, plan_launch

__all__ = ["Engine", "LaunchOptions", "LaunchPlan", "NodePlan", "format_dry_run", "plan_launch"]
