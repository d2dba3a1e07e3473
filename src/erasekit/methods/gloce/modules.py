"""Putting GLoCE modules into a diffusers pipeline and taking them out again (module kind ``gloce``).

The pipeline is not copied and no module is replaced: a forward hook on every cross-attention output projection
(``attn2.to_out.0``) rewrites that projection's output, and a forward pre-hook on the UNet reads the timestep of
each call. Activation windows are therefore in timestep units (``progress = 1 - t / num_train_timesteps``), not in
counted forward calls as in the reference (docs/methods/gloce.md, "Choices"): they hold for any sampler, step count,
batch layout or number of images. Removing the hooks restores the pipeline exactly.

Artifact layout: per layer ``<layer>/<field>`` stacked over concepts (fields of :class:`LayerModules`), and in the
spec ``layers``, ``concepts``, ``eta``, ``active_from`` (per concept), ``num_train_timesteps``, ``min_gate``, ``eps``.
"""

from __future__ import annotations

from typing import Any

import torch

from ...edits import Detach, register_modules
from ...errors import BaseModelMismatchError
from ...models.adapter import ModelAdapter
from .core import LayerModules

KIND = "gloce"
LAYER_FIELDS: tuple[str, ...] = ("A", "B", "mu_t", "mu_m", "G", "mu_n", "center", "slope")


def build_layers(tensors: dict[str, torch.Tensor], spec: dict[str, Any]) -> dict[str, LayerModules]:
    """The stacked modules of every layer named in ``spec`` from the artifact's tensors."""
    eta = torch.tensor(spec["eta"], dtype=torch.float32)
    return {
        layer: LayerModules(
            **{f: tensors[f"{layer}/{f}"] for f in LAYER_FIELDS},
            eta=eta,
            min_gate=float(spec["min_gate"]),
            eps=float(spec["eps"]),
        )
        for layer in spec["layers"]
    }


class _Timestep:
    """Which concepts are inside their activation window for the UNet call in progress."""

    def __init__(self, active_from: torch.Tensor, num_train_timesteps: int) -> None:
        self.active_from = active_from
        self.num_train_timesteps = num_train_timesteps
        self.active: torch.Tensor | None = None
        self.any_active = False

    def pre_hook(self, _module, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:  # a UNet call without a timestep: apply every concept
            self.active = torch.ones_like(self.active_from, dtype=torch.bool)
        else:
            progress = 1.0 - float(torch.as_tensor(t).flatten()[0]) / self.num_train_timesteps
            self.active = self.active_from <= progress + 1e-9
        self.any_active = bool(self.active.any())


@register_modules(KIND)
def attach(pipe, tensors: dict[str, torch.Tensor], spec: dict[str, Any]) -> Detach:
    """Hook the GLoCE modules into ``pipe``'s UNet; return the function that removes every hook."""
    model = ModelAdapter(pipe)
    by_name = {layer.name: layer for layer in model.layers}
    missing = [name for name in spec["layers"] if name not in by_name]
    if missing:
        raise BaseModelMismatchError(
            f"this GLoCE edit wraps layer '{missing[0]}', which the pipeline's UNet lacks: another architecture"
        )
    device = model.device
    layers = {name: mods.to(device) for name, mods in build_layers(tensors, spec).items()}
    clock = _Timestep(torch.tensor(spec["active_from"], device=device), int(spec["num_train_timesteps"]))
    handles = [pipe.unet.register_forward_pre_hook(clock.pre_hook, with_kwargs=True)]
    for name, mods in layers.items():
        width = by_name[name].to_out.out_features
        if mods.A.shape[1] != width:
            for handle in handles:
                handle.remove()
            raise BaseModelMismatchError(
                f"GLoCE modules of layer '{name}' are {mods.A.shape[1]}-d but the layer outputs {width}-d"
            )

        def hook(_module, _inputs, output, mods=mods):
            if not clock.any_active:
                return None
            return mods(output, clock.active)

        handles.append(by_name[name].to_out.register_forward_hook(hook))

    def detach() -> None:
        for handle in handles:
            handle.remove()

    return detach
