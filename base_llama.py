"""What every model in this repository shares: its config, weight initialisation, dtype and device."""

import math

import torch
from torch import nn

from config import LlamaConfig

# The projections that write into the residual stream (see init_weights).
RESIDUAL_PROJECTIONS = ("compute_output.weight", "w2.weight")


class LlamaPreTrainedModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config

    def init_weights(self):
        """GPT-2 style initialisation (Radford et al. 2019, Sec. 2.3): N(0, 0.02) everywhere,
        and N(0, 0.02/sqrt(2*n_layers)) for the two projections per layer that add into the
        residual stream, so its variance does not grow with depth. (llama2.c scales `w3`
        instead of `w2`, a slip: `w3` feeds the gate, not the residual.)"""
        if self.device.type == "meta":  # built only to be loaded (load_pretrained): nothing to draw
            return
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
