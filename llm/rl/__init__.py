"""Pure RL math for RLHF: advantages (GAE, whitening, group estimators and the GRPO-family policy
loss in ``group``), KL estimators and controllers, rule-based reward functions, and tasks with
verifiers (``tasks``). Tensors in, tensors out; no model, no trainer."""
