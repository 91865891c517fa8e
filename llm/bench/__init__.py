"""Benchmarks: Xiulian against named baselines, each runnable as ``python -m llm.bench.<name>``
(or ``xiulian bench <name>``):

* ``train``      -- the training loop against a bare PyTorch loop, the data loader, the memory
  of a step (and litgpt, TRL with ``--baselines``); also ``python -m llm.bench``
* ``sft``        -- SFT against TRL's ``SFTTrainer``; full fine-tuning against LoRA
* ``rl``         -- PPO: rollout against plain ``generate``, iteration phases, LoRA memory, TRL
* ``grpo``       -- one GRPO iteration against TRL's ``GRPOTrainer``, time split by phase
* ``data``       -- the stage-1 data pipeline's blocks against datatrove's
* ``data_lang``  -- clean Chinese kept by the stage-1 heuristics against its English original
* ``harmful_models`` -- the harmful-content classifiers' size and held-out accuracy
* ``data_scale`` -- the whole stage-1 pipeline at N documents: peak RSS and docs/s per stage
* ``strategies`` -- memory and throughput per rank of DDP, ZeRO 1/2/3 and FSDP
* ``startup``    -- per-rank peak memory of the FSDP start-up: whole model vs sharded start
* ``rollout_zero`` -- GRPO rollout tokens/s under ZeRO-3 (weights gathered once or per token) vs DDP
* ``litgpt``     -- our pretraining loop against litgpt's
"""
