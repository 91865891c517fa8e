"""Pure RL math for RLHF: advantages (GAE, whitening), KL estimators and controllers, and
rule-based reward functions. Tensors in, tensors out; no model, no trainer."""
