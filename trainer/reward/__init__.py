"""The reward model: the K-way ranking loss and scoring (model.py), the loop (train.py), the job."""
