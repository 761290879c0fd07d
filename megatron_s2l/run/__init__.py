"""What the training loop uses besides the learner, the engines and the maths: the driver (rank 0's
engines, prompts, rewards, evaluation), rollout -> TrainBatch (`experience`), run checkpoints, the
metrics log and plots."""
