"""Supervised fine-tuning: the reply-only loss mask on a chat template, the config's agreement
with its parameter definition, and short CPU runs that must lower held-out loss and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.chat import ChatError, Conversation, from_text
from app.runs.params import SPECS, TRAIN_SFT, ParamsError
from tests.tiny import save_tiny_policy, tiny_loop_config
from tests.trainer.ppo_fixtures import one_thread
from trainer import render
from trainer.models.tiny import IM_END
from trainer.sft import launch
from trainer.sft.config import SFTConfig
from trainer.sft.data import Demo, demo_from_row
from trainer.sft.loss import IGNORE, collate, encode_example, summed_loss
from trainer.sft.train import CHECKPOINT, Hooks, load_policy, train

# --- the mask ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_chat_model_path)


def learned(labels: list[int]) -> list[int]:
    return [t for t in labels if t != IGNORE]


def test_only_the_reply_and_its_end_of_turn_token_are_learned(chat_tokenizer: Any) -> None:
    tok = chat_tokenizer
    conv: Conversation = [
        {"role": "user", "content": "the cat sat on the mat"},
        {"role": "assistant", "content": "a dog ran"},  # an earlier turn: context, not learned
        {"role": "user", "content": "and the bird?"},
    ]
    ex = encode_example(tok, conv, "the bird flew away", max_length=256)
    # Independently of trainer.render: the template's own prompt, then the reply's text tokens.
    prompt = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False)
    im_end = tok.convert_tokens_to_ids(IM_END)
    reply = tok("the bird flew away", add_special_tokens=False)["input_ids"] + [im_end]
    assert ex.input_ids == list(prompt) + reply
    assert ex.labels == [IGNORE] * len(prompt) + reply
    assert learned(ex.labels)[-1] == im_end
    assert tok.decode(learned(ex.labels)) == "the bird flew away" + IM_END
    # Batched, padding is never learned and the reply keeps its place.
    short = encode_example(tok, from_text("hi"), "ok", max_length=256)
    batch = collate([ex, short], pad_id=render.pad_id(tok))
    assert batch["labels"][1].tolist() == short.labels + [IGNORE] * (len(ex.labels) - len(short.labels))
    assert batch["attention_mask"][1].sum() == len(short.input_ids)


def test_too_long_cuts_the_prompt_from_the_left_and_keeps_the_reply(chat_tokenizer: Any) -> None:
    conv = from_text("the cat sat on the mat and the dog ran under the box " * 4)
    full = encode_example(chat_tokenizer, conv, "the bird flew away", max_length=512)
    n_reply = len(learned(full.labels))
    cut = encode_example(chat_tokenizer, conv, "the bird flew away", max_length=n_reply + 3)
    assert len(cut.input_ids) == n_reply + 3
    assert cut.input_ids == full.input_ids[-(n_reply + 3) :]  # the prompt's start went
    assert learned(cut.labels) == learned(full.labels)
    assert cut.labels[:3] == [IGNORE] * 3


def test_the_summed_loss_is_the_models_own_mean_loss_times_the_tokens(tiny_chat_model_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_path, dtype=torch.float32).eval()
    ex = encode_example(tok, from_text("the cat sat"), "on the mat", max_length=256)
    batch = collate([ex], pad_id=render.pad_id(tok))
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        total, n = summed_loss(out.logits, batch["labels"])
    assert n == ex.n_learned == len(learned(ex.labels))
    assert float(total) / n == pytest.approx(float(out.loss), rel=1e-5)


def test_a_row_must_end_with_a_nonempty_assistant_reply() -> None:
    demo = demo_from_row(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo "}]}
    )
    assert demo == Demo(messages=from_text("hi"), reply="yo")
    with pytest.raises(ChatError, match=r"^messages\[1\]\.role: the last message is the assistant's reply"):
        demo_from_row({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]})
    with pytest.raises(ChatError, match=r"^messages\[1\]\.content: the reply is empty"):
        demo_from_row(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}
        )
    with pytest.raises(ChatError, match=r"^split: one of train, validation, test"):
        demo_from_row(
            {
                "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "split": "dev",
            }
        )


# --- the config --------------------------------------------------------------------------------


def test_the_configs_defaults_are_the_definitions() -> None:
    defaults = {f.name: f.default for f in fields(SFTConfig) if f.default is not MISSING}
    for p in TRAIN_SFT.fields:
        if p.role == "hyper" or p.name in defaults:
            assert defaults[p.name] == p.default, p.name
            assert type(defaults[p.name]) is type(p.default), p.name
    assert {f.name for f in fields(SFTConfig)} - {p.name for p in TRAIN_SFT.fields} == set(SFTConfig.INTERNAL)
    assert SPECS["train_sft"] is TRAIN_SFT
    SFTConfig().validate()
    with pytest.raises(ParamsError, match=r"^dropout: a number from 0 to 0.9"):
        SFTConfig(dropout=1.5).validate()
    with pytest.raises(ValueError, match="unknown SFT setting"):
        SFTConfig.from_dict({"learning_rate": 1e-5})


def test_dropout_is_set_where_the_architecture_has_residual_dropout(
    tmp_path: Path, tiny_chat_model_path: Path
) -> None:
    gpt2 = save_tiny_policy(tmp_path / "gpt2", ["the cat sat on the mat"])
    model, _, old = load_policy(SFTConfig(base_model=str(gpt2), dropout=0.2))
    assert old == {"resid_pdrop": 0.0}  # tests/tiny.py builds it without dropout
    assert model.transformer.h[0].mlp.dropout.p == 0.2  # type: ignore[union-attr,index]
    _, _, old = load_policy(SFTConfig(base_model=str(tiny_chat_model_path), dropout=0.2))
    assert old == {}  # Llama has attention dropout only: left as it is


def test_the_config_loads_no_torch() -> None:
    code = "import sys, trainer.sft.config, trainer.sft.data; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- short runs --------------------------------------------------------------------------------

ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "mouse", "frog", "bear"]
PLACES = ["mat", "box", "tree", "river", "house", "road", "field", "hill"]


def demos(offset: int, n: int) -> list[Demo]:
    """ "where is the X?" → "the X is on the Y.": a rule the tiny model learns in a few steps."""
    out = []
    for i in range(offset, offset + n):
        animal, place = ANIMALS[i % len(ANIMALS)], PLACES[(i * 3) % len(PLACES)]
        out.append(
            Demo(
                messages=from_text(f"where is the {animal} number {i}?"),
                reply=f"the {animal} is on the {place}.",
            )
        )
    return out


def write_demos(path: Path, rows: list[Demo]) -> Path:
    """The rows as `ranklab export sft` writes them (JSON Lines, the reply as the last message)."""
    lines = [json.dumps({"messages": [*d.messages, {"role": "assistant", "content": d.reply}]}) for d in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_cfg(path: Path, **extra: Any) -> SFTConfig:
    return tiny_loop_config(SFTConfig, path, epochs=3, batch_size=4, max_length=128, eval_every=5, **extra)


@pytest.mark.slow
def test_a_short_run_lowers_held_out_loss_and_saves_a_policy(
    tiny_chat_model_path: Path, tmp_path: Path
) -> None:
    metrics: list[tuple[int, dict[str, float]]] = []
    with one_thread():
        result = train(
            tiny_cfg(tiny_chat_model_path),
            demos(0, 40),
            validation=demos(40, 8),
            out_dir=tmp_path / "sft",
            work_dir=tmp_path / "work",
            manifest={"demonstrations": 40},
            hooks=Hooks(metric=lambda step, **v: metrics.append((step, v))),
        )
    assert result.steps == 30
    assert result.val_loss_first is not None and result.val_loss_last is not None
    assert result.val_loss_last < 0.7 * result.val_loss_first, result.metrics
    # The validation before the first step and after the last are both reported.
    vals = [(s, v["val_loss"]) for s, v in metrics if "val_loss" in v]
    assert vals[0] == (0, result.val_loss_first) and vals[-1] == (30, result.val_loss_last)
    # A whole policy that loads, and no checkpoint left behind.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert json.loads((tmp_path / "sft" / "sft_config.json").read_text())["epochs"] == 3
    assert (
        json.loads((tmp_path / "sft" / "metrics.json").read_text())["val_loss_last"] == result.val_loss_last
    )
    assert not (tmp_path / "work" / CHECKPOINT).exists()


class Killed(Exception):
    pass


def kill_after(step: int) -> Hooks:
    def progress(fraction: float, message: str) -> None:
        if message.startswith(f"step {step}/"):
            raise Killed

    return Hooks(progress=progress)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(tiny_chat_model_path: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_chat_model_path, checkpoint_every=4, dropout=0.1)
    args: dict[str, Any] = {
        "validation": demos(40, 8),
        "out_dir": tmp_path / "sft",
        "work_dir": tmp_path / "work",
    }
    with one_thread():
        with pytest.raises(Killed):
            train(cfg, demos(0, 40), hooks=kill_after(6), **args)
        assert not (tmp_path / "sft").exists()
        state = json.loads((tmp_path / "work" / CHECKPOINT / "state.json").read_text())
        assert state["step"] == 4
        result = train(cfg, demos(0, 40), **args)
    assert result.resumed_from_step == 4
    assert result.val_loss_first == state["val_loss_first"]
    assert result.val_loss_first is not None and result.val_loss_last is not None
    assert result.val_loss_last < result.val_loss_first


@pytest.mark.slow
def test_the_launcher_trains_from_files_and_prints_the_summary(
    tiny_chat_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, val = (
        write_demos(tmp_path / "train.jsonl", demos(0, 16)),
        write_demos(tmp_path / "val.jsonl", demos(40, 4)),
    )
    with one_thread():
        launch.main(
            [
                "--data",
                str(data),
                "--validation",
                str(val),
                "--out",
                str(tmp_path / "sft"),
                "--set",
                f"base_model={tiny_chat_model_path}",
                "--set",
                "epochs=1",
                "--set",
                "lr=0.003",
            ]
        )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(tmp_path / "sft") and summary["steps"] == 2
    assert summary["val_demonstrations"] == 4 and summary["val_loss_first"] > 0
    with pytest.raises(SystemExit, match=r"train.jsonl, line 1: messages\[1\]\.role"):
        (tmp_path / "train.jsonl").write_text(
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n'
        )
        launch.main(
            [
                "--data",
                str(data),
                "--out",
                str(tmp_path / "other"),
                "--set",
                f"base_model={tiny_chat_model_path}",
            ]
        )
