"""The conditional diffusion interface the estimator, the trainer, the features and the tasks use.

`ConditionalDiffusion` is the one base of every model gcmine mines with (the small pixel model and
each checkpoint family, one module each). Callers see a label vocabulary (index 0 = the null
label, label ``i`` of the vocabulary = index ``i + 1``; a model trained on multi-label images also
has the label sets it was trained on after the single labels, see `conditions`) and an eps-predictor on a DDPM reference
schedule, whatever the network really predicts (see `gcmodels.diffusion.parametrisation`):

- ``add_noise(x0, eps, t)``: the reference forward process sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;
- ``predict_noise(x_t, t, cond)``: eps_hat in eps space (the network's v or flow velocity converted);
- ``training_loss(x0, cond, generator)``: the network's own objective (eps, v or flow target);
- ``decoder_features(x0, cond, t, noise, block)``: activations of one block (DIFT), as a grid;
- ``encode`` (uint8 images -> model space), ``save`` / ``load``, ``trainable_parameters``.

A family implements `_denoise` (its network in its own parametrisation and input scale, with its
conditioning), `feature_blocks` (the modules ``rank.feature_block`` indexes) and I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar, cast

import torch
from torch import Tensor, nn

from gcmodels.diffusion.parametrisation import (
    PREDICTIONS,
    eps_from_flow,
    eps_from_v,
    flow_from_ddpm,
    flow_sigma,
    flow_training_sigmas,
    v_target,
)
from gcmodels.labels import LABEL_JOIN, join_labels, split_labels

__all__ = [
    "NULL_LABEL",
    "ConditionalDiffusion",
    "split_vocabulary",
    "to_uint8",
    "validate_label_vocabulary",
]

NULL_LABEL = 0


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] (B, C, H, W) -> uint8 images (B, C, H, W), values outside [-1, 1] clipped:
    the inverse of the pixel model's ``encode`` (and the last step of an autoencoder's ``decode``)."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)


def validate_label_vocabulary(labels: Sequence[str]) -> tuple[str, ...]:
    """Return `labels` as a tuple after checking they are distinct non-empty strings."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("a conditional model needs at least one label, got none")
    bad = [lab for lab in labels if not isinstance(lab, str) or not lab.strip()]
    if bad:
        raise ValueError(f"labels must be non-empty strings, got {bad[:5]!r}")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ValueError(f"labels must be distinct, repeated: {dup[:5]!r}")
    return labels


def split_vocabulary(conditions: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """A conditioning vocabulary -> (its single labels, its label sets as tuples of labels).

    The vocabulary lists the single labels first, then the label sets (``"a|b"``,
    `gcmodels.labels`) a model trained on multi-label images conditions on; every label of a set
    must be one of the single labels, a set has at least two, and is written canonically (sorted)."""
    conditions = validate_label_vocabulary(conditions)
    singles = tuple(c for c in conditions if LABEL_JOIN not in c)
    sets = [c for c in conditions if LABEL_JOIN in c]
    if conditions != singles + tuple(sets):
        raise ValueError(f"a vocabulary lists its single labels before its label sets, got {list(conditions)[:10]!r}")
    known = set(singles)
    found = []
    for entry in sets:
        members = split_labels(entry)
        unknown = [m for m in members if m not in known]
        if unknown or len(set(members)) < 2 or join_labels(members) != entry:
            raise ValueError(
                f"label set {entry!r} must join two or more of the vocabulary's labels, sorted, with {LABEL_JOIN!r}"
                + (f" (unknown: {unknown[:5]!r})" if unknown else "")
            )
        found.append(members)
    return singles, tuple(found)


class _StopForward(Exception):
    """Raised by a feature hook to end a forward once the wanted block has run."""


class ConditionalDiffusion(nn.Module):
    """Base of gcmine's conditional diffusion models (see the module docstring).

    Subclasses set `family` and call ``super().__init__(labels, alphas_cumprod, prediction)``;
    `alphas_cumprod` is the reference DDPM schedule (the model's own for DDPM models), kept fp32."""

    family: ClassVar[str] = ""  # the registry key, written as "kind" in gcmine_model.json
    flow_timesteps: float = 1000.0  # a flow network's timestep input is s * flow_timesteps
    flow_shift: float = 1.0  # time shift of the flow-matching training density
    block_kind: ClassVar[str] = "UNet"  # what `feature_blocks` are blocks of, for messages
    block_name: ClassVar[str] = "decoder block"
    alphas_cumprod: Tensor  # a buffer (register_buffer in __init__), declared for the type checker

    def __init__(self, labels: Sequence[str], alphas_cumprod: Tensor, prediction: str = "epsilon") -> None:
        super().__init__()
        self.labels, self.label_sets = split_vocabulary(labels)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        self.register_buffer("alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ what a family provides
    @property
    def network(self) -> nn.Module:
        """The trained denoiser (a UNet or a transformer)."""
        raise NotImplementedError

    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        """The network's raw output on `x` in its own input scale at its own `timestep` (long DDPM
        steps, or float s * flow_timesteps for flow models) under label indices `cond`."""
        raise NotImplementedError

    def feature_blocks(self) -> Sequence[nn.Module]:
        """The modules whose outputs `decoder_features` can return (``rank.feature_block`` indexes them)."""
        raise NotImplementedError

    def _feature_grid(self, output, x: Tensor) -> Tensor:
        """A feature block's output -> (B, F, h, w); `x` is the network's input."""
        return output[0] if isinstance(output, tuple) else output

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def latent_space(self) -> bool:
        """Whether the network works on latents (an autoencoder's or a VAE's) rather than pixels:
        its samples go through ``decode`` and are not clipped to [-1, 1]."""
        return False

    @property
    def latent_factor(self) -> int:
        """Working pixels per side of one cell of the network's grid (1 in pixel space)."""
        return 1

    @property
    def latent_channels(self) -> int:
        """Channels of the model space: the denoiser's input channels (3 for a pixel UNet; the
        latent families read theirs from the VAE)."""
        config = getattr(self.network, "config", None)  # a diffusers model's FrozenDict
        if config is None:
            raise NotImplementedError(f"{type(self).__name__}'s network has no config: it must say its latent_channels")
        return int(config["in_channels"])

    def model_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The model-space shape (C, h, w) that ``encode`` gives working images of `height` x `width`
        (multiples of `latent_factor`): the shape of the noise drawn for them."""
        f = self.latent_factor
        return (self.latent_channels, height // f, width // f)

    @property
    def conditions(self) -> tuple[str, ...]:
        """What the model conditions on, index i + 1 for entry i: the single labels (`labels`),
        then the label sets of multi-label images (`label_sets`, joined ``"a|b"``). Equal to
        `labels` for a model trained on single labels; `save` writes it as the vocabulary."""
        return self.labels + tuple(LABEL_JOIN.join(s) for s in self.label_sets)

    def label_index(self, labels: Sequence[str | None]) -> Tensor:
        """Label strings -> indices (B,) long; None -> the null label 0; a label set ``"b|a"`` (any
        order) -> the index of that set, when the model was trained on it."""
        lookup = {lab: i + 1 for i, lab in enumerate(self.conditions)}

        def key(lab: str | None) -> str | None:
            return join_labels(split_labels(lab)) if isinstance(lab, str) and LABEL_JOIN in lab else lab

        keys = [key(lab) for lab in labels]
        unknown = sorted({k for k in keys if k is not None and k not in lookup})
        if unknown:
            sets = [k for k in unknown if LABEL_JOIN in k]
            raise ValueError(
                f"labels unknown to the model: {unknown[:5]!r}; the model knows {list(self.labels)[:10]!r}"
                + (
                    f" and the label sets {[LABEL_JOIN.join(s) for s in self.label_sets][:10]!r}"
                    if sets or self.label_sets
                    else ""
                )
            )
        return torch.tensor([NULL_LABEL if k is None else lookup[k] for k in keys], dtype=torch.long)

    def set_members(self) -> Tensor:
        """(S, L + 1) float32 multi-hot rows of the label sets over the label indices (column 0,
        the null label, is never set): row j holds the labels of ``label_sets[j]``, index L + 1 + j."""
        rows = torch.zeros((len(self.label_sets), len(self.labels) + 1), dtype=torch.float32)
        lookup = {lab: i + 1 for i, lab in enumerate(self.labels)}
        for j, members in enumerate(self.label_sets):
            rows[j, [lookup[m] for m in members]] = 1.0
        return rows

    # ------------------------------------------------------------------ properties
    @property
    def num_train_timesteps(self) -> int:
        """Steps of the reference schedule (t in draws, features and translation counts on it)."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's dtype (inputs are cast to it)."""
        return next(self.network.parameters()).dtype

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # A module-wide .to(dtype) casts floating buffers; the schedule must stay fp32.
        if self.alphas_cumprod.dtype != torch.float32:
            self.alphas_cumprod = self.alphas_cumprod.float()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Network parameters that require grad (all of them, or a LoRA adapter's)."""
        return [p for p in self.network.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> ConditionalDiffusion:
        """Recompute network activations in the backward pass (less memory, same gradients); returns self."""
        self.network.enable_gradient_checkpointing()  # type: ignore[operator]  # a diffusers model method: nn.Module.__getattr__ types it Tensor | Module
        return self

    def compiled(self, *, backend: str = "inductor", channels_last: bool | None = None) -> ConditionalDiffusion:
        """A view of this model for inference whose denoiser runs through ``torch.compile``
        (`backend`; shapes dynamic after the first recompilation, so a shard's smaller last batch
        does not compile again for every size). The view shares every parameter and buffer with
        this model (nothing is copied) and this model is left eager: forward hooks on its blocks
        (`decoder_features`) and training are unaffected. `channels_last` (default: on CUDA)
        switches the denoiser's 4-D weights to the channels-last layout, in place (this model's
        too: the same tensors, the same values), which cuDNN's convolutions prefer."""
        net = self.network
        name = next((k for k, m in self._modules.items() if m is net), None)
        if name is None:
            raise TypeError(f"{type(self).__name__}.network is not one of its direct submodules: cannot compile it")
        if channels_last if channels_last is not None else self.device.type == "cuda":
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to takes memory_format; its stubs omit it
        view = copy.copy(self)
        view._modules = dict(self._modules)  # copy.copy shares the dict: the view's entry must not replace ours
        view._modules[name] = cast(nn.Module, torch.compile(net, backend=backend))
        return view

    # ------------------------------------------------------------------ diffusion math, eps space
    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        return self.alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Reference DDPM forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. t: (B,) long."""
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps_hat(x_t, t, c) in eps space: x_t (B, C, H, W) on the reference process, t (B,) long,
        cond (B,) long (0 = null) -> (B, C, H, W). An eps network's output as it is (its dtype);
        a v or flow network's output converted in fp32 (`gcmodels.diffusion.parametrisation`)."""
        if self.prediction == "epsilon":
            return self._denoise(x_t, t, cond)
        abar = self._abar(t, x_t)
        if self.prediction == "v_prediction":
            return eps_from_v(self._denoise(x_t, t, cond).float(), x_t.float(), abar)
        s = flow_sigma(abar)
        x_s = flow_from_ddpm(x_t.float(), abar)
        u = self._denoise(x_s, s.view(-1) * self.flow_timesteps, cond).float()
        return eps_from_flow(u, x_s, s)

    def training_loss(
        self,
        x0: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        weighting: str = "native",
        part: tuple[int, int] | None = None,
    ) -> Tensor:
        """Per-sample MSE of the network's own objective, (B,) float32: eps or v with t uniform
        over the schedule; flow matching (target eps - x0) with `flow_training_sigmas`' density.

        `weighting`: "native" (the plain MSE on the target), or "eps": each sample weighted so that
        its loss is the eps-space squared error the typicality maps measure (parametrisation.py:
        eps_hat - eps = sqrt(abar) (v_hat - v) = (1 - s) (u_hat - u)), i.e. the eps objective for
        any parametrisation. The plain v objective is the eps one weighted by 1 / abar = 1 + 1/SNR,
        which spends the network on the noisiest levels.

        `part` = (start, total): x0 (B, ...) and cond (B,) are the rows start .. start + B of a batch
        of `total` rows (data-parallel training: each process denoises its slice of the global
        batch). The t (or sigma) and eps of all `total` rows are drawn, in the order a call with the
        whole batch draws them (the generator ends in the same state, and the slice's draws are
        those rows of the whole batch's), and the loss of the B rows is returned; B may be 0 (the
        draws are made, nothing is denoised: an empty (0,) loss)."""
        if weighting not in ("native", "eps"):
            raise ValueError(f"loss weighting must be 'native' or 'eps', got {weighting!r}")
        b = x0.shape[0]
        start, total = (0, b) if part is None else part
        if not 0 <= start <= start + b <= total:
            raise ValueError(f"part (start, total) = {part} does not hold {b} rows of x0")
        rows, shape = slice(start, start + b), (total, *x0.shape[1:])
        if self.prediction == "flow_matching":
            s = flow_training_sigmas(total, generator, shift=self.flow_shift)[rows].to(x0.device)
            eps = torch.randn(shape, generator=generator, device="cpu")[rows].to(x0.device)
            if b == 0:
                return torch.zeros(0, device=x0.device)
            sc = s.view(-1, *([1] * (x0.dim() - 1)))
            pred = self._denoise((1.0 - sc) * x0 + sc * eps, s * self.flow_timesteps, cond)
            loss = (pred.float() - (eps - x0)).pow(2).flatten(1).mean(1)
            return loss * (1.0 - s.float()).pow(2) if weighting == "eps" else loss
        t = torch.randint(0, self.num_train_timesteps, (total,), generator=generator, device="cpu")[rows].to(x0.device)
        eps = torch.randn(shape, generator=generator, device="cpu")[rows].to(x0.device)
        if b == 0:
            return torch.zeros(0, device=x0.device)
        pred = self._denoise(self.add_noise(x0, eps, t), t, cond)
        if self.prediction == "epsilon":
            return (pred.float() - eps).pow(2).flatten(1).mean(1)
        abar = self._abar(t, x0).view(-1)
        loss = (pred.float() - v_target(x0, eps, abar)).pow(2).flatten(1).mean(1)
        return loss * abar.float() if weighting == "eps" else loss

    def resolved_loss_weighting(self, setting: str) -> str:
        """The weighting `train.loss_weighting` means for this model: auto = eps for v-prediction."""
        if setting == "auto":
            return "eps" if self.prediction == "v_prediction" else "native"
        return setting

    # ------------------------------------------------------------------ features
    def decoder_features(
        self, x0: Tensor, cond: Tensor, t: int, noise: Tensor, block: int, *, max_batch: int | None = None
    ) -> Tensor:
        """Activations of ``feature_blocks()[block]`` (negative = from the end; DIFT: UNet decoder
        blocks, or a transformer block's image tokens on the latent grid) at reference timestep `t`,
        averaged over the noise draws `noise` (D, C, H, W). x0 (B, C, H, W), cond (B,) -> (B, F, h, w) float32.

        All B x D noisy inputs go through the network in one forward (at most `max_batch` inputs per
        forward if given), and each forward stops once the wanted block has run."""
        blocks = self.feature_blocks()
        n_blocks = len(blocks)
        if not -n_blocks <= block < n_blocks:
            raise ValueError(
                f"feature block {block} out of range: the {self.block_kind} has {n_blocks} {self.block_name}s"
            )
        if noise.dim() != 4 or noise.shape[0] < 1 or noise.shape[1:] != x0.shape[1:]:
            raise ValueError(f"noise must be (D >= 1, {', '.join(map(str, x0.shape[1:]))}), got {tuple(noise.shape)}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        b, d = x0.shape[0], noise.shape[0]
        n = b * d
        step = n if max_batch is None else max_batch
        # Inputs draw-major: input j is image j % B under draw j // B.
        x_rep = x0.repeat(d, 1, 1, 1)
        eps = noise.to(x0.device, x0.dtype).repeat_interleave(b, dim=0)
        cond_rep = cond.repeat(d)
        tt = torch.full((n,), int(t), dtype=torch.long, device=x0.device)
        captured: list[Tensor] = []
        inputs: list[Tensor] = []

        def hook(_m, _i, out):
            captured.append(self._feature_grid(out, inputs[-1]))
            raise _StopForward

        pre = self.network.register_forward_pre_hook(
            lambda _m, args, kwargs: inputs.append(cast(Tensor, _first_tensor(args, kwargs))),  # networks take a sample
            with_kwargs=True,
        )
        handle = blocks[block].register_forward_hook(hook)
        parts = []
        try:
            for s in range(0, n, step):
                captured.clear()
                x_t = self.add_noise(x_rep[s : s + step], eps[s : s + step], tt[s : s + step])
                try:
                    self.predict_noise(x_t, tt[s : s + step], cond_rep[s : s + step])
                except _StopForward:
                    pass
                parts.append(captured[0].float())
        finally:
            handle.remove()
            pre.remove()
        feats = torch.cat(parts)  # (D*B, F, h', w')
        return feats.view(d, b, *feats.shape[1:]).mean(0)


def _first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    """The network's input sample: its first positional tensor or ``sample`` / ``hidden_states``."""
    for a in args:
        if isinstance(a, Tensor):
            return a
    return kwargs.get("sample", kwargs.get("hidden_states"))
