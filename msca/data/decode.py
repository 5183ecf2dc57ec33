"""JPEG bytes -> RGB uint8 arrays with the fastest decoder that works on this machine.

Order: simplejpeg (libjpeg-turbo, ~1.4x PIL per core), PyTurboJPEG<2 (needs the system libturbojpeg), then PIL.
Each candidate is probed once per process on a tiny JPEG, so a broken install is skipped instead of failing
mid-epoch; `MSCA_JPEG_DECODER=pil|simplejpeg|turbojpeg` forces one. A frame the primary decoder rejects is
retried with PIL (other formats, CMYK) before it counts as corrupt. Decoding is strict: truncated or corrupt
data raises `DecodeError` instead of returning a grey-filled frame.

`min_short` enables DCT-domain downscaling (like PIL's `draft`) by 1/2, 1/4 or 1/8 when the decoded short side
stays >= `min_short`: the cheapest way to shrink big frames. Only power-of-two factors are used because
libjpeg-turbo's other n/8 scales decode slower than full size (measured, infra.md §6).
"""

from __future__ import annotations

import io
import logging
import os
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class DecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, empty)."""


def _scale_factor(h: int, w: int, min_short: int) -> int:
    """Largest d in (8, 4, 2) with ceil(min(h, w) / d) >= min_short, else 1."""
    if min_short > 0:
        short = min(h, w)
        for d in (8, 4, 2):
            if -(-short // d) >= min_short:
                return d
    return 1


def _ceil_div(a: int, d: int) -> int:
    return -(-a // d)


# --- decoders: (data, min_short) -> (H, W, 3) uint8 ---------------------------------------------------------------
def _make_simplejpeg() -> Callable:
    import simplejpeg

    def decode(data: bytes, min_short: int = 0) -> np.ndarray:
        d = 1
        if min_short > 0:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            d = _scale_factor(h, w, min_short)
        if d == 1:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        return simplejpeg.decode_jpeg(
            data, colorspace="RGB", strict=True, min_height=_ceil_div(h, d), min_width=_ceil_div(w, d)
        )

    return decode


def _make_turbojpeg() -> Callable:
    import turbojpeg

    tj = turbojpeg.TurboJPEG()
    rgb = turbojpeg.TJPF_RGB

    def decode(data: bytes, min_short: int = 0) -> np.ndarray:
        d = 1
        if min_short > 0:
            w, h, _, _ = tj.decode_header(data)
            d = _scale_factor(h, w, min_short)
        flags = getattr(turbojpeg, "TJFLAG_STOPONWARNING", 0)
        if d == 1:
            return tj.decode(data, pixel_format=rgb, flags=flags)
        return tj.decode(data, pixel_format=rgb, scaling_factor=(1, d), flags=flags)

    return decode


def _make_pil() -> Callable:
    def decode(data: bytes, min_short: int = 0) -> np.ndarray:
        im = Image.open(io.BytesIO(data))
        if min_short > 0 and im.format == "JPEG":
            w, h = im.size
            d = _scale_factor(h, w, min_short)
            if d > 1:
                im.draft("RGB", (_ceil_div(w, d), _ceil_div(h, d)))
        return np.asarray(im.convert("RGB"))

    return decode


_FACTORIES = {"simplejpeg": _make_simplejpeg, "turbojpeg": _make_turbojpeg, "pil": _make_pil}
_chain: Optional[List[Tuple[str, Callable]]] = None


def _probe_jpeg() -> Tuple[bytes, np.ndarray]:
    yy, xx = np.mgrid[0:16, 0:24]
    arr = np.stack([yy * 15, xx * 10, 255 - yy * 8 - xx * 4], -1).astype(np.uint8)  # smooth: JPEG-exact-ish
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue(), arr


def decoders() -> List[Tuple[str, Callable]]:
    """The working decoders in preference order (probed once per process); PIL is always last."""
    global _chain
    if _chain is None:
        forced = os.environ.get("MSCA_JPEG_DECODER", "").strip().lower()
        names = [forced] if forced else ["simplejpeg", "turbojpeg", "pil"]
        if forced and forced not in _FACTORIES:
            raise ValueError(f"MSCA_JPEG_DECODER={forced!r}: choose one of {sorted(_FACTORIES)}")
        data, ref = _probe_jpeg()
        chain = []
        for name in names:
            try:
                fn = _FACTORIES[name]()
                out = fn(data)
                if out.shape != ref.shape or np.abs(out.astype(int) - ref).mean() > 4:
                    raise RuntimeError(f"wrong output {out.shape}")
                chain.append((name, fn))
            except Exception as e:  # noqa: BLE001 - an unusable decoder is skipped, not fatal
                log.debug("JPEG decoder %s unavailable: %s", name, e)
        if not any(n == "pil" for n, _ in chain):
            chain.append(("pil", _make_pil()))
        _chain = chain
        log.debug("JPEG decoders: %s", [n for n, _ in chain])
    return _chain


def decoder_name() -> str:
    return decoders()[0][0]


def decode_rgb(data: bytes, min_short: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB; downscaled in the DCT by 1/2..1/8 while the short side stays >= `min_short`."""
    if not data:
        raise DecodeError("empty file")
    chain = decoders()
    errors = []
    for name, fn in (chain[0], chain[-1]) if len(chain) > 1 else chain:
        try:
            out = fn(data, min_short)
            if out.ndim != 3 or out.shape[2] != 3:
                raise DecodeError(f"unexpected decoded shape {out.shape}")
            return out
        except Exception as e:  # noqa: BLE001 - try the fallback, then report both
            errors.append(f"{name}: {e}")
    raise DecodeError("; ".join(errors))
