"""Users' images as they are: shorter side resized to N, centre crop M (torchvision's
`Resize(N)` + `CenterCrop(M)`, the ImageNet evaluation convention)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qnnrepair.errors import QnnRepairError


@dataclass(frozen=True)
class ImageSize:
    """`resize`: the shorter side's length after resizing (bilinear, antialiased), the longer
    side scaled alike; `crop`: the side of the centre square kept. Either may be None."""

    resize: int | None = None
    crop: int | None = None

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QnnRepairError(f"--{name} must be a positive number of pixels, got {value}")

    def __bool__(self) -> bool:
        return self.resize is not None or self.crop is not None

    def apply(self, image):
        """A PIL image resized and cropped."""
        if self.resize is not None:
            w, h = image.size
            short, long = min(w, h), max(w, h)
            other = int(self.resize * long / short)
            size = (self.resize, other) if w <= h else (other, self.resize)
            image = image.resize(size, resample=_bilinear(image))
        if self.crop is not None:
            w, h = image.size
            if self.crop > min(w, h):
                raise QnnRepairError(
                    f"--crop {self.crop} is larger than an image of {w}x{h}"
                    f"{' after --resize' if self.resize else ''}: crop at most the shorter side")
            left, top = int(round((w - self.crop) / 2.0)), int(round((h - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return image

    def apply_array(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 images resized and cropped one by one."""
        from PIL import Image

        gray = images.shape[-1] == 1
        out = [np.asarray(self.apply(Image.fromarray(im[..., 0] if gray else im)))
               for im in images]
        stacked = np.stack(out)
        return stacked[..., None] if gray else stacked


def _bilinear(image):
    from PIL import Image

    return Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR
