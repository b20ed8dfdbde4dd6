"""The `sample` job's parameters: how the policy samples a prompt set's completions (and a
demonstration set's drafts). A set keeps them (PromptSet.sampling); the upload form, the API,
`ranklab prompts import` and trainer/sampling/backends.py's SamplingParams are made from here.
"""

from __future__ import annotations

from app.runs.params.spec import JobSpec, Param

SAMPLE = JobSpec(
    kind="sample",
    title="Sample completions",
    fields=(
        Param(
            "max_new_tokens",
            int,
            64,
            "Longest completion, in tokens.",
            "Max new tokens",
            low=1,
            high=4096,
        ),
        Param(
            "temperature",
            float,
            1.0,
            "Sampling temperature: lower is more deterministic (InstructGPT samples at 1).",
            "Temperature",
            low=0.01,
            high=5,
        ),
        Param(
            "top_p",
            float,
            1.0,
            "Nucleus sampling: keep the smallest set of tokens whose probability reaches this (1: off).",
            "Top-p",
            low=0.01,
            high=1,
        ),
        Param(
            "top_k",
            int,
            0,
            "Keep only the k most likely tokens (0: off).",
            "Top-k",
            low=0,
            high=100_000,
        ),
    ),
)
