"""Image model: generate, upscale and inpaint images with one torch module.

What it really is: classic image operations written in torch, no learned weights.
`generate` renders seeded procedural textures (a sum of random sinusoids shaped by a
fixed random 3x3 convolution), `upscale` is bicubic/bilinear/nearest interpolation,
and `inpaint` fills a masked region by diffusing neighbouring pixels into it (repeated
3x3 averaging). The module is built once in `setup` and shared by every function;
it runs on CUDA when there is one.
"""

from __future__ import annotations

import os
import tempfile
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File, Metadata


class AppSetup(BaseAppSetup):
    precision: Literal["fp32", "fp16"] = Field("fp32", description="Compute precision of the image module")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run; auto picks CUDA when present")


class GenerateInput(BaseAppInput):
    seed: int = Field(0, description="Seed of the procedural texture")
    width: int = Field(256, ge=8, le=2048, description="Width in pixels")
    height: int = Field(256, ge=8, le=2048, description="Height in pixels")
    waves: int = Field(6, ge=1, le=64, description="Number of sinusoids summed per channel")


class UpscaleInput(BaseAppInput):
    image: File = Field(description="The image to upscale (PNG, JPEG, ...)")
    scale: float = Field(2.0, gt=1.0, le=8.0, description="Scale factor")
    mode: Literal["bicubic", "bilinear", "nearest"] = Field("bicubic", description="Interpolation mode")


class InpaintInput(BaseAppInput):
    image: File = Field(description="The image to repair")
    mask: Optional[File] = Field(None, description="Mask image: white pixels are filled in. Default: the box below")
    box: list[int] = Field(
        default_factory=lambda: [0, 0, 0, 0],
        min_length=4,
        max_length=4,
        description="x, y, width, height of the region to fill when no mask is given",
    )
    iterations: int = Field(200, ge=1, le=5000, description="Diffusion steps; more fills larger holes smoothly")


class ImageOutput(BaseAppOutput):
    image: File = Field(description="The resulting PNG")
    width: int = Field(description="Its width in pixels")
    height: int = Field(description="Its height in pixels")


class ImageOps(torch.nn.Module):
    """The shared module: a fixed texture filter and the diffusion kernel."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1234)
        texture = torch.randn(3, 3, 3, 3, generator=generator) * 0.3
        texture[:, :, 1, 1] += torch.eye(3)
        self.register_buffer("texture", texture)
        self.register_buffer("blur", torch.full((3, 1, 3, 3), 1.0 / 9.0))

    def generate(self, seed: int, height: int, width: int, waves: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        params = torch.rand(3, waves, 4, generator=generator).to(self.texture)
        ys = torch.linspace(0, 1, height, device=self.texture.device, dtype=self.texture.dtype)
        xs = torch.linspace(0, 1, width, device=self.texture.device, dtype=self.texture.dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        freq_x, freq_y, phase = params[..., 0] * 12, params[..., 1] * 12, params[..., 2] * 6.283
        angle = freq_x[..., None, None] * xx + freq_y[..., None, None] * yy + phase[..., None, None]
        image = torch.sin(angle).mean(dim=1, keepdim=False)[None]  # 1x3xHxW
        image = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), self.texture)
        return (image - image.amin()) / (image.amax() - image.amin() + 1e-6)

    def upscale(self, image: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(image, scale_factor=scale, mode=mode, **kwargs).clamp(0, 1)

    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
        """Fill where mask == 1 by repeatedly replacing those pixels with their neighbours' mean."""
        known = image * (1 - mask)
        filled = known.clone()
        for _ in range(iterations):
            blurred = F.conv2d(F.pad(filled, (1, 1, 1, 1), mode="replicate"), self.blur, groups=3)
            filled = known + blurred * mask
        return filled


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if config.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but no CUDA device is visible")
        self.device = torch.device("cuda" if wants_cuda else "cpu")
        self.dtype = torch.float16 if config.precision == "fp16" else torch.float32
        self.ops = ImageOps().to(self.device, self.dtype).eval()
        print(f"image module ready on {self.device} ({config.precision})")

    async def unload(self) -> None:
        del self.ops
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def generate(self, input_data: GenerateInput, metadata: Metadata) -> ImageOutput:
        """Render a seeded procedural texture."""
        metadata.log(f"generating {input_data.width}x{input_data.height} texture, seed {input_data.seed}")
        image = self.ops.generate(input_data.seed, input_data.height, input_data.width, input_data.waves)
        return self._save(image, "generated")

    @torch.inference_mode()
    def upscale(self, input_data: UpscaleInput, metadata: Metadata) -> ImageOutput:
        """Enlarge an image by interpolation (no detail is invented)."""
        image = self._load(input_data.image.path)
        metadata.log(f"upscaling {image.shape[-1]}x{image.shape[-2]} by {input_data.scale} ({input_data.mode})")
        return self._save(self.ops.upscale(image, input_data.scale, input_data.mode), "upscaled")

    @torch.inference_mode()
    def inpaint(self, input_data: InpaintInput, metadata: Metadata) -> ImageOutput:
        """Fill a masked region from its surroundings by diffusion."""
        image = self._load(input_data.image.path)
        mask = self._mask(input_data, image.shape[-2], image.shape[-1])
        metadata.log(f"inpainting {int(mask.sum())} pixels over {input_data.iterations} steps")
        return self._save(self.ops.inpaint(image, mask, input_data.iterations), "inpainted")

    def run(self, input_data: GenerateInput, metadata: Metadata) -> ImageOutput:
        """The default function: same as generate."""
        return self.generate(input_data, metadata)

    def _load(self, path: str) -> torch.Tensor:
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.dtype)

    def _mask(self, input_data: InpaintInput, height: int, width: int) -> torch.Tensor:
        if input_data.mask is not None:
            gray = Image.open(input_data.mask.path).convert("L").resize((width, height))
            mask = torch.from_numpy((np.asarray(gray) > 127).astype(np.float32))
        else:
            x, y, w, h = input_data.box
            mask = torch.zeros(height, width)
            mask[y : y + h, x : x + w] = 1
        return mask[None, None].to(self.device, self.dtype)

    def _save(self, image: torch.Tensor, stem: str) -> ImageOutput:
        array = (image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        fd, path = tempfile.mkstemp(prefix=f"{stem}-", suffix=".png")
        os.close(fd)
        Image.fromarray(array).save(path)
        return ImageOutput(image=File(path=path), width=array.shape[1], height=array.shape[0])
