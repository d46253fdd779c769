"""Multi-label images at the model layer: label strings, the conditioning vocabulary with label
sets, the pixel model's multi-hot class embedding, the text families' set prompts, DiT's refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gcmodels.diffusion import PixelDiffusion, load_any_model, load_base
from gcmodels.diffusion.base import split_vocabulary
from gcmodels.diffusion.pixel import SetEmbedding
from gcmodels.diffusion.training import train_diffusion
from gcmodels.labels import count_labels, join_labels, split_labels, vocabulary
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.prompts import render_prompt


def _pixel(labels, seed: int = 0) -> PixelDiffusion:
    return PixelDiffusion.create(
        labels,
        resolution=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(seed),
    ).eval()


def test_label_strings_and_the_vocabulary() -> None:
    assert join_labels(["nodule", "effusion", "nodule"]) == "effusion|nodule"
    assert split_labels("effusion|nodule") == ("effusion", "nodule") and split_labels("cat") == ("cat",)
    for bad in ([], ["a", ""], ["a|b"]):
        with pytest.raises(ValueError):
            join_labels(bad)
    # singles first (sorted, including those seen only in sets), then the sets of 2+ labels
    assert vocabulary(["b|c", "a", None, "c", "a|c|d", "b|c"]) == ["a", "b", "c", "d", "a|c|d", "b|c"]
    assert vocabulary(["dog", "cat", None]) == ["cat", "dog"]  # single labels: the sorted labels, as before
    assert count_labels(["cat", "dog", None]) == "2 label(s)"
    assert count_labels(["a", "a|b", "b|c"]) == "3 label(s) (+ 2 label set(s) of multi-label images)"


def test_split_vocabulary_checks_the_sets() -> None:
    assert split_vocabulary(["a", "b", "c", "a|b"]) == (("a", "b", "c"), (("a", "b"),))
    with pytest.raises(ValueError, match="single labels before its label sets"):
        split_vocabulary(["a", "a|b", "b"])
    with pytest.raises(ValueError, match=r"unknown: \['z'\]"):
        split_vocabulary(["a", "b", "a|z"])
    with pytest.raises(ValueError, match="sorted"):
        split_vocabulary(["a", "b", "b|a"])


def test_a_set_prompt_names_every_label() -> None:
    assert render_prompt("Chest X-Ray with {label}.", "effusion|nodule") == "Chest X-Ray with effusion, nodule."
    assert render_prompt("A photo of {label}.", "new_york|São_Paulo") == "A photo of new york, São Paulo."
    assert render_prompt("A photo of {label}.", "X-ray") == "A photo of X-ray."  # one label: unchanged


def test_single_label_models_are_unchanged() -> None:
    """No label set: the UNet keeps diffusers' plain class embedding, the vocabulary is the labels."""
    model = _pixel(["a", "b"])
    assert type(model.unet.class_embedding) is nn.Embedding
    assert model.label_sets == () and model.conditions == model.labels == ("a", "b")
    assert model.label_index(["b", None, "a"]).tolist() == [2, 0, 1]


def test_the_pixel_model_embeds_a_set_as_the_sum_of_its_labels(tmp_path) -> None:
    model = _pixel(["a", "b", "c", "a|b", "a|b|c"])
    emb = model.unet.class_embedding
    assert isinstance(emb, SetEmbedding) and emb.weight.shape[0] == 4  # null + 3 labels: no row per set
    assert model.labels == ("a", "b", "c") and model.label_sets == (("a", "b"), ("a", "b", "c"))
    idx = model.label_index(["b|a", "c|b|a", "a", None])  # any order of a set's labels
    assert idx.tolist() == [4, 5, 1, 0]
    w = emb.weight.detach()
    assert torch.allclose(emb(idx), torch.stack([w[1] + w[2], w[1] + w[2] + w[3], w[1], w[0]]))
    with pytest.raises(ValueError, match=r"unknown to the model: \['b\|c'\].*label sets \['a\|b', 'a\|b\|c'\]"):
        model.label_index(["b|c"])
    # training on a set moves the embeddings of its labels (not the others')
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    model.train()
    model.training_loss(x, model.label_index(["a|b"] * 4), torch.Generator().manual_seed(0)).mean().backward()
    grad = emb.weight.grad
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0 and grad[3].abs().sum() == 0
    # saved as a plain diffusers UNet (same state dict keys) with the vocabulary; loads back equal
    model.eval().save(tmp_path / "m")
    assert "class_embedding.weight" in model.unet.state_dict()
    loaded = load_any_model(tmp_path / "m").eval()
    assert loaded.conditions == ("a", "b", "c", "a|b", "a|b|c")
    t = torch.tensor([10, 50, 90, 30])
    with torch.no_grad():
        assert torch.allclose(loaded._denoise(x, t, idx), model._denoise(x, t, idx), atol=1e-6)


def test_the_trainer_and_the_estimator_take_set_indices() -> None:
    """Trained on multi-label images (set indices), scored under each single label."""
    model = _pixel(["a", "b", "a|b"])
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    result = train_diffusion(
        model,
        x,
        model.label_index(["a", "a|b", "b", "a|b"]),
        steps=2,
        batch_size=2,
        lr=1e-3,
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip=1.0,
        label_dropout=0.2,
        checkpoint_every=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.steps == 2
    maps = TypicalityEstimator(draws=2, batch_size=8).maps(model.eval(), x[:2], model.label_index(["a", "b"]))
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_text_families_prompt_a_set_with_its_labels(family, tiny_sd_dir, tiny_sdxl_dir, tiny_sd3_dir, tmp_path) -> None:
    path = {"sd": tiny_sd_dir, "sdxl": tiny_sdxl_dir, "sd3": tiny_sd3_dir}[family]
    model = load_base(path, ["cat", "dog_x", "cat|dog_x"], prompt_template="A photo of {label}.").eval()
    assert model.prompts == ("", "A photo of cat.", "A photo of dog x.", "A photo of cat, dog x.")
    z = torch.randn(2, model.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 300])
    with torch.no_grad():
        both = model.predict_noise(z, t, model.label_index(["dog_x|cat", "cat"]))
        cats = model.predict_noise(z, t, model.label_index(["cat", "cat"]))
    assert not torch.allclose(both[0], cats[0]) and torch.allclose(both[1], cats[1], atol=1e-5)
    model.save(tmp_path / "m")
    loaded = load_any_model(tmp_path / "m").eval()
    assert loaded.conditions == ("cat", "dog_x", "cat|dog_x") and loaded.label_sets == (("cat", "dog_x"),)
    with torch.no_grad():
        assert torch.allclose(loaded.predict_noise(z, t, loaded.label_index(["cat|dog_x", "cat"])), both, atol=1e-5)


def test_dit_refuses_label_sets(tiny_dit_dir) -> None:
    with pytest.raises(ValueError, match=r"one class per image.*'1\|2'.*text-conditioned model.base"):
        load_base(tiny_dit_dir, ["1", "2", "1|2"])
