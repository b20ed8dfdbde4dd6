from pathlib import Path

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.tiny import save_tiny_policy


def test_tiny_policy_round_trips_through_from_pretrained(tmp_path: Path) -> None:
    path = save_tiny_policy(tmp_path / "p", ["the cat sat on the mat", "a dog ran far"])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    batch = tok(["the cat", "a dog ran"], return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    out = model.generate(**batch, max_new_tokens=3, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] >= batch["input_ids"].shape[1]
    assert rm(**batch).logits.shape == (2, 1)
