"""Faithful, tiny replicas of the architectures users bring, for where the real ones do not import beside the
pinned torch (torchvision and timm need torchvision). Each keeps what decides how a layer must be read and which
layer Grad-CAM should use: module names and nesting as torchvision (or timm) writes them, channels-last stages,
class and distillation tokens, in-place ReLUs, hard-swish, detached detector proposals, RoI rows, U-Net skips;
widths and inputs are small so that the whole zoo runs in seconds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with weights drawn from ``seed`` (biases and norms too, so that no map is flat), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = (2 / max(1, parameter[0].numel())) ** 0.5 if parameter.ndim > 1 else 0.1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
            if name.endswith("weight") and parameter.ndim == 1:
                parameter.add_(1.0)
    return model.eval()


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Module:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


# --- CNNs as torchvision builds them --------------------------------------------------------------------------


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ResNet(nn.Module):
    """torchvision resnet50's names: conv1, bn1, relu, maxpool, layer1..layer4 (bottlenecks), avgpool, fc."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(8, 4, 1))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, 2))
        self.layer3 = nn.Sequential(Bottleneck(32, 8, 2))
        self.layer4 = nn.Sequential(Bottleneck(32, 8, 2))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """torchvision vgg16's layout: ``features`` (convs, ReLUs, 5 max pools), ``avgpool`` = AdaptiveAvgPool2d(7),
    ``classifier``. At 96 px the features end in a 3x3 map that the adaptive pool pools *up* to 7x7."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in (8, 16, 16, 32, 32):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(32 * 49, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth) for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """torchvision densenet121's names; its forward ends ``F.relu(features, inplace=True)``, which overwrites
    the output of ``features`` (and of ``features.norm5``) after their hooks have run."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 8, 3, 2, 1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(8))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("denseblock1", DenseBlock(2, 8, 4))
        self.features.add_module("transition1", nn.Sequential(
            nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2)
        ))
        self.features.add_module("denseblock2", DenseBlock(2, 8, 4))
        self.features.add_module("norm5", nn.BatchNorm2d(16))
        self.classifier = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, expand: int, cout: int, stride: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        # MobileNetV3's squeeze-excitation uses a ReLU (gated by a hard sigmoid), EfficientNet's the block's SiLU
        squeeze_act = nn.ReLU if gate is nn.Hardsigmoid else act
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), act()),
            conv_bn(expand, expand, stride, groups=expand, act=act),
            SqueezeExcite(expand, max(2, expand // 4), squeeze_act, gate),
            nn.Sequential(nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetV3(nn.Module):
    """torchvision mobilenet_v3_small's layout: hard-swish stem, inverted residuals with squeeze-excitation
    (ReLU early, hard-swish late), a last 1x1 conv block, ``avgpool``, ``classifier`` with hard-swish."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 2, act=nn.Hardswish),
            InvertedResidual(8, 16, 8, 2, nn.ReLU, nn.Hardsigmoid),
            InvertedResidual(8, 24, 16, 2, nn.Hardswish, nn.Hardsigmoid),
            InvertedResidual(16, 32, 16, 1, nn.Hardswish, nn.Hardsigmoid),
            nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.Hardswish()),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class EfficientNet(nn.Module):
    """torchvision efficientnet_b0's layout: SiLU everywhere (no ReLU on the main path), MBConv blocks with
    squeeze-excitation, a last 1x1 conv block, ``avgpool``, ``classifier``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 2, act=nn.SiLU),
            InvertedResidual(8, 16, 8, 1, nn.SiLU, nn.Sigmoid),
            InvertedResidual(8, 24, 16, 2, nn.SiLU, nn.Sigmoid),
            InvertedResidual(16, 32, 16, 2, nn.SiLU, nn.Sigmoid),
            nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.SiLU()),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- channels-last blocks: ConvNeXt and Swin as torchvision writes them -----------------------------------------


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    """torchvision convnext_tiny's layout: LayerNorm and Linear on channels-last tensors inside each block
    (``features.k.j.block.2`` is ``(N, h, w, C)``), blocks NCHW, ``avgpool``, ``classifier`` with LayerNorm2d."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8)),
            nn.Sequential(CNBlock(8)),
            nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 16, 2, 2)),
            nn.Sequential(CNBlock(16), CNBlock(16)),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(16), nn.Flatten(1), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


class SwinBlock(nn.Module):
    """A Swin block on ``(N, H, W, C)``: attention over the whole (small) map stands in for shifted windows."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        tokens = self.norm1(x).reshape(n, h * w, c)
        x = x + self.attn(tokens, tokens, tokens, need_weights=False)[0].reshape(n, h, w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    """torchvision swin_t's layout: every stage on channels-last ``(N, H, W, C)``; ``norm`` (channels-last),
    ``permute`` to NCHW, ``avgpool``, ``flatten``, ``head``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 4, 4), Permute([0, 2, 3, 1]), nn.LayerNorm(8)),
            nn.Sequential(SwinBlock(8, 2)),
            PatchMerging(8),
            nn.Sequential(SwinBlock(16, 2)),
        )
        self.norm, self.permute = nn.LayerNorm(16), Permute([0, 3, 1, 2])
        self.avgpool, self.flatten, self.head = nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.avgpool(self.permute(self.norm(self.features(x))))))


# --- token transformers: torchvision's ViT (class token), timm's DeiT (class and distillation tokens) --------


class MLPBlock(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(2 * dim, dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2, self.mlp = nn.LayerNorm(dim), MLPBlock(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.dropout(self.self_attention(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, tokens: int, dim: int, depth: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens, dim))
        self.layers = nn.Sequential()
        for i in range(depth):
            self.layers.add_module(f"encoder_layer_{i}", EncoderBlock(dim, 2))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(x + self.pos_embedding))


class ViT(nn.Module):
    """torchvision vit_b_16's names: ``conv_proj`` (a 4x4 patch grid at 32 px), a class token, ``encoder``
    (``layers.encoder_layer_i`` with ``ln_1``, ``self_attention``, ``ln_2``, ``mlp``; final ``ln``), ``heads``
    on the class token only."""

    def __init__(self, classes: int = 10, dim: int = 16, patch: int = 8, image: int = 32) -> None:
        super().__init__()
        grid = image // patch
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder(grid * grid + 1, dim, 2)
        self.heads = nn.Sequential(nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], 1)
        return self.heads(self.encoder(tokens)[:, 0])


class Attention(nn.Module):
    """timm's attention: ``qkv``, ``q_norm``/``k_norm`` (identities on ``(N, heads, T, head_dim)``), ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DeiT(nn.Module):
    """timm's distilled DeiT: ``patch_embed.proj``, class and distillation tokens, ``blocks.i`` (``norm1``,
    ``attn``, ``norm2``, ``mlp``), ``norm``, ``head`` on the class token and ``head_dist`` on the other."""

    def __init__(self, classes: int = 10, dim: int = 16, patch: int = 8, image: int = 32) -> None:
        super().__init__()
        grid = image // patch
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 2, dim))
        self.blocks = nn.Sequential(Block(dim, 2), Block(dim, 2))
        self.norm = nn.LayerNorm(dim)
        self.head, self.head_dist = nn.Linear(dim, classes), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1),
                            self.patch_embed(x)], 1)
        tokens = self.norm(self.blocks(tokens + self.pos_embed))
        return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2


# --- a detector and a segmenter -------------------------------------------------------------------------------


class RoIPool(nn.Module):
    """One ``(C, 2, 2)`` max-pooled crop per box: its rows are boxes (``N * boxes``), not images."""

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        crops = []
        for image, image_boxes in zip(features, boxes.round().long(), strict=True):
            for x0, y0, x1, y1 in image_boxes.tolist():
                crops.append(F.adaptive_max_pool2d(image[:, y0:y1, x0:x1], 2))
        return torch.stack(crops)


class RPNHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits, self.bbox_pred = nn.Conv2d(channels, 1, 1), nn.Conv2d(channels, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


class FasterRCNN(nn.Module):
    """A Faster R-CNN's shape: ``backbone`` (``body.layer1..3``), ``rpn.head`` whose proposals are *detached*
    (torchvision does the same), ``roi_pool`` (rows are boxes), ``box_head``, ``box_predictor``. Returns
    ``{"boxes": (N, R, 4), "scores": (N, R, classes)}``: a callable target picks a score."""

    boxes_per_image = 3

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module("body", nn.Sequential())
        for i, (cin, cout) in enumerate([(3, 8), (8, 16), (16, 16)]):
            self.backbone.body.add_module(f"layer{i + 1}", conv_bn(cin, cout, 2))
        self.rpn = nn.Module()
        self.rpn.head = RPNHead(16)
        self.roi_pool = RoIPool()
        self.box_head = nn.Sequential(nn.Flatten(1), nn.Linear(16 * 4, 32), nn.ReLU())
        self.box_predictor = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        objectness, deltas = self.rpn.head(features)
        proposals = self._proposals(objectness, deltas, features.shape[-1]).detach()
        pooled = self.roi_pool(features, proposals)
        scores = self.box_predictor(self.box_head(pooled)).reshape(len(x), self.boxes_per_image, -1)
        return {"boxes": proposals, "scores": scores}

    def _proposals(self, objectness: torch.Tensor, deltas: torch.Tensor, size: int) -> torch.Tensor:
        # the top cells by objectness, each a 3x3-cell box nudged by its deltas, clamped into the map
        top = objectness.flatten(1).topk(self.boxes_per_image, dim=1).indices
        rows, cols = (top // size).float(), (top % size).float()
        nudge = torch.tanh(deltas.flatten(2).gather(2, top[:, None].expand(-1, 4, -1))).permute(0, 2, 1)
        x0 = (cols - 1 + nudge[..., 0]).clamp(0, size - 3)
        y0 = (rows - 1 + nudge[..., 1]).clamp(0, size - 3)
        return torch.stack([x0, y0, x0 + 3, y0 + 3], -1)


class UNet(nn.Module):
    """A U-Net: encoder ``down1``, ``down2``, bottom ``bottom``, decoder ``up2``/``dec2``, ``up1``/``dec1`` with
    skips, a 1x1 ``head`` whose output is the per-pixel class map (the model's output)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.down1, self.down2 = conv_bn(3, 8), conv_bn(8, 16, 2)
        self.bottom = conv_bn(16, 16, 2)
        self.up2, self.dec2 = nn.Upsample(scale_factor=2), conv_bn(32, 16)
        self.up1, self.dec1 = nn.Upsample(scale_factor=2), conv_bn(24, 8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(d1)
        u2 = self.dec2(torch.cat([self.up2(self.bottom(d2)), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.head(u1)
