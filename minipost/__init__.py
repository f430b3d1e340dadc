"""minipost: LLM post-training from scratch (pretrain, SFT, DPO, REINFORCE/RLOO, GRPO, PPO) in plain PyTorch."""
