"""Resumable training state: a run stopped after any epoch continues exactly where it was."""

from __future__ import annotations

import torch

from eyeglass3d.training.checkpoint import restore_training_state, save_training_state


def test_restore_puts_model_optimizer_schedule_and_progress_back(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    schedule.step()
    progress = {"epoch": 3, "best": 0.25, "history": [{"loss": 1.0}, {"loss": 0.5}]}
    save_training_state(tmp_path / "last", model=model.state_dict(), optimizer=optimizer.state_dict(),
                        schedule=schedule.state_dict(), state=progress)

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_schedule = torch.optim.lr_scheduler.StepLR(fresh_optimizer, 1, gamma=0.5)
    restored = restore_training_state(tmp_path / "last", {"epoch": 0}, model=fresh, optimizer=fresh_optimizer,
                                      schedule=fresh_schedule)
    assert restored == progress
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_schedule.get_last_lr() == schedule.get_last_lr()
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_restore_without_a_checkpoint_keeps_the_fresh_state(tmp_path):
    fresh = {"epoch": 0, "best": float("inf")}
    assert restore_training_state(tmp_path / "missing", fresh, model=torch.nn.Linear(1, 1)) is fresh
