"""`s2l plan`: per-GPU memory of the learner and the engine pools of a run config (formulas in
`memory.py`), a model of the rollout time per step (`rollout_time.py`, throughputs in
`throughput.py`), the command in `cli.py`."""

from megatron_s2l.plan.memory import EnginePlan, LearnerPlan, LearnerSetup, RunPlan, plan_run, stage_params

__all__ = ["EnginePlan", "LearnerPlan", "LearnerSetup", "RunPlan", "plan_run", "stage_params"]
