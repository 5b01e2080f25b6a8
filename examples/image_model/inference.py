"""Image model: generate, upscale and inpaint images with one torch module.

What it really is: classic image operations written in torch, no learned weights.
`generate` renders seeded procedural textures (a sum of random sinusoids shaped by a
fixed random 3x3 convolution), `upscale` is bicubic/bilinear/nearest interpolation,
and `inpaint` fills a masked region by diffusing neighbouring pixels into it (repeated
3x3 averaging). The module is built once in `setup` and shared by every function;
it runs on CUDA when there is one.

Images are read as RGB: transparent areas are composited onto white, and 16-bit or float
grayscale (PNG `I;16`, `I`, `F`) is scaled by its range rather than clipped to 8 bits.
Outputs and inputs are capped at MAX_PIXELS (4096x4096) so that one request cannot take
a replica's memory.
"""

from __future__ import annotations

import os
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pydantic import Field, field_validator, model_validator

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File, Metadata


MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # ~200 MB as float32 RGB; upscale's peak is a few times that
BACKGROUND = (255, 255, 255)  # what transparent pixels of an image become
SIXTEEN_BIT = 65535.0


class AppSetup(BaseAppSetup):
    precision: Literal["fp32", "fp16"] = Field("fp32", description="Compute precision of the image module")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run; auto picks CUDA when present")


class GenerateInput(BaseAppInput):
    # torch.Generator.manual_seed takes a 64-bit seed: outside it fails deep in torch
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the procedural texture")
    width: int = Field(256, ge=8, le=2048, description="Width in pixels")
    height: int = Field(256, ge=8, le=2048, description="Height in pixels")
    waves: int = Field(6, ge=1, le=64, description="Number of sinusoids summed per channel")


class UpscaleInput(BaseAppInput):
    image: File = Field(description="The image to upscale (PNG, JPEG, ...)")
    scale: float = Field(2.0, gt=1.0, le=8.0, description="Scale factor")
    mode: Literal["bicubic", "bilinear", "nearest"] = Field("bicubic", description="Interpolation mode")


class InpaintInput(BaseAppInput):
    image: File = Field(description="The image to repair")
    mask: Optional[File] = Field(
        None, description="Mask image: white pixels are filled in (transparent ones are not). Give a mask or a box"
    )
    box: Optional[list[int]] = Field(
        None,
        min_length=4,
        max_length=4,
        description="x, y, width, height of the region to fill when no mask is given; clipped to the image",
    )
    iterations: int = Field(200, ge=1, le=5000, description="Diffusion steps; more fills larger holes smoothly")

    @field_validator("box")
    @classmethod
    def _box_is_a_region(cls, box: Optional[list[int]]) -> Optional[list[int]]:
        # negative x/y would wrap to the far side of the image when sliced; w/h < 1 fill nothing
        if box is not None:
            x, y, w, h = box
            if x < 0 or y < 0:
                raise ValueError("box x and y must be 0 or more (pixels from the top-left corner)")
            if w < 1 or h < 1:
                raise ValueError("box width and height must be at least 1")
        return box

    @model_validator(mode="after")
    def _mask_or_box(self) -> "InpaintInput":
        if self.mask is None and self.box is None:  # otherwise nothing would be filled, silently
            raise ValueError("give a mask or a box: the region to fill")
        return self


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
        return self._save(image, "generated", metadata)

    @torch.inference_mode()
    def upscale(self, input_data: UpscaleInput, metadata: Metadata) -> ImageOutput:
        """Enlarge an image by interpolation (no detail is invented); the result is at most 4096x4096 pixels."""
        with open_image(input_data.image.path, "image") as source:  # the header alone: no pixels decoded yet
            width, height = source.size
        out_width, out_height = int(width * input_data.scale), int(height * input_data.scale)
        if out_width * out_height > MAX_PIXELS:
            raise ValueError(
                f"image {width}x{height} at scale {input_data.scale} would be {out_width}x{out_height}, "
                f"over the {MAX_PIXELS} pixel limit ({MAX_SIDE}x{MAX_SIDE}): give a smaller image or scale"
            )
        image = self._load(input_data.image.path)
        metadata.log(f"upscaling {width}x{height} by {input_data.scale} ({input_data.mode})")
        return self._save(self.ops.upscale(image, input_data.scale, input_data.mode), "upscaled", metadata)

    @torch.inference_mode()
    def inpaint(self, input_data: InpaintInput, metadata: Metadata) -> ImageOutput:
        """Fill a masked region from its surroundings by diffusion (images up to 4096x4096 pixels)."""
        image = self._load(input_data.image.path)
        mask = self._mask(input_data, image.shape[-2], image.shape[-1])
        metadata.log(f"inpainting {int(mask.sum())} pixels over {input_data.iterations} steps")
        return self._save(self._fill(image, mask, input_data.iterations), "inpainted", metadata)

    def run(self, input_data: GenerateInput, metadata: Metadata) -> ImageOutput:
        """The default function: same as generate."""
        return self.generate(input_data, metadata)

    def _fill(self, image: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
        """Inpaint only the mask's bounding box plus one pixel: the same result, far less work.

        Diffusion changes masked pixels only, from their 3x3 neighbours, so a crop one pixel
        wider than the mask holds every value they read (at the image's edge the replicate
        padding is the same in the crop as in the whole).
        """
        rows, cols = mask[0, 0].nonzero(as_tuple=True)
        if len(rows) == 0:
            return image
        top, left = max(int(rows.min()) - 1, 0), max(int(cols.min()) - 1, 0)
        bottom, right = int(rows.max()) + 2, int(cols.max()) + 2
        result = image.clone()
        result[..., top:bottom, left:right] = self.ops.inpaint(
            image[..., top:bottom, left:right], mask[..., top:bottom, left:right], iterations
        )
        return result

    def _load(self, path: str, field: str = "image") -> torch.Tensor:
        array = read_rgb(path, field)
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.dtype)

    def _mask(self, input_data: InpaintInput, height: int, width: int) -> torch.Tensor:
        if input_data.mask is not None:
            # transparent mask pixels count as black (keep), as an editor's erased layer would
            gray = read_rgb(input_data.mask.path, "mask", background=(0, 0, 0)).mean(axis=2)
            resized = Image.fromarray(gray).resize((width, height))  # mode F: no rounding to 8 bits
            mask = torch.from_numpy((np.asarray(resized) > 0.5).astype(np.float32))
        else:
            assert input_data.box is not None  # InpaintInput requires a mask or a box
            mask = box_mask(input_data.box, height, width)
        return mask[None, None].to(self.device, self.dtype)

    def _save(self, image: torch.Tensor, stem: str, metadata: Metadata) -> ImageOutput:
        array = (image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        path = metadata.output_dir / f"{stem}.png"  # the server stores it, then deletes the directory
        Image.fromarray(array).save(path)
        return ImageOutput(image=File(path=str(path)), width=array.shape[1], height=array.shape[0])


def box_mask(box: list[int], height: int, width: int) -> torch.Tensor:
    """1 inside the box clipped to the image; a box wholly outside it is an error, not a no-op."""
    x, y, w, h = box
    if x >= width or y >= height:
        raise ValueError(f"box {box} lies outside the {width}x{height} image: x must be under {width}, y under {height}")
    mask = torch.zeros(height, width)
    mask[y : min(y + h, height), x : min(x + w, width)] = 1
    return mask


def open_image(path: str, field: str) -> Image.Image:
    """The image in input `field`'s file; a ValueError naming the field (not the replica's path) when it is none."""
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{field}: not an image ({os.path.getsize(path)} bytes); send a PNG, JPEG or WebP") from None


def read_rgb(path: str, field: str, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """An image file as float32 RGB in 0..1, HxWx3; refuses one over MAX_PIXELS before decoding it."""
    with open_image(path, field) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:  # checked on the header, before the pixels take memory
            raise ValueError(
                f"{field} is {width}x{height}, over the {MAX_PIXELS} pixel limit ({MAX_SIDE}x{MAX_SIDE})"
            )
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return gray_to_rgb(wide_gray(image))
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            # convert("RGB") would drop alpha and show the colour hidden under transparent pixels
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)), rgba)
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def wide_gray(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit or float grayscale as 0..1 (convert("RGB") would clip it at 255, near white).

    Integers are scaled by the 16-bit range (PNG's deepest), or by their maximum when wider;
    floats are taken as 0..1 already and clipped.
    """
    array = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        return np.clip(np.nan_to_num(array), 0.0, 1.0)
    peak = max(float(array.max(initial=0.0)), SIXTEEN_BIT)
    return np.clip(array / peak, 0.0, 1.0)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)
