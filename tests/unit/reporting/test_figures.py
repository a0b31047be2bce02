import torch

from brainmri.records import EpochRecord
from brainmri.reporting import figures


def test_figures_render_to_png(tmp_path):
    names = ["glioma", "meningioma", "notumor", "pituitary"]
    fig = figures.class_distribution({"train": [10, 9, 5, 8], "val": [1, 1, 1, 1], "test": None}, names)
    figures.save_figure(fig, tmp_path / "a.png")
    pairs = [(torch.rand(1, 16, 16), torch.rand(1, 16, 16) * 2 - 1, label) for label in range(4) for _ in range(2)]
    figures.save_figure(figures.augmentation_grid(pairs, names, [0.5], [0.5]), tmp_path / "b.png")
    figures.save_figure(
        figures.confusion_matrix([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 4]], names), tmp_path / "c.png"
    )
    history = [EpochRecord(e, 1 / e, 0.5, 0.5, 10.0, 1.0, 1.2 / e, 0.4, 0.3, 1e-3, 1.0) for e in (1, 2, 3)]
    figures.save_figure(figures.training_curves(history, best_epoch=2), tmp_path / "d.png")
    refit = [EpochRecord(e, 1 / e, 0.5, 0.5, 10.0, 1.0, None, None, None, 1e-3, 1.0) for e in (1, 2, 3)]
    figures.save_figure(figures.training_curves(refit, best_epoch=3), tmp_path / "e.png")
    for name in "abcde":
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
