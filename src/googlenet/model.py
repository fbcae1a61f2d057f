"""GoogLeNet (Inception v1, Szegedy et al. 2014, "Going deeper with convolutions").

One network class and a registry of variants, read top to bottom:

- ``paper``: the paper's network (Table 1, Figure 3): convs with bias and ReLU, local response
  normalisation after the first max-pool and after the 3x3 stem conv, true 5x5 convs, 3x3/2 max-pools,
  dropout 0.4. 6,998,552 parameters without the auxiliary heads.
- ``torchvision``: torchvision.models.googlenet's topology with the same state-dict keys: bias-free convs
  followed by BatchNorm (eps 1e-3), a 3x3 conv in the "5x5" branch (vision#906), a 2x2/2 max-pool before
  stage 5, dropout 0.2. 6,624,904 parameters without the auxiliary heads.
- ``bn``: the paper's topology (true 5x5, 3x3/2 pools) with BatchNorm instead of LRN: the default for
  training from scratch.
- ``small``: ``bn`` with a stem for small images (1-channel 28-96 px, 32 px). The 224 px stem shrinks the
  image 8x before Inception 3a, which would leave a 28 px image 4 px wide; this stem uses a 3x3/1 conv and
  a single 3x3/2 max-pool, so it shrinks by 2x. Shape trace at 28 px::

      conv1 3x3/1 (N, 64, 28, 28) -> maxpool1 3x3/2 (N, 64, 14, 14) -> conv2 1x1, conv3 3x3 (N, 192, 14, 14)
      -> 3a, 3b (N, 480, 14, 14) -> maxpool3 (N, 480, 7, 7) -> 4a..4e (N, 832, 7, 7)
      -> maxpool4 (N, 832, 3, 3) -> 5a, 5b (N, 1024, 3, 3) -> avgpool, fc (N, classes)

  At 32 px the three Inception stages run at 16, 8 and 4 px; at 96 px at 48, 24 and 12 px.

Module names follow torchvision's (conv1..conv3, inception3a..5b, aux1, aux2, fc; ConvBlock.conv/.bn) so one
state-dict layout serves every variant. ``model(x)`` always returns logits; the auxiliary classifiers run
only through the explicit ``model.forward_train(x) -> (logits, aux1, aux2)``.

This module is the paper and nothing else: the rewrites that make training or inference faster (merged 1x1
convolutions, ReLU after the max-pools, BatchNorm folding) are module swaps in ``googlenet.speedups``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from googlenet.errors import InputSizeError, UnknownModelError


class InceptionSpec(NamedTuple):
    """The six filter counts of one Inception module, in the column order of the paper's Table 1."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


# Table 1 of the paper. The input width of each module is the output width of the one before it.
INCEPTION_TABLE: dict[str, InceptionSpec] = {
    "3a": InceptionSpec(64, 96, 128, 16, 32, 32),  # 192 -> 256
    "3b": InceptionSpec(128, 128, 192, 32, 96, 64),  # 256 -> 480
    "4a": InceptionSpec(192, 96, 208, 16, 48, 64),  # 480 -> 512
    "4b": InceptionSpec(160, 112, 224, 24, 64, 64),  # 512 -> 512
    "4c": InceptionSpec(128, 128, 256, 24, 64, 64),  # 512 -> 512
    "4d": InceptionSpec(112, 144, 288, 32, 64, 64),  # 512 -> 528
    "4e": InceptionSpec(256, 160, 320, 32, 128, 128),  # 528 -> 832
    "5a": InceptionSpec(256, 160, 320, 32, 128, 128),  # 832 -> 832
    "5b": InceptionSpec(384, 192, 384, 48, 128, 128),  # 832 -> 1024
}
STEM_CHANNELS = 192  # conv3's output, the input of Inception 3a
AUX_LOSS_WEIGHT = 0.3  # the paper's weight for each auxiliary loss


@dataclass(frozen=True)
class VariantSpec:
    """Everything that distinguishes one registered variant from another."""

    name: str
    description: str
    batch_norm: bool
    lrn: bool
    five_by_five_kernel: int  # 5 in the paper; 3 in torchvision (vision#906)
    small_stem: bool
    pool4_kernel: int  # the max-pool before stage 5: 3x3/2 in the paper, 2x2/2 in torchvision
    dropout: float
    paper_aux_pool: bool  # avg-pool 5x5/3 as the paper; else adaptive 4x4 as torchvision
    default_input_size: int
    default_in_channels: int
    min_input_size: int  # smallest side that runs forward and forward_train (checked in tests)


VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec(
            name="paper",
            description="the paper's network: conv bias + ReLU, LRN, true 5x5, dropout 0.4",
            batch_norm=False,
            lrn=True,
            five_by_five_kernel=5,
            small_stem=False,
            pool4_kernel=3,
            dropout=0.4,
            paper_aux_pool=True,
            default_input_size=224,
            default_in_channels=3,
            min_input_size=47,
        ),
        VariantSpec(
            name="torchvision",
            description="torchvision.models.googlenet: BatchNorm, 3x3 in the '5x5' branch, dropout 0.2",
            batch_norm=True,
            lrn=False,
            five_by_five_kernel=3,
            small_stem=False,
            pool4_kernel=2,
            dropout=0.2,
            paper_aux_pool=False,
            default_input_size=224,
            default_in_channels=3,
            min_input_size=15,
        ),
        VariantSpec(
            name="bn",
            description="the paper's topology with BatchNorm instead of LRN: for training from scratch",
            batch_norm=True,
            lrn=False,
            five_by_five_kernel=5,
            small_stem=False,
            pool4_kernel=3,
            dropout=0.4,
            paper_aux_pool=True,
            default_input_size=224,
            default_in_channels=3,
            min_input_size=47,
        ),
        VariantSpec(
            name="small",
            description="bn with a 3x3/1 stem for small images (1-channel 28-96 px, 32 px)",
            batch_norm=True,
            lrn=False,
            five_by_five_kernel=5,
            small_stem=True,
            pool4_kernel=3,
            dropout=0.4,
            paper_aux_pool=False,
            default_input_size=28,
            default_in_channels=1,
            min_input_size=8,
        ),
    )
}


class ConvBlock(nn.Module):
    """Conv -> BatchNorm (if any) -> ReLU. Attribute names match torchvision's BasicConv2d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        # A bias before BatchNorm is cancelled by BN's mean subtraction, so BN blocks go without.
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not batch_norm
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels, eps=1e-3) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """The Inception module with 1x1 dimension reductions (the paper's Figure 2b)."""

    def __init__(
        self,
        in_channels: int,
        spec: InceptionSpec,
        *,
        batch_norm: bool = False,
        five_by_five_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.spec = spec
        self.out_channels = spec.out_channels
        bn = batch_norm
        self.branch1 = ConvBlock(in_channels, spec.ch1x1, 1, batch_norm=bn)
        self.branch2 = nn.Sequential(
            ConvBlock(in_channels, spec.ch3x3red, 1, batch_norm=bn),
            ConvBlock(spec.ch3x3red, spec.ch3x3, 3, padding=1, batch_norm=bn),
        )
        k = five_by_five_kernel
        self.branch3 = nn.Sequential(
            ConvBlock(in_channels, spec.ch5x5red, 1, batch_norm=bn),
            ConvBlock(spec.ch5x5red, spec.ch5x5, k, padding=k // 2, batch_norm=bn),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            ConvBlock(in_channels, spec.pool_proj, 1, batch_norm=bn),
        )

    def forward(self, x: Tensor) -> Tensor:
        # (N, C_in, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class NaiveInception(nn.Module):
    """The naive Inception module (the paper's Figure 2a): 1x1, 3x3 and 5x5 convs and a 3x3 max-pool
    side by side on the full input. The pool branch passes all input channels through, so the output
    only ever grows: the reason the paper introduces 1x1 reductions."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3: int, ch5x5: int, *, batch_norm: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + in_channels
        self.branch1 = ConvBlock(in_channels, ch1x1, 1, batch_norm=batch_norm)
        self.branch2 = ConvBlock(in_channels, ch3x3, 3, padding=1, batch_norm=batch_norm)
        self.branch3 = ConvBlock(in_channels, ch5x5, 5, padding=2, batch_norm=batch_norm)
        self.branch4 = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxHead(nn.Module):
    """An auxiliary classifier (the paper, section 5): avg-pool 5x5/3 (-> 4x4 at 224 px), 1x1 conv 128 +
    ReLU, FC 1024 + ReLU, dropout 0.7, FC to the classes. Its loss is added with weight 0.3 in training;
    it is never used at inference."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        batch_norm: bool = False,
        paper_pool: bool = True,
        dropout: float = 0.7,
    ) -> None:
        super().__init__()
        # The paper's 5x5/3 pool gives 4x4 only for a 14x14 map (224 px input); the adaptive pool after
        # it is the identity there and keeps fc1's 2048 inputs valid at other input sizes.
        self.pool: nn.Module = (
            nn.Sequential(nn.AvgPool2d(5, stride=3, ceil_mode=True), nn.AdaptiveAvgPool2d(4))
            if paper_pool
            else nn.AdaptiveAvgPool2d(4)
        )
        self.conv = ConvBlock(in_channels, 128, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.pool(x))  # (N, 128, 4, 4)
        x = self.relu(self.fc1(torch.flatten(x, 1)))  # (N, 1024)
        return self.fc2(self.dropout(x))  # (N, classes)


class GoogLeNet(nn.Module):
    """The 22-layer network of Table 1, in the variant that ``spec`` describes."""

    def __init__(  # one statement per row of Table 1, in the paper's order: it reads against the table
        self,
        spec: VariantSpec,
        *,
        num_classes: int = 1000,
        in_channels: int | None = None,
        aux: bool = True,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if in_channels is None:
            in_channels = spec.default_in_channels
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.spec = spec
        self.variant = spec.name
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.has_aux = aux
        self.min_input_size = spec.min_input_size
        bn = spec.batch_norm

        def lrn() -> nn.Module:
            # The paper's LocalRespNorm, with Caffe's bvlc_googlenet settings.
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if spec.lrn else nn.Identity()

        def inception(name: str, in_ch: int) -> Inception:
            return Inception(in_ch, INCEPTION_TABLE[name], batch_norm=bn, five_by_five_kernel=spec.five_by_five_kernel)

        # Stem. Caffe rounds pooled sizes up; ceil_mode does the same, giving 112 -> 56 -> 28 -> 14 -> 7.
        if spec.small_stem:
            self.conv1 = ConvBlock(in_channels, 64, 3, padding=1, batch_norm=bn)
        else:
            self.conv1 = ConvBlock(in_channels, 64, 7, stride=2, padding=3, batch_norm=bn)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = lrn()
        self.conv2 = ConvBlock(64, 64, 1, batch_norm=bn)
        self.conv3 = ConvBlock(64, STEM_CHANNELS, 3, padding=1, batch_norm=bn)
        self.lrn2 = lrn()
        self.maxpool2: nn.Module = nn.Identity() if spec.small_stem else nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = inception("3a", STEM_CHANNELS)
        self.inception3b = inception("3b", self.inception3a.out_channels)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception("4a", self.inception3b.out_channels)
        self.inception4b = inception("4b", self.inception4a.out_channels)
        self.inception4c = inception("4c", self.inception4b.out_channels)
        self.inception4d = inception("4d", self.inception4c.out_channels)
        self.inception4e = inception("4e", self.inception4d.out_channels)
        self.maxpool4 = nn.MaxPool2d(spec.pool4_kernel, stride=2, ceil_mode=True)
        self.inception5a = inception("5a", self.inception4e.out_channels)
        self.inception5b = inception("5b", self.inception5a.out_channels)
        self.num_features = self.inception5b.out_channels  # 1024

        self.aux1: AuxHead | None = None
        self.aux2: AuxHead | None = None
        if aux:
            self.aux1 = self._make_aux(self.inception4a.out_channels, num_classes)
            self.aux2 = self._make_aux(self.inception4d.out_channels, num_classes)

        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the paper's 7x7/1 average pool at 224 px
        self.dropout = nn.Dropout(spec.dropout if dropout is None else dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _make_aux(self, in_channels: int, num_classes: int) -> AuxHead:
        return AuxHead(
            in_channels,
            num_classes,
            batch_norm=self.spec.batch_norm,
            paper_pool=self.spec.paper_aux_pool,
        )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.spec.batch_norm:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    # Without BN, 22 layers need Caffe's recipe: Xavier weights, positive bias 0.2.
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0 if self.spec.batch_norm else 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def check_input(self, x: Tensor) -> None:
        """Raise InputSizeError, naming what is wrong, for a tensor this model cannot take."""
        if x.dim() != 4:
            raise InputSizeError(
                f"{self.variant} expects a batch of images (N, C, H, W), got a tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise InputSizeError(
                f"{self.variant} was built for {self.in_channels}-channel images, got {x.shape[1]} channels"
            )
        height, width = int(x.shape[2]), int(x.shape[3])
        if min(height, width) < self.min_input_size:
            raise InputSizeError(
                f"input {height}x{width} is too small for the {self.variant} variant: "
                f"the minimum is {self.min_input_size}x{self.min_input_size} px"
            )

    def _forward_features(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        self.check_input(x)
        # Table 1, row by row, with each output shape at 224 px (the small variant's, at 28 px, are in the
        # module docstring).
        x = self.conv1(x)  # convolution 7x7/2: (N, 64, 112, 112)
        x = self.maxpool1(x)  # max pool 3x3/2: (N, 64, 56, 56)
        x = self.lrn1(x)  # LocalRespNorm (paper only): (N, 64, 56, 56)
        x = self.conv2(x)  # convolution 1x1, the 3x3 row's reduction: (N, 64, 56, 56)
        x = self.conv3(x)  # convolution 3x3/1: (N, 192, 56, 56)
        x = self.lrn2(x)  # LocalRespNorm (paper only): (N, 192, 56, 56)
        x = self.maxpool2(x)  # max pool 3x3/2: (N, 192, 28, 28)
        x = self.inception3a(x)  # (N, 256, 28, 28)
        x = self.inception3b(x)  # (N, 480, 28, 28)
        x = self.maxpool3(x)  # max pool 3x3/2: (N, 480, 14, 14)
        x = self.inception4a(x)  # (N, 512, 14, 14)
        aux1 = self.aux1(x) if with_aux and self.aux1 is not None else None  # (N, classes)
        x = self.inception4b(x)  # (N, 512, 14, 14)
        x = self.inception4c(x)  # (N, 512, 14, 14)
        x = self.inception4d(x)  # (N, 528, 14, 14)
        aux2 = self.aux2(x) if with_aux and self.aux2 is not None else None  # (N, classes)
        x = self.inception4e(x)  # (N, 832, 14, 14)
        x = self.maxpool4(x)  # max pool 3x3/2 (2x2/2 in torchvision): (N, 832, 7, 7)
        x = self.inception5a(x)  # (N, 832, 7, 7)
        x = self.inception5b(x)  # (N, 1024, 7, 7)
        return x, aux1, aux2

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (N, C, H, W) -> the last feature map (N, 1024, h, w)."""
        return self._forward_features(x, with_aux=False)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map (N, 1024, h, w) -> logits (N, classes), or the pooled features if pre_logits."""
        x = self.avgpool(x)  # avg pool 7x7/1 (adaptive, for any input size): (N, 1024, 1, 1)
        x = torch.flatten(x, 1)  # (N, 1024)
        if pre_logits:
            return x
        x = self.dropout(x)  # dropout 40% (20% in torchvision): (N, 1024)
        return self.fc(x)  # linear: (N, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images -> logits, in training and evaluation mode alike. The auxiliary heads never run here."""
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Images -> (logits, aux1 logits, aux2 logits): aux1 taps Inception 4a, aux2 taps 4d.
        The auxiliary logits are None when the model was built with aux=False."""
        features, aux1, aux2 = self._forward_features(x, with_aux=True)
        return self.forward_head(features), aux1, aux2

    def drop_aux(self) -> None:
        """Remove the auxiliary classifiers: inference never uses them, and a model without them is smaller."""
        self.aux1 = self.aux2 = None
        self.has_aux = False

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (and the auxiliary classifiers' last layers) for num_classes classes."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        for head in (self.aux1, self.aux2):
            if head is not None:
                head.fc2 = nn.Linear(head.fc2.in_features, num_classes)
                nn.init.normal_(head.fc2.weight, std=0.01)
                nn.init.zeros_(head.fc2.bias)


def list_models() -> list[str]:
    """The registered variant names."""
    return sorted(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int | None = None,
    aux: bool = True,
    dropout: float | None = None,
) -> GoogLeNet:
    """Build a registered GoogLeNet variant with fresh weights; ``in_channels`` defaults to the variant's
    (1 for ``small``, 3 for the others), ``dropout`` (the main classifier's) to the variant's (0.4 in the
    paper, 0.2 in torchvision)."""
    spec = get_variant(name)
    return GoogLeNet(spec, num_classes=num_classes, in_channels=in_channels, aux=aux, dropout=dropout)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
