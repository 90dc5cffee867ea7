"""The composite Flash-VL model: the two exported parts and how they are built.

VisionGraph: pixels [B,3,H,W] -> image_embeds [B,image_tokens,dim]   (vision.onnx)
Decoder:     see export.decoder                                       (decoder.onnx + embed_tokens.npy)

State-dict keys are `vision.<SigLIP or AIMv2 names>`, `adapter.<0|1|3>.*`, `decoder.<Qwen2Model names>`
(+ `decoder.lm_head.weight` when the embeddings are not tied).
"""

from __future__ import annotations

from torch import nn

from export.adapter import Adapter
from export.decoder import Decoder
from export.presets import Preset
from export.vision import VisionTower
from export.vision_aimv2 import Aimv2Tower

TOWERS = {"siglip": VisionTower, "aimv2": Aimv2Tower}


class VisionGraph(nn.Module):
    def __init__(self, preset: Preset):
        super().__init__()
        self.vision = TOWERS[preset.vision.family](preset.vision)
        self.adapter = Adapter(preset.adapter, preset.vision.grid)

    def forward(self, pixels):
        return self.adapter(self.vision(pixels))  # [B, 3, H, W] -> [B, image_tokens, dim]


class FlashVL(nn.Module):
    def __init__(self, preset: Preset):
        super().__init__()
        self.preset = preset
        self.vision_graph = VisionGraph(preset)
        self.decoder = Decoder(preset.decoder)

    # Flat key space used by export.weights: vision.*, adapter.*, decoder.*
    def flat_parameters(self) -> dict[str, nn.Parameter]:
        out = {}
        for prefix, module in (("vision.", self.vision_graph.vision), ("adapter.", self.vision_graph.adapter),
                               ("decoder.", self.decoder)):
            for name, p in module.named_parameters():
                out[prefix + name] = p
        return out
