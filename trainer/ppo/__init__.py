"""PPO (InstructGPT step 3): the pure math (losses.py), rollouts, the loop (train.py), the job."""
