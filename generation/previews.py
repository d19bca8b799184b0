"""Live previews: A1111's "Approx cheap" linear map from latents to RGB (no VAE, < 1 ms)."""

from __future__ import annotations

import io

import torch
from PIL import Image

# Rows: latent channels; columns: R, G, B (A1111 sd_vae_approx.cheap_approximation).
SD1_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
SDXL_LATENT_RGB = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163), (-0.3730, -0.2499, -0.2088))


def latents_to_preview(latent: torch.Tensor, *, sdxl: bool = False) -> Image.Image:
    """One image's latent [4, h, w] -> an RGB PIL image at latent resolution."""
    coefficients = torch.tensor(SDXL_LATENT_RGB if sdxl else SD1_LATENT_RGB, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), coefficients)
    pixels = ((rgb * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def preview_png(image: Image.Image, *, min_side: int = 256) -> bytes:
    """PNG bytes of a preview, enlarged (nearest) so small latents are visible in a chat client."""
    scale = max(1, min_side // max(1, min(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()
