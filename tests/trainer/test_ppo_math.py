"""Exact tests of PPO's math against plain Python loops and hand-made examples."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.ppo import losses as ppo


class TestGAE:
    def test_matches_a_plain_loop(self) -> None:
        torch.manual_seed(0)
        B, T, gamma, lam = 3, 6, 0.99, 0.95
        rewards, values = torch.randn(B, T), torch.randn(B, T)
        lengths = [6, 4, 1]
        mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])
        adv, ret = ppo.gae(rewards, values, mask, gamma=gamma, lam=lam)
        for b, n in enumerate(lengths):
            r, v = rewards[b].tolist(), values[b].tolist()
            expected = [0.0] * T
            running = 0.0
            for t in reversed(range(n)):
                next_v = v[t + 1] if t + 1 < n else 0.0  # the episode ends at the last real token
                delta = r[t] + gamma * next_v - v[t]
                running = delta + gamma * lam * running
                expected[t] = running
            assert adv[b].tolist() == pytest.approx(expected, abs=1e-5)
            assert ret[b, :n].tolist() == pytest.approx(
                [a + x for a, x in zip(expected[:n], v[:n], strict=True)], abs=1e-5
            )
            assert ret[b, n:].abs().sum() == 0

    def test_gamma_one_lambda_one_is_reward_to_go_minus_value(self) -> None:
        rewards = torch.tensor([[0.0, 0.0, 1.0]])
        values = torch.tensor([[0.2, 0.5, 0.7]])
        adv, _ = ppo.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
        assert adv[0].tolist() == pytest.approx([0.8, 0.5, 0.3])


class TestRewardShaping:
    def test_hand_made_example(self) -> None:
        logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
        ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -1.0, -1.0, -1.0]])
        mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
        scores = torch.tensor([2.0, -1.0])
        rewards, kl = ppo.shape_rewards(logp, ref, scores, mask, beta=0.1)
        # row 0: kl = [0.5, -1, 0, (masked)] -> -0.1*kl, score at index 2 (last real token)
        assert kl[0].tolist() == pytest.approx([0.5, -1.0, 0.0, 0.0])
        assert rewards[0].tolist() == pytest.approx([-0.05, 0.1, 2.0, 0.0])
        # row 1: kl = [1, 0, 0, 0], score at the last position
        assert rewards[1].tolist() == pytest.approx([-0.1, 0.0, 0.0, -1.0])

    def test_missing_eos_penalty(self) -> None:
        scores = torch.tensor([1.0, 1.0])
        out = ppo.apply_missing_eos_penalty(scores, torch.tensor([True, False]), penalty=2.0)
        assert out.tolist() == [1.0, -1.0]


class TestMasking:
    def test_everything_after_the_first_stop_token_is_masked(self) -> None:
        stops = [1, 9]  # EOS and an end-of-turn token: either ends the response
        tokens = torch.tensor([[5, 6, 1, 7, 1], [5, 5, 5, 5, 5], [9, 4, 1, 4, 4]])
        mask = ppo.mask_after_stop(tokens, stops)
        assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
        assert ppo.has_stop(tokens, mask, stops).tolist() == [True, False, True]
        assert ppo.has_stop(tokens, mask, [1]).tolist() == [True, False, False]
        assert ppo.last_index(mask).tolist() == [2, 4, 0]

    def test_last_index_with_left_padding(self) -> None:
        mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
        assert ppo.last_index(mask).tolist() == [3, 4]

    def test_whitening_ignores_padding(self) -> None:
        x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
        mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
        w = ppo.masked_whiten(x, mask)
        assert w[0, 3] == 0
        assert ppo.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
        assert w[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)


class TestLosses:
    def test_logprobs_use_the_sampling_temperature(self) -> None:
        logits = torch.tensor([[[2.0, 0.0, -1.0]]])
        tok = torch.tensor([[0]])
        t = 0.5
        expected = 4.0 - math.log(math.exp(4.0) + 1.0 + math.exp(-2.0))
        assert ppo.logprobs_from_logits(logits, tok, t).item() == pytest.approx(expected, abs=1e-6)

    def test_policy_loss_clips_the_ratio(self) -> None:
        old = torch.zeros(1, 2)
        new = torch.log(torch.tensor([[1.5, 0.5]]))
        adv = torch.tensor([[1.0, -1.0]])
        out = ppo.policy_loss(new, old, adv, torch.ones(1, 2), clip=0.2)
        # token 0: ratio 1.5 with A>0 is clipped to 1.2; token 1: ratio 0.5, A<0, clipped to 0.8
        assert out.loss.item() == pytest.approx(((-1.2) + 0.8) / 2)
        assert out.clip_frac.item() == pytest.approx(1.0)

    def test_value_loss_takes_the_worse_of_plain_and_clipped(self) -> None:
        old, new, ret = torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]])
        loss, frac = ppo.value_loss(new, old, ret, torch.ones(1, 1), clip=0.2)
        assert loss.item() == pytest.approx(0.5 * 0.8**2)
        assert frac.item() == 1.0

    def test_entropy_of_uniform(self) -> None:
        assert ppo.entropy_from_logits(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8))

    def test_explained_variance(self) -> None:
        ret = torch.tensor([[1.0, 2.0, 3.0]])
        assert ppo.explained_variance(ret, ret, torch.ones(1, 3)) == pytest.approx(1.0)
        assert ppo.explained_variance(torch.zeros(1, 3), ret, torch.ones(1, 3)) == pytest.approx(0.0)


class TestKLController:
    def test_adaptive_moves_towards_target(self) -> None:
        c = ppo.kl_controller(0.1, target=6.0, horizon=100)
        c.update(12.0, n_steps=10)  # KL too high -> β grows by at most 20% * 10/100
        assert c.beta == pytest.approx(0.1 * 1.02)
        c.update(0.0, n_steps=10)
        assert c.beta < 0.1 * 1.02

    def test_fixed_stays(self) -> None:
        c = ppo.kl_controller(0.02, target=None, horizon=100)
        c.update(50.0, n_steps=100)
        assert c.beta == 0.02
